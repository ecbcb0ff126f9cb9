package k8s

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// node is the first part of the node agent: a Node the control plane
// believes in. It registers the Node, reports it Ready with capacity, and
// renews its Lease (kube-node-lease) as a kubelet does, so that the node
// lifecycle controller keeps it Ready and the scheduler binds pods to it;
// and it provisions a volume for each pending claim. The agent
// (agent_test.go) runs the pods bound to it.
type node struct {
	c    *controlPlane
	name string
	stop context.CancelFunc
	done chan struct{}
}

// registerNode registers name and keeps it Ready until the test ends.
func registerNode(t *testing.T, c *controlPlane, name string) *node {
	t.Helper()
	manifest := fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %[1]s
  labels: {kubernetes.io/hostname: %[1]s, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
`, name)
	if out, err := c.kubectlIn([]byte(manifest), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("register node %s: %v\n%s", name, err, out)
	}
	n := &node{c: c, name: name, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	n.heartbeat() // Ready before the scheduler looks
	go func() {
		defer close(n.done)
		beat := time.NewTicker(10 * time.Second) // a kubelet's default status and lease period
		defer beat.Stop()
		claims := time.NewTicker(time.Second)
		defer claims.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-beat.C:
				n.heartbeat()
			case <-claims.C:
				n.provision()
			}
		}
	}()
	t.Cleanup(func() { n.stop(); <-n.done })
	return n
}

// heartbeat reports the node Ready and renews its Lease. Errors are left
// to the next beat: the test's checks say whether the node stayed Ready.
func (n *node) heartbeat() {
	now := time.Now().UTC().Format(time.RFC3339)
	status := fmt.Sprintf(`{"status":{
  "capacity":{"cpu":"8","memory":"16Gi","pods":"110","ephemeral-storage":"100Gi"},
  "allocatable":{"cpu":"8","memory":"16Gi","pods":"110","ephemeral-storage":"100Gi"},
  "conditions":[
    {"type":"Ready","status":"True","reason":"KubeletReady","message":"leviathan test node agent","lastHeartbeatTime":%[1]q,"lastTransitionTime":%[1]q},
    {"type":"MemoryPressure","status":"False","reason":"KubeletHasSufficientMemory","lastHeartbeatTime":%[1]q,"lastTransitionTime":%[1]q},
    {"type":"DiskPressure","status":"False","reason":"KubeletHasNoDiskPressure","lastHeartbeatTime":%[1]q,"lastTransitionTime":%[1]q},
    {"type":"PIDPressure","status":"False","reason":"KubeletHasSufficientPID","lastHeartbeatTime":%[1]q,"lastTransitionTime":%[1]q}],
  "addresses":[{"type":"InternalIP","address":%[2]q},{"type":"Hostname","address":%[3]q}],
  "nodeInfo":{"kubeletVersion":%[4]q,"operatingSystem":"linux","architecture":"amd64","containerRuntimeVersion":"docker://test",
    "machineID":"","systemUUID":"","bootID":"","kernelVersion":"","osImage":"","kubeProxyVersion":""}}}`,
		now, advertiseAddress, n.name, kubernetesVersion)
	_, _ = n.c.kubectlErr("patch", "node", n.name, "--subresource=status", "--type=merge", "-p", status)
	lease := fmt.Sprintf(`apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: %[1]s, namespace: kube-node-lease}
spec: {holderIdentity: %[1]s, leaseDurationSeconds: 40, renewTime: %[2]q}
`, n.name, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"))
	_, _ = n.c.kubectlIn([]byte(lease), "apply", "--server-side", "--force-conflicts", "-f", "-")
}

// provision gives every unbound PersistentVolumeClaim a volume of the node
// (a hostPath PersistentVolume made for it, with its claimRef), as the
// storage provisioner of a kind node does: without it no pod with a claim
// can be scheduled.
func (n *node) provision() {
	out, err := n.c.kubectlErr("get", "pvc", "--all-namespaces", "-o",
		`jsonpath={range .items[?(@.status.phase=="Pending")]}{.metadata.namespace} {.metadata.name} {.spec.resources.requests.storage} {.spec.accessModes[0]} {.spec.storageClassName}{"\n"}{end}`)
	if err != nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		class := ""
		if len(f) > 4 {
			class = f[4]
		}
		pv := fmt.Sprintf(`apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-%[1]s-%[2]s}
spec:
  capacity: {storage: %[3]s}
  accessModes: [%[4]s]
  storageClassName: %[5]q
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: /var/lib/leviathan-test-node/%[1]s/%[2]s}
  claimRef: {namespace: %[1]s, name: %[2]s}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [%[6]s]}]
`, f[0], f[1], f[2], f[3], class, n.name)
		_, _ = n.c.kubectlIn([]byte(pv), "apply", "--server-side", "-f", "-")
	}
}
