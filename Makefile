# Leviathan. `make demo` runs one attempt end to end; `make test` runs the tests.
GO      ?= go
BIN     ?= bin/leviathan
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/leviathan-dev/leviathan/internal/stack.Version=0.1.0-$(VERSION)

.PHONY: all build demo dev test test-deps test-short lint fuzz clean e2e test-k8s

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
# both modules with the race detector. test-deps installs git and Chromium
# first when they are missing (apt-get; see .ci/test-deps).
test: test-deps lint
	$(GO) test -race -count=1 -timeout 20m ./... ./tests/...

test-deps:
	@bash .ci/test-deps

# The overlays against a real control plane (tests/k8s): etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler built from the
# Go module proxy (the first run takes minutes; cached after) and run in a
# loopback-only network namespace. Needs root for the namespace.
test-k8s: test-deps
	LEVIATHAN_TEST_K8S=1 $(GO) test -count=1 -timeout 60m -v ./tests/k8s/

# The cluster end-to-end test at full size: the prod overlay's three-node
# NATS cluster and two replicas of every stage in containers, 100 attempts
# without and with faults (tests/deploy/cluster_test.go; the default test
# run has it with 20 attempts and faults only). LEVIATHAN_E2E_SEED replays.
e2e: test-deps
	LEVIATHAN_E2E_ATTEMPTS=$${LEVIATHAN_E2E_ATTEMPTS:-100} LEVIATHAN_E2E_CALM=1 $(GO) test -count=1 -timeout 60m -v -run 'TestClusterEndToEnd' ./tests/deploy/

test-short:
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./... ./tests/...

# Short fuzzing of the parsers of outside input.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseRequest -fuzztime 30s ./events/

# Benchmarks (bench/README.md). `bench` runs every one; a new benchmark adds
# its target to BENCHES. They measure time, so run them without -j.
# Flags of the git benchmark: make bench-git BENCH_GIT_FLAGS='-n 3 -repos small'.
BENCHES := bench-git bench-projector bench-pipeline

.PHONY: bench $(BENCHES)

# Every benchmark, then bench/RESULTS.md from bench/results.json.
bench: $(BENCHES)
	$(GO) run ./bench/report

# Generates (once, cached in bench/cache) a small and a large repository,
# times one attempt's git work per strategy and the git CLI baselines, and
# writes the "git" key of bench/results.json.
bench-git:
	$(GO) run ./bench/gitbench $(BENCH_GIT_FLAGS)

# Every service a process of its own against one nats-server and
# localforge: attempts/s, latency and CPU per attempt at concurrency 1, 8
# and 32, the same stage code in one process, and a run at 50 ms RTT.
# Writes the "pipeline" key. Flags: BENCH_PIPELINE_FLAGS='-n 100'.
bench-pipeline:
	$(GO) run ./bench/pipebench $(BENCH_PIPELINE_FLAGS)

# Fills a JetStream stream with 1,000,000 realistic events and measures the
# projector's replay rate, the graph summary's latency and the graph's memory
# per attempt; writes the "projector" key of bench/results.json.
# Flags: make bench-projector BENCH_PROJECTOR_FLAGS='-events 200000'.
bench-projector:
	$(GO) run ./bench/projbench $(BENCH_PROJECTOR_FLAGS)

# Kubernetes on a local kind cluster (README "Run on kind"). `make dev` stays
# the laptop stack; `make kind-dev` (or `skaffold dev`) is the cluster one.
# kind is installed with `go install sigs.k8s.io/kind@v0.33.0`: the release
# whose node image deploy/kind/cluster.yaml pins.
KIND         ?= kind
SKAFFOLD     ?= skaffold
KIND_CLUSTER := leviathan
KIND_INSTALL := sigs.k8s.io/kind@v0.33.0

.PHONY: kind-up kind-down kind-dev deploy-check image-prebuilt

kind-up:
	@command -v $(KIND) >/dev/null || { echo "kind not found: go install $(KIND_INSTALL)"; exit 1; }
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
		$(KIND) create cluster --config deploy/kind/cluster.yaml --wait 120s
	kubectl config use-context kind-$(KIND_CLUSTER)

kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# Build, deploy deploy/overlays/dev, forward ports, redeploy on every change.
kind-dev: kind-up
	$(SKAFFOLD) dev --kube-context kind-$(KIND_CLUSTER)

# The offline checks of deploy/ and skaffold.yaml: both overlays rendered and
# strictly decoded, cross-checks, the skaffold schema, the kind config, and
# the rendered pods run as containers of the image (needs Docker).
deploy-check:
	kubectl kustomize deploy/overlays/dev >/dev/null
	kubectl kustomize deploy/overlays/prod >/dev/null
	cd tests && $(GO) test -count=1 ./deploy/

# The image without any registry: deploy/Dockerfile.prebuilt around a binary
# built here (the `runtime` target of deploy/Dockerfile, offline).
image-prebuilt:
	rm -rf bin/image
	mkdir -p bin/image/rootfs/usr/local/bin bin/image/rootfs/etc/ssl/certs
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/image/rootfs/usr/local/bin/leviathan ./cmd/leviathan
	cp /etc/ssl/certs/ca-certificates.crt bin/image/rootfs/etc/ssl/certs/
	docker build -f deploy/Dockerfile.prebuilt -t leviathan:prebuilt bin/image

clean:
	rm -rf bin .leviathan-dev
