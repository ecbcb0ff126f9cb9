package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"sigs.k8s.io/yaml"
)

// schemaPath is skaffold's JSON schema of v4beta13 (from skaffold's
// repository, Apache License 2.0), kept with the tests so that they run
// from any clone; sharedSchemaPath is the team's reference copy, in
// shared/ beside the repository when the repository is checked out there.
var (
	schemaPath       = filepath.Join("testdata", "skaffold-v4beta13.json")
	sharedSchemaPath = filepath.Join(root, "..", "shared", "schemas", "skaffold-v4beta13.json")
)

// skaffoldConfig is the part of skaffold.yaml the cross-checks read.
type skaffoldConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Build      struct {
		Artifacts []struct {
			Image   string `json:"image"`
			Context string `json:"context"`
			Docker  *struct {
				Dockerfile string `json:"dockerfile"`
				Target     string `json:"target"`
			} `json:"docker"`
		} `json:"artifacts"`
	} `json:"build"`
	Manifests struct {
		Kustomize struct {
			Paths []string `json:"paths"`
		} `json:"kustomize"`
	} `json:"manifests"`
	PortForward []struct {
		ResourceType string `json:"resourceType"`
		ResourceName string `json:"resourceName"`
		Namespace    string `json:"namespace"`
		Port         int32  `json:"port"`
		LocalPort    int32  `json:"localPort"`
	} `json:"portForward"`
	Profiles []struct {
		Name       string            `json:"name"`
		Activation []json.RawMessage `json:"activation"`
		Patches    json.RawMessage   `json:"patches"`
	} `json:"profiles"`
}

// skaffoldJSON reads skaffold.yaml as JSON (duplicate keys fail).
func skaffoldJSON(t *testing.T) []byte {
	t.Helper()
	js, err := yaml.YAMLToJSONStrict(readFile(t, "skaffold.yaml"))
	if err != nil {
		t.Fatalf("skaffold.yaml: %v", err)
	}
	return js
}

// effectiveConfigs returns skaffold.yaml as skaffold sees it without a
// profile ("") and with each profile's patches applied, as JSON.
func effectiveConfigs(t *testing.T) map[string][]byte {
	t.Helper()
	base := skaffoldJSON(t)
	var cfg skaffoldConfig
	if err := json.Unmarshal(base, &cfg); err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{"": base}
	for _, p := range cfg.Profiles {
		doc := base
		if len(p.Patches) > 0 {
			patch, err := jsonpatch.DecodePatch(p.Patches)
			if err != nil {
				t.Fatalf("profile %s: patches: %v", p.Name, err)
			}
			if doc, err = patch.Apply(base); err != nil {
				t.Fatalf("profile %s: patches do not apply: %v", p.Name, err)
			}
		}
		out[p.Name] = doc
	}
	return out
}

func parseSkaffold(t *testing.T, js []byte) skaffoldConfig {
	t.Helper()
	var cfg skaffoldConfig
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// skaffoldArtifact is the image name of the one artifact.
func skaffoldArtifact(t *testing.T) string {
	t.Helper()
	cfg := parseSkaffold(t, skaffoldJSON(t))
	if len(cfg.Build.Artifacts) != 1 || cfg.Build.Artifacts[0].Image == "" {
		t.Fatalf("skaffold.yaml must build exactly one artifact: %+v", cfg.Build.Artifacts)
	}
	return cfg.Build.Artifacts[0].Image
}

// TestSkaffoldSchema validates skaffold.yaml, and each profile applied to
// it, against the schema of skaffold/v4beta13.
func TestSkaffoldSchema(t *testing.T) {
	if shared, err := os.ReadFile(sharedSchemaPath); err == nil {
		if ours, err := os.ReadFile(schemaPath); err != nil || !bytes.Equal(ours, shared) {
			t.Fatalf("%s differs from the reference copy %s: copy it over (%v)", schemaPath, sharedSchemaPath, err)
		}
	}
	f, err := os.Open(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("skaffold-v4beta13.json", doc); err != nil {
		t.Fatal(err)
	}
	schema, err := c.Compile("skaffold-v4beta13.json")
	if err != nil {
		t.Fatal(err)
	}
	validate := func(js []byte) error {
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
		if err != nil {
			return err
		}
		return schema.Validate(inst)
	}
	// The schema must be able to say no: a docker artifact has no
	// `dependencies` (that field belongs to the custom builder).
	bad := []byte(`{"apiVersion":"skaffold/v4beta13","kind":"Config","build":{"artifacts":[{"image":"x","docker":{"dependencies":{"paths":["."]}}}]}}`)
	if validate(bad) == nil {
		t.Fatal("the schema accepted an unknown field")
	}
	configs := effectiveConfigs(t)
	for name, js := range configs {
		if err := validate(js); err != nil {
			t.Errorf("profile %q: %v", name, err)
		}
		cfg := parseSkaffold(t, js)
		if cfg.APIVersion != "skaffold/v4beta13" || cfg.Kind != "Config" {
			t.Errorf("profile %q: apiVersion %q kind %q", name, cfg.APIVersion, cfg.Kind)
		}
	}
	for _, p := range []string{"dev", "prod"} {
		if _, ok := configs[p]; !ok {
			t.Errorf("no %s profile", p)
		}
	}
}

// TestSkaffoldProfiles cross-checks each profile with the files it names:
// the Dockerfile and its target, the overlay, and the port-forwarded
// Services; and that the image has git exactly when localforge runs.
func TestSkaffoldProfiles(t *testing.T) {
	df := parseDockerfile(t, "deploy/Dockerfile")
	for name, js := range effectiveConfigs(t) {
		cfg := parseSkaffold(t, js)
		a := cfg.Build.Artifacts[0]
		if a.Docker == nil || a.Docker.Dockerfile != "deploy/Dockerfile" || (a.Context != "" && a.Context != ".") {
			t.Errorf("profile %q: the artifact must be built by docker from deploy/Dockerfile in the repository root", name)
			continue
		}
		stage := df.stage(a.Docker.Target)
		if stage == nil {
			t.Errorf("profile %q: target %q is no stage of deploy/Dockerfile", name, a.Docker.Target)
			continue
		}
		if len(cfg.Manifests.Kustomize.Paths) != 1 {
			t.Errorf("profile %q: want one kustomize path, got %v", name, cfg.Manifests.Kustomize.Paths)
			continue
		}
		overlay := filepath.Base(cfg.Manifests.Kustomize.Paths[0])
		if cfg.Manifests.Kustomize.Paths[0] != "deploy/overlays/"+overlay || !slices.Contains(overlays, overlay) {
			t.Errorf("profile %q: manifests %v are not an overlay", name, cfg.Manifests.Kustomize.Paths)
			continue
		}
		if want := map[string]string{"": "dev", "dev": "dev", "prod": "prod"}[name]; overlay != want {
			t.Errorf("profile %q deploys overlay %s, want %s", name, overlay, want)
		}
		r := render(t, overlay)
		var localforge bool
		for _, w := range r.workloads() {
			for _, c := range w.spec.Containers {
				localforge = localforge || leviathanService(c) == "localforge"
			}
		}
		hasGit := stage.runs(regexp.MustCompile(`\bapk add\b.*\bgit\b`))
		if localforge && !hasGit {
			t.Errorf("profile %q runs localforge, but image target %s has no git", name, stage.name)
		}
		if !localforge && (hasGit || stage.from != "scratch") {
			t.Errorf("profile %q runs no localforge: its image target %s should be the minimal one (FROM scratch, no git)", name, stage.name)
		}
		locals := map[int32]bool{}
		for _, pf := range cfg.PortForward {
			if locals[pf.LocalPort] {
				t.Errorf("profile %q: local port %d forwarded twice", name, pf.LocalPort)
			}
			locals[pf.LocalPort] = true
			s := r.service(pf.ResourceName)
			if pf.ResourceType != "service" || s == nil || s.Namespace != pf.Namespace {
				t.Errorf("profile %q: port-forward to %s %s/%s, which the overlay does not define", name, pf.ResourceType, pf.Namespace, pf.ResourceName)
				continue
			}
			var ok bool
			for _, p := range s.Spec.Ports {
				ok = ok || p.Port == pf.Port
			}
			if !ok {
				t.Errorf("profile %q: Service %s has no port %d", name, s.Name, pf.Port)
			}
		}
		for _, want := range []struct {
			svc  string
			port int32
		}{{"leviathan-control-plane", 8000}, {"nats", 4222}} {
			var found bool
			for _, pf := range cfg.PortForward {
				found = found || (pf.ResourceName == want.svc && pf.Port == want.port && pf.LocalPort == want.port)
			}
			if !found {
				t.Errorf("profile %q does not forward %s:%d to localhost:%d", name, want.svc, want.port, want.port)
			}
		}
	}
}

// dockerfile is a parsed Dockerfile: its global ARGs and stages.
type dockerfile struct {
	args   map[string]string
	stages []*dockerStage
}

type dockerStage struct {
	name, from string
	// lines are the instructions after FROM, continuation lines joined.
	lines []string
}

func (d *dockerfile) stage(name string) *dockerStage {
	if name == "" && len(d.stages) > 0 {
		return d.stages[len(d.stages)-1]
	}
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (s *dockerStage) runs(re *regexp.Regexp) bool {
	for _, l := range s.lines {
		if strings.HasPrefix(l, "RUN ") && re.MatchString(l) {
			return true
		}
	}
	return false
}

// instruction returns the arguments of the last instruction named ins.
func (s *dockerStage) instruction(ins string) string {
	var v string
	for _, l := range s.lines {
		if strings.HasPrefix(l, ins+" ") {
			v = strings.TrimPrefix(l, ins+" ")
		}
	}
	return v
}

func parseDockerfile(t *testing.T, rel string) *dockerfile {
	t.Helper()
	var joined []string
	var cur string
	for _, line := range strings.Split(string(readFile(t, rel)), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur == "") {
			continue
		}
		cur += trimmed
		if strings.HasSuffix(cur, "\\") {
			cur = strings.TrimSuffix(cur, "\\") + " "
			continue
		}
		joined = append(joined, strings.Join(strings.Fields(cur), " "))
		cur = ""
	}
	d := &dockerfile{args: map[string]string{}}
	for _, l := range joined {
		f := strings.Fields(l)
		switch {
		case f[0] == "FROM":
			image := os.Expand(f[1], func(k string) string { return d.args[k] })
			s := &dockerStage{from: image}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			d.stages = append(d.stages, s)
		case len(d.stages) == 0 && f[0] == "ARG":
			k, v, _ := strings.Cut(f[1], "=")
			d.args[k] = v
		case len(d.stages) == 0:
			t.Fatalf("%s: %q before the first FROM", rel, l)
		default:
			s := d.stages[len(d.stages)-1]
			s.lines = append(s.lines, l)
		}
	}
	return d
}

// moduleVersion is the version of a module in the root go.mod.
func moduleVersion(t *testing.T, path string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(path) + `\s+(v\S+)`).FindStringSubmatch(string(readFile(t, "go.mod")))
	if m == nil {
		t.Fatalf("%s is not in go.mod", path)
	}
	return m[1]
}

// TestDockerfile checks deploy/Dockerfile: pinned base images, the Go
// version of go.mod, a non-root numeric user equal to the pods' runAsUser,
// and that the offline packaging (Dockerfile.prebuilt) is the runtime stage.
func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t, "deploy/Dockerfile")
	goMod := regexp.MustCompile(`(?m)^go (\S+)`).FindStringSubmatch(string(readFile(t, "go.mod")))
	if goMod == nil || df.args["GO_VERSION"] != goMod[1] {
		t.Errorf("GO_VERSION %q, want the go.mod version %v", df.args["GO_VERSION"], goMod)
	}
	for _, s := range df.stages {
		if s.from != "scratch" && (!strings.Contains(s.from, ":") || strings.HasSuffix(s.from, ":latest") || strings.Contains(s.from, "${")) {
			t.Errorf("stage %s: base image %q is not pinned", s.name, s.from)
		}
	}
	runtime, withGit := df.stage("runtime"), df.stage("runtime-git")
	if runtime == nil || withGit == nil || runtime != df.stage("") {
		t.Fatal("deploy/Dockerfile needs the stages runtime-git and runtime, runtime last (the default target)")
	}
	if runtime.from != "scratch" {
		t.Errorf("runtime is FROM %s, want scratch", runtime.from)
	}
	// Both runtimes run the same way.
	for _, ins := range []string{"USER", "ENTRYPOINT", "ENV"} {
		if runtime.instruction(ins) == "" || runtime.instruction(ins) != withGit.instruction(ins) {
			t.Errorf("%s differs between runtime (%q) and runtime-git (%q)", ins, runtime.instruction(ins), withGit.instruction(ins))
		}
	}
	// The offline packaging is the runtime stage fed from a directory.
	prebuilt := parseDockerfile(t, "deploy/Dockerfile.prebuilt")
	if len(prebuilt.stages) != 1 || prebuilt.stages[0].from != "scratch" {
		t.Fatal("deploy/Dockerfile.prebuilt must be one stage FROM scratch")
	}
	want := slices.Clone(runtime.lines)
	for i, l := range want {
		want[i] = strings.Replace(l, "COPY --from=build /rootfs/ /", "COPY rootfs/ /", 1)
	}
	if !slices.Equal(prebuilt.stages[0].lines, want) {
		t.Errorf("Dockerfile.prebuilt is not the runtime stage:\n got %q\nwant %q", prebuilt.stages[0].lines, want)
	}
	// Kubernetes can check runAsNonRoot only against a numeric user.
	user := regexp.MustCompile(`^(\d+):(\d+)$`).FindStringSubmatch(runtime.instruction("USER"))
	if user == nil || user[1] == "0" {
		t.Fatalf("USER %q: want a numeric non-root uid:gid", runtime.instruction("USER"))
	}
	artifact := skaffoldArtifact(t)
	for _, o := range overlays {
		for _, w := range render(t, o).workloads() {
			for _, c := range allContainers(w.spec) {
				if c.Image != artifact {
					continue
				}
				uid := w.spec.SecurityContext.RunAsUser
				if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
					uid = c.SecurityContext.RunAsUser
				}
				if uid == nil || user[1] != strconv.FormatInt(*uid, 10) {
					t.Errorf("%s %s container %s runs as uid %v, the image's user is %s", o, w, c.Name, uid, user[1])
				}
			}
		}
	}
}

// TestDockerfileCopiesWhatTheBinaryNeeds checks the COPY lines of the build
// stage, which are also skaffold's watch list: every directory holding a
// package of the binary is copied, and nothing else is.
func TestDockerfileCopiesWhatTheBinaryNeeds(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{if .Main}}{{$.Dir}}{{end}}{{end}}", "./cmd/leviathan")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	need := map[string]bool{"go.mod": true, "go.sum": true}
	for _, dir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(abs, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("package dir %s is outside the module", dir)
		}
		need[strings.Split(filepath.ToSlash(rel), "/")[0]+"/"] = true
	}
	if len(need) < 4 {
		t.Fatalf("go list found too little: %v", need)
	}
	build := parseDockerfile(t, "deploy/Dockerfile").stage("build")
	if build == nil {
		t.Fatal("no build stage")
	}
	copied := map[string]bool{}
	for _, l := range build.lines {
		f := strings.Fields(l)
		if f[0] != "COPY" || strings.HasPrefix(f[1], "--") {
			continue
		}
		for _, src := range f[1 : len(f)-1] {
			copied[src] = true
		}
	}
	for n := range need {
		if !copied[n] {
			t.Errorf("the build stage does not copy %s, which the binary needs", n)
		}
	}
	for c := range copied {
		if !need[c] {
			t.Errorf("the build stage copies %s, which the binary does not need (a change there would rebuild the image)", c)
		}
	}
	// The Dockerfile's own ignore file may drop tests only.
	for _, line := range strings.Split(string(readFile(t, "deploy/Dockerfile.dockerignore")), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && !strings.Contains(line, "_test.go") && !strings.Contains(line, "testdata") {
			t.Errorf("Dockerfile.dockerignore drops %q, which may be part of the binary", line)
		}
	}
}
