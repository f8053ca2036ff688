#!/usr/bin/env bash
# Smoke test of the Tally test cluster: up -> real pods, kubelet stats through
# the API server's node proxy, a real OOM kill, RBAC of the token users -> down.
# Exit 0 only if every check passes. Set TALLY_KEEP=1 to leave the cluster up.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
need_root

PASSED=0
FAILED=0
teardown() {
  local rc=$?
  if ((rc)) && [[ -d "${TALLY_CLUSTER_DIR}/logs" ]]; then
    local keep="${TALLY_SMOKE_LOGS:-/tmp/tally-smoke-logs}"
    rm -rf "$keep"; cp -r "${TALLY_CLUSTER_DIR}/logs" "$keep" 2>/dev/null && log "component logs copied to $keep"
  fi
  if [[ "${TALLY_SMOKE_REUSE:-0}" == 1 ]]; then
    log "TALLY_SMOKE_REUSE=1: the cluster stays up for whoever started it"
  elif [[ "${TALLY_KEEP:-0}" != 1 ]]; then
    bash "${HERE}/down.sh" || rc=1
  else
    log "TALLY_KEEP=1: cluster left up in ${TALLY_CLUSTER_DIR}"
  fi
  if ((rc)) && ((FAILED == 0)); then
    FAILED=1
    log "FAIL: a step failed unexpectedly (exit code $rc; see the messages above)"
  fi
  echo "smoke: ${PASSED} passed, ${FAILED} failed"
  exit "$rc"
}
trap teardown EXIT

pass() { PASSED=$((PASSED + 1)); log "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); log "FAIL: $*"; exit 1; }

t0=$(date +%s)
if [[ "${TALLY_SMOKE_REUSE:-0}" == 1 ]]; then
  # The checks against a cluster that is already up (tests/run.sh brings it up once).
  [[ -e "${TALLY_CLUSTER_DIR}/env" ]] || fail "TALLY_SMOKE_REUSE=1 but no cluster is up (${TALLY_CLUSTER_DIR}/env missing)"
  pass "reusing the cluster that is up in ${TALLY_CLUSTER_DIR}"
else
  bash "${HERE}/up.sh" || fail "the cluster did not come up (see the error above)"
  pass "cluster up in $(( $(date +%s) - t0 ))s (API server healthy, every real node Ready)"
fi

# shellcheck disable=SC1091
source "${TALLY_CLUSTER_DIR}/env"
k() { "${TALLY_KUBECTL}" "$@"; }
NS=tally-smoke

# ---------------------------------------------------------------- API basics
served=$(k api-versions)
grep -qx 'autoscaling/v2beta2' <<<"$served" || fail "autoscaling/v2beta2 not served"
grep -qx 'policy/v1beta1' <<<"$served" || fail "policy/v1beta1 not served"
pass "API server $(k version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') serves autoscaling/{$(grep '^autoscaling/' <<<"$served" | cut -d/ -f2 | paste -sd,)} policy/{$(grep '^policy/' <<<"$served" | cut -d/ -f2 | paste -sd,)}"

nodes_json=$(k get nodes -o json)
python3 - "$nodes_json" "$TALLY_NODES" "$TALLY_FAKE_NODES" <<'EOF' || fail "node objects/labels are not as expected"
import json, sys
nodes = {n["metadata"]["name"]: n for n in json.loads(sys.argv[1])["items"]}
for name in sys.argv[2].split() + sys.argv[3].split():
    n = nodes[name]
    l = n["metadata"]["labels"]
    for key in ("topology.kubernetes.io/zone", "topology.kubernetes.io/region",
                "node.kubernetes.io/instance-type", "karpenter.sh/capacity-type"):
        assert key in l, (name, key)
    assert n["status"]["capacity"]["cpu"] and n["status"]["allocatable"]["memory"], name
    if name.startswith("fake-"):
        assert any(t["key"] == "tally.dev/fake-node" for t in n["spec"].get("taints", [])), name
EOF
pass "real nodes ($TALLY_NODES) and fake nodes ($TALLY_FAKE_NODES) carry zone/region/instance-type/capacity-type labels and capacity"

# ---------------------------------------------------------------- deployment
k create namespace "$NS" >/dev/null
k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: busybox, namespace: $NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: busybox}}
  template:
    metadata: {labels: {app: busybox}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: busybox
        image: ${TALLY_IMAGE_BUSYBOX}
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; i=0; while :; do i=\$((i+1)); [ \$((i % 20000)) -eq 0 ] && sleep 1; done"]
        resources:
          requests: {cpu: 50m, memory: 16Mi}
          limits: {cpu: 200m, memory: 64Mi}
EOF
if ! timeout 150 "${TALLY_KUBECTL}" -n "$NS" rollout status deployment/busybox --timeout=140s >/dev/null; then
  k -n "$NS" get pods -o wide >&2 || true
  k -n "$NS" describe pods >&2 || true
  fail "deployment busybox did not become available (logs: ${TALLY_LOG_DIR})"
fi
running=$(k -n "$NS" get pods -l app=busybox --field-selector=status.phase=Running -o name | wc -l)
[[ "$running" == 2 ]] || fail "expected 2 Running busybox pods, got $running"
pods_nodes=$(k -n "$NS" get pods -l app=busybox -o jsonpath='{range .items[*]}{.metadata.name}={.spec.nodeName} {end}')
pass "deployment busybox: 2 pods Running (${pods_nodes% })"

# ---------------------------------------------------------------- stats/summary
summary_ok() {
  local node pods
  for node in $(k -n "$NS" get pods -l app=busybox -o jsonpath='{.items[*].spec.nodeName}' | tr ' ' '\n' | sort -u); do
    pods=$(k -n "$NS" get pods -l app=busybox --field-selector "spec.nodeName=$node" -o jsonpath='{.items[*].metadata.name}')
    k get --raw "/api/v1/nodes/$node/proxy/stats/summary" >"${TALLY_CLUSTER_DIR}/summary-$node.json" || return 1
    python3 - "${TALLY_CLUSTER_DIR}/summary-$node.json" "$NS" "$pods" <<'EOF' || return 1
import json, sys
s = json.load(open(sys.argv[1]))
want = set(sys.argv[3].split())
seen = {}
for p in s.get("pods", []):
    ref = p["podRef"]
    if ref["namespace"] != sys.argv[2] or ref["name"] not in want:
        continue
    for c in p.get("containers", []):
        if c["name"] != "busybox":
            continue
        cpu, mem = c.get("cpu", {}), c.get("memory", {})
        # usageNanoCores needs two samples of the kubelet's housekeeping
        if not cpu.get("usageNanoCores") or not cpu.get("usageCoreNanoSeconds"):
            sys.exit(1)
        if not mem.get("workingSetBytes"):
            sys.exit(1)
        seen[ref["name"]] = (cpu["usageNanoCores"], mem["workingSetBytes"])
if set(seen) != want:
    sys.exit(1)
for name, (cpu, ws) in sorted(seen.items()):
    print(f"    {s['node']['nodeName']}/{name}: usageNanoCores={cpu} workingSetBytes={ws}")
EOF
  done
}
deadline=$(( $(date +%s) + 90 ))
until out=$(summary_ok); do
  (( $(date +%s) < deadline )) || fail "stats/summary through the node proxy lacks the pods' cpu/memory (see ${TALLY_CLUSTER_DIR}/summary-*.json)"
  sleep 3
done
echo "$out"
pass "/api/v1/nodes/<node>/proxy/stats/summary has both busybox containers with cpu and memory"

node1=${TALLY_NODES%% *}
pod_on_node1=$(k -n "$NS" get pods -l app=busybox --field-selector "spec.nodeName=$node1" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
if [[ -n "$pod_on_node1" ]]; then
  deadline=$(( $(date +%s) + 60 ))
  until k get --raw "/api/v1/nodes/$node1/proxy/metrics/cadvisor" | grep -E '^container_memory_working_set_bytes\{' | grep -F "namespace=\"$NS\"" | grep -qF "pod=\"$pod_on_node1\""; do
    (( $(date +%s) < deadline )) || fail "/metrics/cadvisor of $node1 has no series for $NS/$pod_on_node1"
    sleep 3
  done
  pass "/api/v1/nodes/$node1/proxy/metrics/cadvisor has container_memory_working_set_bytes for $NS/$pod_on_node1"
fi

# ---------------------------------------------------------------- exec, logs, pod network
pod_a=$(k -n "$NS" get pods -l app=busybox -o jsonpath='{.items[0].metadata.name}')
ip_b=$(k -n "$NS" get pods -l app=busybox -o jsonpath='{.items[1].status.podIP}')
out=$(timeout 30 "${TALLY_KUBECTL}" -n "$NS" exec "$pod_a" -- ping -c 2 -W 2 "$ip_b" 2>&1) \
  || fail "kubectl exec $pod_a -- ping $ip_b failed: $out"
pass "kubectl exec works and pod $pod_a reaches the other pod at $ip_b ($(grep -o '[0-9]* packets received' <<<"$out"))"
timeout 30 "${TALLY_KUBECTL}" -n "$NS" logs "$pod_a" >/dev/null || fail "kubectl logs $pod_a failed"
pass "kubectl logs works"

# ---------------------------------------------------------------- services and DNS
# kube-proxy (ClusterIP) and the cluster DNS: a pod resolves a service of its own namespace by
# its short name (search path) and kubernetes.default by its full name, and connects to both.
k -n "$NS" label pod "$pod_a" smoke=echo >/dev/null || fail "labelling $pod_a failed"
k -n "$NS" expose pod "$pod_a" --name=smoke-echo --selector=smoke=echo --port=8081 --target-port=8081 >/dev/null \
  || fail "creating service smoke-echo failed"
timeout 30 "${TALLY_KUBECTL}" -n "$NS" exec "$pod_a" -- sh -c 'setsid nc -ll -p 8081 -e echo smoke-ok >/dev/null 2>&1 &' \
  || fail "starting a listener in $pod_a failed"
pod_b=$(k -n "$NS" get pods -l app=busybox -o jsonpath='{.items[1].metadata.name}')
deadline=$(( $(date +%s) + 60 ))
until out=$(timeout 20 "${TALLY_KUBECTL}" -n "$NS" exec "$pod_b" -- sh -c \
    "nc -w 3 smoke-echo 8081 </dev/null && echo | nc -w 3 kubernetes.default.svc.cluster.local 443 && echo api-ok" 2>&1) \
    && grep -q smoke-ok <<<"$out" && grep -q api-ok <<<"$out"; do
  (( $(date +%s) < deadline )) || fail "service smoke-echo / kubernetes.default not reachable by name from $pod_b: $out"
  sleep 2
done
pass "kube-proxy and cluster DNS: $pod_b reached service smoke-echo (short name) and kubernetes.default.svc.cluster.local"

# ---------------------------------------------------------------- OOM kill
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: oom, namespace: $NS}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: ${TALLY_IMAGE_BUSYBOX}
    imagePullPolicy: Never
    command: ["tail", "/dev/zero"]
    resources:
      limits: {memory: 20Mi, cpu: 500m}
EOF
deadline=$(( $(date +%s) + 120 ))
reason=""
until [[ -n "$reason" ]]; do
  reason=$(k -n "$NS" get pod oom -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}' 2>/dev/null || true)
  [[ -n "$reason" ]] && break
  (( $(date +%s) < deadline )) || { k -n "$NS" describe pod oom >&2 || true; fail "pod oom did not terminate within 120s"; }
  sleep 2
done
exit_code=$(k -n "$NS" get pod oom -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')
[[ "$reason" == OOMKilled ]] || fail "pod oom terminated with reason '$reason' (exit $exit_code), expected OOMKilled"
pass "pod oom (tail /dev/zero, 20Mi limit) terminated: reason=OOMKilled exitCode=$exit_code"

# ---------------------------------------------------------------- Tally's own image
# An image assembled from Tally's own binary and exactly the shared libraries it loads (no
# registry, no Docker engine), imported into a node's containerd, runs as a real pod.
tally_bin="${TALLY_BIN:-${CARGO_TARGET_DIR:-${TALLY_CACHE:-/root/.cache/tally}/target}/debug/tally}"
[[ -x "$tally_bin" ]] || fail "no tally binary at $tally_bin (cargo build --bin tally, or set TALLY_BIN)"
image_tar="${TALLY_CLUSTER_DIR}/tally-image.tar"
python3 "${HERE}/mkimage.py" "$image_tar" --image tally.local/tally:smoke \
  --file "${tally_bin}:/usr/local/bin/tally" --ldd --cmd /usr/local/bin/tally --cmd=--version \
  >/dev/null || fail "mkimage.py could not assemble an image from $tally_bin"
first_node=${TALLY_NODES%% *}
ctr -a "${TALLY_CONTAINERD_SOCKETS%% *}" -n k8s.io images import "$image_tar" >/dev/null \
  || fail "the tally image did not import into ${first_node}'s containerd"
rm -f "$image_tar"
k -n "$NS" run tally-image --image=tally.local/tally:smoke --image-pull-policy=Never \
  --restart=Never --overrides="{\"apiVersion\":\"v1\",\"spec\":{\"nodeName\":\"${first_node}\"}}" >/dev/null
deadline=$(( $(date +%s) + 120 ))
until [[ "$(k -n "$NS" get pod tally-image -o jsonpath='{.status.phase}')" == Succeeded ]]; do
  (( $(date +%s) < deadline )) || { k -n "$NS" describe pod tally-image >&2 || true; fail "the tally image's pod did not succeed within 120s"; }
  sleep 2
done
version=$(k -n "$NS" logs tally-image)
grep -q '^tally ' <<<"$version" || fail "the tally image's pod printed '$version', expected 'tally <version>'"
pass "an image of Tally's own binary (assembled by mkimage.py, imported with ctr) runs on ${first_node}: ${version}"

# ---------------------------------------------------------------- RBAC
kv() { "${TALLY_KUBECTL}" --kubeconfig "$TALLY_VIEWER_KUBECONFIG" "$@"; }
kn() { "${TALLY_KUBECTL}" --kubeconfig "$TALLY_NOBODY_KUBECONFIG" "$@"; }
kv -n "$NS" get pods >/dev/null 2>&1 || fail "viewer cannot list pods"
pass "viewer can list pods"
if out=$(kv -n "$NS" run viewer-pod --image="${TALLY_IMAGE_BUSYBOX}" --image-pull-policy=Never --restart=Never -- true 2>&1); then
  fail "viewer could create a pod"
fi
grep -qi forbidden <<<"$out" || fail "viewer pod creation failed for another reason than Forbidden: $out"
pass "viewer cannot create a pod (Forbidden)"
if out=$(kn -n "$NS" get pods 2>&1); then fail "nobody could list pods"; fi
grep -qi forbidden <<<"$out" || fail "nobody's pod list failed for another reason than Forbidden: $out"
pass "nobody cannot list pods (Forbidden)"

k delete namespace "$NS" --wait=false >/dev/null
log "all smoke checks passed"
