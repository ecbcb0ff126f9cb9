# Leviathan. `make demo` runs one attempt end to end; `make test` runs the tests.
GO      ?= go
BIN     ?= bin/leviathan
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/leviathan-dev/leviathan/services/app.Version=0.1.0-$(VERSION)

.PHONY: all build demo dev test test-short lint fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/leviathan

# One attempt end to end on the embedded stack: prints the PR URL and the graph summary.
demo:
	$(GO) run ./cmd/leviathan demo

# Everything on this machine until Ctrl-C (NATS on :4222, localforge on :3000, control plane on :8000).
dev:
	$(GO) run ./cmd/leviathan dev

# The test command of the README and of CI: formatting, vet, and every test of
# both modules with the race detector.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./... ./tests/...

test-short:
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./... ./tests/...

# Short fuzzing of the parsers of outside input.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseRequest -fuzztime 30s ./events/

clean:
	rm -rf bin .leviathan-dev
