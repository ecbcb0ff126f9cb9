// Package deploy checks the Kubernetes deployment offline: deploy/ (the
// Dockerfiles, the kind cluster, the kustomize base, components and
// overlays) and skaffold.yaml. Nothing here can start a cluster, so the
// tests do what a cluster would refuse or trip on:
//
//   - render both overlays with `kubectl kustomize` and decode every object
//     strictly into the Kubernetes API types (unknown fields, duplicate keys
//     and wrong types fail);
//   - cross-check the objects (selectors, ports, probes, Secrets and
//     ConfigMaps, images, security contexts, resources, service accounts);
//   - read the rendered NATS configuration with nats-server's own parser,
//     with and without the nats-tls component (tls_test.go), and serve it:
//     every client pod's environment connects over TLS;
//   - validate skaffold.yaml against its JSON schema, with each profile
//     applied, and the kind config against kind's Go types;
//   - build the image from a host-built static binary (FROM scratch, no
//     registry needed) and run the rendered pods as Docker containers on a
//     private network, as a kubelet would: every service answers its
//     probes and the proof Job ends with exit code 0.
package deploy
