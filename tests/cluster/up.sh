#!/usr/bin/env bash
# Bring up the Tally test cluster: a real Kubernetes 1.20.2 control plane and
# ${TALLY_NODES:-2} real nodes (kubelet + containerd), each in a network
# namespace of its own, plus a few kubelet-less "fake" Node objects.
# See README.md beside this file for the topology.
#
# Everything it creates is recorded in ${TALLY_CLUSTER_DIR}/state so that
# down.sh can undo exactly that.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
need_root

NODES="${TALLY_NODES:-3}"
UP_TIMEOUT="${TALLY_UP_TIMEOUT:-180}"
[[ "$NODES" =~ ^[1-9]$ ]] || die "TALLY_NODES must be 1..9 (got '$NODES')"
# With 3 or more nodes the last one is the drain node: tainted
# tally.dev/drain-test=true:NoSchedule so that only pods tolerating it (the
# operator's drain tests) land there and cordoning it disturbs no other test.
DRAIN_NODE_INDEX=0
(( NODES >= 3 )) && DRAIN_NODE_INDEX=$NODES
D="${TALLY_CLUSTER_DIR}"
STATE="$D/state"
LOGS="$D/logs"
PKI="$D/pki"

t_start=$(date +%s)
bash "${HERE}/install.sh"
t_installed=$(date +%s)

if [[ -e "$STATE" ]] || ip netns list | grep -qE "^${NS_PREFIX}(cp|n[0-9])( |$)"; then
  warn "a previous cluster is still up; running down.sh first"
  bash "${HERE}/down.sh"
fi
if ss -Hltn "sport = :${API_PORT}" | grep -q .; then
  die "port ${API_PORT} is already in use on this machine (set TALLY_API_PORT)"
fi

log "bringing up a ${NODES}-node cluster in ${D}"
rm -rf "$D"
mkdir -p "$D" "$LOGS" "$PKI"
: >"$STATE"
trap 'rc=$?; if ((rc)); then warn "up.sh failed; the partial cluster is left for inspection in $D (logs: $LOGS); bash $HERE/down.sh removes it"; fi' EXIT
export PATH="${K8S_BIN}:${PATH}"
# kubectl wrapper: the 1.20 kubectl matching the server, with its discovery
# cache inside the cluster dir (not in ~/.kube).
mkdir -p "$D/bin"
printf '#!/bin/sh\nexec "%s" --cache-dir "%s" "$@"\n' "${K8S_BIN}/kubectl" "$D/.kube-cache" >"$D/bin/kubectl"
chmod +x "$D/bin/kubectl"
KUBECTL="$D/bin/kubectl"

record() { echo "$*" >>"$STATE"; }
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
# start NAME LOGFILE NETNS MNTNS_PID -- cmd...   (MNTNS_PID may be "-")
start() {
  local name=$1 logf=$2 netns=$3 mnt=$4; shift 5
  local ns_args=()
  [[ "$netns" != "-" ]] && ns_args+=("--net=/run/netns/${netns}")
  [[ "$mnt" != "-" ]] && ns_args+=("--mount=/proc/${mnt}/ns/mnt" "--wd=/")
  if ((${#ns_args[@]})); then
    setsid nsenter "${ns_args[@]}" -- "$@" </dev/null >"$logf" 2>&1 &
  else
    setsid "$@" </dev/null >"$logf" 2>&1 &
  fi
  local pid=$!
  sleep 0.05
  record "pid ${name} ${pid} $(starttime "$pid")"
  eval "PID_${name//[^a-zA-Z0-9]/_}=${pid}"
}
pid_of() { local v="PID_${1//[^a-zA-Z0-9]/_}"; echo "${!v}"; }
alive() { kill -0 "$(pid_of "$1")" 2>/dev/null; }

# wait_for DESC TIMEOUT LOG COMPONENT -- cmd...: poll cmd every second.
wait_for() {
  local desc=$1 tmo=$2 logf=$3 comp=$4; shift 5
  local deadline=$(( $(date +%s) + tmo ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! alive "$comp"; then
      echo "---- last lines of ${logf} ----" >&2; tail -n 30 "$logf" >&2 || true
      die "${comp} exited while waiting for ${desc}; see ${logf}"
    fi
    if (( $(date +%s) >= deadline )); then
      echo "---- last lines of ${logf} ----" >&2; tail -n 30 "$logf" >&2 || true
      die "timed out after ${tmo}s waiting for ${desc}; see ${logf} (logs of every component: ${LOGS}/)"
    fi
    sleep 1
  done
}

in_cp() { nsenter --net="/run/netns/${CP_NS}" -- "$@"; }

# ------------------------------------------------------------------ addresses
CP_NS="${NS_PREFIX}cp"
CP_IP="10.213.0.1"
SERVICE_CIDR="10.215.0.0/24"
SERVICE_IP="10.215.0.1"
node_name() { echo "${NS_PREFIX}n$1"; }
node_ip()   { echo "10.213.0.$((10 + $1))"; }
pod_cidr()  { echo "10.214.$1.0/24"; }
# labels: zone / capacity type alternate between nodes
ZONES=(us-east-1a us-east-1b us-east-1c)
node_zone() { echo "${ZONES[$(( ($1 - 1) % 3 ))]}"; }
node_ctype() { if (( $1 % 2 )); then echo on-demand; else echo spot; fi; }
REGION=us-east-1
REAL_ITYPE=m5.large

# ------------------------------------------------------------------ PKI
log "generating PKI and tokens in ${PKI}"
(
  cd "$PKI"
  key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null; }
  key ca
  openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=tally-test-ca" -out ca.crt 2>/dev/null
  # cert NAME SUBJECT EKU [SAN]
  cert() {
    key "$1"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$3"
      [[ -n "${4:-}" ]] && echo "subjectAltName=$4"
    } >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:${CP_IP},IP:${SERVICE_IP}"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  # kube-proxy's user: the built-in binding system:node-proxier names it.
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  for i in $(seq 1 "$NODES"); do
    n=$(node_name "$i")
    cert "$n" "/O=system:nodes/CN=system:node:${n}" clientAuth
    cert "$n-serving" "/CN=${n}" serverAuth "DNS:${n},IP:$(node_ip "$i")"
  done
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
ADMIN_TOKEN="admin-$(openssl rand -hex 16)"
VIEWER_TOKEN="viewer-$(openssl rand -hex 16)"
NOBODY_TOKEN="nobody-$(openssl rand -hex 16)"
COLLECTOR_TOKEN="collector-$(openssl rand -hex 16)"
cat >"$PKI/tokens.csv" <<EOF
${ADMIN_TOKEN},admin,uid-admin,"system:masters"
${VIEWER_TOKEN},viewer,uid-viewer,"tally:viewers"
${NOBODY_TOKEN},nobody,uid-nobody
${COLLECTOR_TOKEN},tally-collector,uid-tally-collector,"tally:collectors"
EOF
chmod 600 "$PKI"/*.key "$PKI/tokens.csv"

b64() { base64 -w0 <"$1"; }
# kubeconfig FILE SERVER USER (token TOKEN | cert NAME)
kubeconfig() {
  local f=$1 server=$2 user=$3 kind=$4 val=$5
  {
    cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tally
  cluster:
    server: ${server}
    certificate-authority-data: $(b64 "$PKI/ca.crt")
contexts:
- name: ${user}@tally
  context: {cluster: tally, user: ${user}}
current-context: ${user}@tally
users:
- name: ${user}
  user:
EOF
    if [[ $kind == token ]]; then
      echo "    token: ${val}"
    else
      echo "    client-certificate-data: $(b64 "$PKI/$val.crt")"
      echo "    client-key-data: $(b64 "$PKI/$val.key")"
    fi
  } >"$f"
  chmod 600 "$f"
}
HOST_API="https://127.0.0.1:${API_PORT}"
IN_API="https://${CP_IP}:6443"
kubeconfig "$D/admin.kubeconfig" "$HOST_API" admin token "$ADMIN_TOKEN"
kubeconfig "$D/viewer.kubeconfig" "$HOST_API" viewer token "$VIEWER_TOKEN"
kubeconfig "$D/nobody.kubeconfig" "$HOST_API" nobody token "$NOBODY_TOKEN"
kubeconfig "$D/collector.kubeconfig" "$HOST_API" tally-collector token "$COLLECTOR_TOKEN"
kubeconfig "$D/controller-manager.kubeconfig" "https://127.0.0.1:6443" system:kube-controller-manager cert controller-manager
kubeconfig "$D/scheduler.kubeconfig" "https://127.0.0.1:6443" system:kube-scheduler cert scheduler

# ------------------------------------------------------------------ images
python3 "${HERE}/mkimage.py" "$D/images.tar" /bin/busybox >"$LOGS/mkimage.log" 2>&1 \
  || { cat "$LOGS/mkimage.log" >&2; die "building the test images failed"; }

# ------------------------------------------------------------------ network
log "network namespaces: ${CP_NS} (control plane, bridge tbr0 ${CP_IP}/24) + ${NODES} node(s)"
# `ip netns add` creates /run/netns and bind-mounts it onto itself; undo
# that in down.sh if it was not so before.
mountpoint -q /run/netns || record "umount-if-empty /run/netns"
[[ -d /run/netns ]] || record "rmdir /run/netns"
ip netns add "$CP_NS"; record "netns ${CP_NS}"
ip -n "$CP_NS" link set lo up
ip -n "$CP_NS" link add tbr0 type bridge
ip -n "$CP_NS" addr add "${CP_IP}/24" dev tbr0
ip -n "$CP_NS" link set tbr0 up
in_cp sysctl -qw net.ipv4.ip_forward=1
for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i")
  ip netns add "$n"; record "netns $n"
  # Both ends are created directly inside our namespaces: nothing ever
  # appears in the host namespace.
  ip link add "tv-n$i" netns "$CP_NS" type veth peer name eth0 netns "$n"
  ip -n "$CP_NS" link set "tv-n$i" master tbr0 up
  ip -n "$n" link set lo up
  ip -n "$n" addr add "$(node_ip "$i")/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" route add default via "$CP_IP"
  ip -n "$CP_NS" route add "$(pod_cidr "$i")" via "$(node_ip "$i")"
  nsenter --net="/run/netns/$n" -- sysctl -qw net.ipv4.ip_forward=1
done

# ------------------------------------------------------------------ etcd + apiserver
log "starting etcd and kube-apiserver in ${CP_NS}"
start etcd "$LOGS/etcd.log" "$CP_NS" - -- \
  etcd --name tally --data-dir "$D/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster tally=http://127.0.0.1:2380 --listen-metrics-urls '' \
    --quota-backend-bytes 1073741824 --log-level warn --logger zap

start kube-apiserver "$LOGS/kube-apiserver.log" "$CP_NS" - -- \
  kube-apiserver \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --insecure-port=0 \
    --advertise-address="${CP_IP}" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true \
    --enable-aggregator-routing=true \
    --profiling=false \
    --v=1

# Relay: host 127.0.0.1:${API_PORT} -> unix socket -> socat in ${CP_NS} -> 127.0.0.1:6443.
start relay-cp "$LOGS/relay-cp.log" "$CP_NS" - -- \
  socat "UNIX-LISTEN:$D/apiserver.sock,fork,unlink-early,mode=600" TCP:127.0.0.1:6443
start relay-host "$LOGS/relay-host.log" - - -- \
  socat "TCP-LISTEN:${API_PORT},bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$D/apiserver.sock"

# ------------------------------------------------------------------ node runtimes
CGROUP_V1_MOUNTS=$(awk '$3 == "cgroup" {print $2}' /proc/mounts)
[[ -n "$CGROUP_V1_MOUNTS" ]] || die "no cgroup v1 hierarchy is mounted (see /proc/mounts)"

for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i"); ND="$D/$n"
  mkdir -p "$ND"/{cni,containerd/root,containerd/opt,kubelet,var/lib,var/log,sysctl}
  ln -s /run "$ND/var/run"; ln -s /run/lock "$ND/var/lock"

  # cgroup root of this node in every v1 hierarchy (kubelet --cgroup-root).
  for m in $CGROUP_V1_MOUNTS; do
    mkdir -p "$m/$n"
    if [[ -e "$m/cpuset.cpus" ]]; then
      cat "$m/cpuset.cpus" >"$m/$n/cpuset.cpus"
      cat "$m/cpuset.mems" >"$m/$n/cpuset.mems"
    fi
  done
  record "cgroup $n"

  # Values the kubelet wants for these host sysctls; bind-mounted over
  # /proc/sys inside the node's mount namespace so the kubelet finds them
  # already set and never writes the host's kernel tunables.
  echo 1 >"$ND/sysctl/vm.overcommit_memory"
  echo 0 >"$ND/sysctl/vm.panic_on_oom"
  echo 10 >"$ND/sysctl/kernel.panic"
  echo 1 >"$ND/sysctl/kernel.panic_on_oops"
  echo 1000000 >"$ND/sysctl/kernel.keys.root_maxkeys"
  echo 25000000 >"$ND/sysctl/kernel.keys.root_maxbytes"

  # The node's mount namespace: /var and /run are its own (pod logs, CNI
  # state, shim sockets, netns mounts), host mounts propagate in, nothing
  # propagates out, and every mount in it vanishes with its last process.
  start "holder-$n" "$LOGS/$n-holder.log" "$n" - -- \
    unshare --mount --propagation slave -- /bin/sh -ec '
      nd=$1
      mount --bind "$nd/var" /var
      mount -t tmpfs -o mode=0755,size=512m "tally-run" /run
      mkdir -p /run/lock
      for f in "$nd"/sysctl/*; do
        k=$(basename "$f" | tr . /)
        mount --bind "$f" "/proc/sys/$k"
      done
      touch "$nd/holder.ready"
      exec sleep infinity' holder "$ND"
  hp=$(pid_of "holder-$n")
  timeout 10 sh -c "until [ -e '$ND/holder.ready' ]; do sleep 0.1; done" \
    || { cat "$LOGS/$n-holder.log" >&2; die "mount namespace holder for $n failed; see $LOGS/$n-holder.log"; }
  record "mntns $n $(stat -L -c %i "/proc/$hp/ns/mnt")"

  cat >"$ND/cni/10-tally.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tally",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$(pod_cidr "$i")", "gateway": "10.214.$i.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/var/lib/cni/networks"
      }
    }
  ]
}
EOF

  cat >"$ND/containerd.toml" <<EOF
version = 2
root = "$ND/containerd/root"
state = "/run/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$ND/containerd.sock"

[ttrpc]
  address = "$ND/containerd-ttrpc.sock"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tally.local/pause:1.0"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_concurrent_downloads = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ND/cni"
    max_conf_num = 1
EOF
  start "containerd-$n" "$LOGS/$n-containerd.log" "$n" "$hp" -- \
    containerd --config "$ND/containerd.toml" --log-level info
done

for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i"); ND="$D/$n"
  wait_for "containerd of $n" 60 "$LOGS/$n-containerd.log" "containerd-$n" -- \
    ctr -a "$ND/containerd.sock" version
  ctr -a "$ND/containerd.sock" -n k8s.io images import "$D/images.tar" >"$LOGS/$n-import.log" 2>&1 \
    || { cat "$LOGS/$n-import.log" >&2; die "image import into $n failed; see $LOGS/$n-import.log"; }
done
log "containerd up on every node; images tally.local/busybox:1.35 and tally.local/pause:1.0 imported"

# ------------------------------------------------------------------ API objects
wait_for "kube-apiserver /readyz through the relay" "$UP_TIMEOUT" "$LOGS/kube-apiserver.log" kube-apiserver -- \
  curl -sf --max-time 3 --cacert "$PKI/ca.crt" -H "Authorization: Bearer ${ADMIN_TOKEN}" "${HOST_API}/readyz"
log "kube-apiserver ready ($(( $(date +%s) - t_installed ))s after install)"
export KUBECONFIG="$D/admin.kubeconfig"

# Start the controllers now; objects below do not depend on them.
start kube-controller-manager "$LOGS/kube-controller-manager.log" "$CP_NS" - -- \
  kube-controller-manager \
    --kubeconfig="$D/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$D/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$D/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --allocate-node-cidrs=false \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-service,-route' \
    --leader-elect=false \
    --profiling=false \
    --v=1
start kube-scheduler "$LOGS/kube-scheduler.log" "$CP_NS" - -- \
  kube-scheduler \
    --kubeconfig="$D/scheduler.kubeconfig" \
    --authentication-kubeconfig="$D/scheduler.kubeconfig" \
    --authorization-kubeconfig="$D/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 \
    --leader-elect=false \
    --profiling=false \
    --v=1

{
  cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: tally-viewers-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: viewer}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: tally-collector}
rules:
- apiGroups: [""]
  resources: [nodes, pods, namespaces, persistentvolumes, persistentvolumeclaims, services, events]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [nodes/proxy, nodes/stats, nodes/metrics]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments, replicasets, statefulsets, daemonsets]
  verbs: [get, list, watch]
- apiGroups: [batch]
  resources: [jobs, cronjobs]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: tally-collector}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tally-collector}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: tally-collector}
EOF
  # Kubelet-less nodes: capacity comes from the status patch below; tainted
  # so that real pods never land there.
  for spec in "a us-east-1a m5.xlarge on-demand" "b us-east-1b c5.2xlarge spot" "c us-east-1c r5.large on-demand"; do
    set -- $spec
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: fake-node-$1
  labels:
    kubernetes.io/hostname: fake-node-$1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/region: ${REGION}
    topology.kubernetes.io/zone: $2
    node.kubernetes.io/instance-type: $3
    karpenter.sh/capacity-type: $4
    tally.dev/node-kind: fake
spec:
  taints:
  - {key: tally.dev/fake-node, value: "true", effect: NoSchedule}
  - {key: tally.dev/fake-node, value: "true", effect: NoExecute}
EOF
  done
} >"$D/objects.yaml"
"$KUBECTL" apply -f "$D/objects.yaml" >"$LOGS/objects.log" 2>&1 \
  || { cat "$LOGS/objects.log" >&2; die "creating RBAC/Node objects failed; see $LOGS/objects.log"; }

patch_status() {
  curl -sf --max-time 10 --cacert "$PKI/ca.crt" -H "Authorization: Bearer ${ADMIN_TOKEN}" \
    -X PATCH -H 'Content-Type: application/merge-patch+json' \
    "${HOST_API}/api/v1/nodes/$1/status" -d "$2" >/dev/null
}
fake_status() { # cpu mem(Ki) alloc_cpu alloc_mem(Ki)
  cat <<EOF
{"status":{"capacity":{"cpu":"$1","memory":"$2Ki","pods":"110","ephemeral-storage":"104845292Ki"},
 "allocatable":{"cpu":"$3","memory":"$4Ki","pods":"110","ephemeral-storage":"96625420948"},
 "nodeInfo":{"architecture":"amd64","operatingSystem":"linux","kubeletVersion":"v1.20.2","kubeProxyVersion":"v1.20.2",
   "containerRuntimeVersion":"containerd://1.6.20","osImage":"fake","kernelVersion":"fake","machineID":"","systemUUID":"","bootID":""}}}
EOF
}
patch_status fake-node-a "$(fake_status 4 16012196 3920m 15307684)" || die "status patch of fake-node-a failed"
patch_status fake-node-b "$(fake_status 8 16012196 7910m 15307684)" || die "status patch of fake-node-b failed"
patch_status fake-node-c "$(fake_status 2 16012196 1930m 15307684)" || die "status patch of fake-node-c failed"

# ------------------------------------------------------------------ cluster DNS
# dnsmasq on the bridge address answers for <svc>.<ns>.svc.cluster.local from a
# hosts file dns.py keeps current from the API (CoreDNS is not in Debian; see
# dns.py). Names outside cluster.local get no upstream: lookups fail at once.
mkdir -p "$D/dns"
: >"$D/dns/hosts"
start dnsmasq "$LOGS/dnsmasq.log" "$CP_NS" - -- \
  dnsmasq --keep-in-foreground --log-facility=- --user=root --pid-file= \
    --listen-address="${CP_IP}" --bind-interfaces --port=53 \
    --no-resolv --no-hosts --no-poll --addn-hosts="$D/dns/hosts" \
    --local=/cluster.local/ --domain-needed --bogus-priv --cache-size=0
echo "$(pid_of dnsmasq)" >"$D/dns/dnsmasq.pid"
start cluster-dns "$LOGS/cluster-dns.log" - - -- \
  python3 "${HERE}/dns.py" "$HOST_API" "$PKI/ca.crt" "$ADMIN_TOKEN" "$D/dns/hosts" "$D/dns/dnsmasq.pid"

# ------------------------------------------------------------------ kubelets
for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i"); ND="$D/$n"
  kubeconfig "$ND/kubelet.kubeconfig" "$IN_API" "system:node:$n" cert "$n"
  # Pods get a resolver address that exists in our namespaces (nothing
  # listens there, lookups fail at once) instead of the host's resolver.
  echo "nameserver ${CP_IP}" >"$ND/resolv.conf"
  cat >"$ND/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$i")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/$n-serving.crt
tlsPrivateKeyFile: $PKI/$n-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: /$n
cgroupsPerQOS: true
failSwapOn: false
oomScoreAdj: 0
resolvConf: $ND/resolv.conf
clusterDomain: cluster.local
clusterDNS: [${CP_IP}]
maxPods: 50
podPidsLimit: -1
serializeImagePulls: false
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 256Mi
  nodefs.inodesFree: 1%
  imagefs.available: 256Mi
evictionPressureTransitionPeriod: 10s
# emptyDir usage is measured every 10 s instead of every minute, so an emptyDir
# over its sizeLimit is evicted within seconds (the collector test relies on it).
volumeStatsAggPeriod: 10s
nodeStatusUpdateFrequency: 10s
runtimeRequestTimeout: 2m
EOF
  taints=()
  (( i == DRAIN_NODE_INDEX )) && taints=(--register-with-taints=tally.dev/drain-test=true:NoSchedule)
  # AWS_EC2_METADATA_DISABLED: the in-tree ECR credential provider would
  # otherwise probe the EC2 metadata address at start-up.
  start "kubelet-$n" "$LOGS/$n-kubelet.log" "$n" "$(pid_of "holder-$n")" -- \
    env AWS_EC2_METADATA_DISABLED=true kubelet \
      --config="$ND/kubelet.yaml" \
      --kubeconfig="$ND/kubelet.kubeconfig" \
      --container-runtime=remote \
      --container-runtime-endpoint="unix://$ND/containerd.sock" \
      --containerd="$ND/containerd.sock" \
      --pod-infra-container-image=tally.local/pause:1.0 \
      --root-dir="$ND/kubelet" \
      --cert-dir="$ND/kubelet/pki" \
      --hostname-override="$n" \
      --node-ip="$(node_ip "$i")" \
      "${taints[@]}" \
      --node-labels="topology.kubernetes.io/region=${REGION},topology.kubernetes.io/zone=$(node_zone "$i"),node.kubernetes.io/instance-type=${REAL_ITYPE},karpenter.sh/capacity-type=$(node_ctype "$i"),tally.dev/node-kind=real" \
      --v=2
done

# spec.podCIDR is set once the kubelet has registered its node (a Node
# created ahead of its kubelet without status makes the 1.20 kubelet panic);
# it only informs: each node's CNI range is fixed in its conflist.
node_registered() { "$KUBECTL" get node "$1" >/dev/null 2>&1; }
for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i")
  wait_for "node $n registered" "$UP_TIMEOUT" "$LOGS/$n-kubelet.log" "kubelet-$n" -- node_registered "$n"
  "$KUBECTL" patch node "$n" -p "{\"spec\":{\"podCIDR\":\"$(pod_cidr "$i")\",\"podCIDRs\":[\"$(pod_cidr "$i")\"]}}" >>"$LOGS/objects.log" 2>&1 \
    || die "setting spec.podCIDR of $n failed; see $LOGS/objects.log"
done
node_ready() {
  [[ "$("$KUBECTL" get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i")
  wait_for "node $n Ready" "$UP_TIMEOUT" "$LOGS/$n-kubelet.log" "kubelet-$n" -- node_ready "$n"
done
# ------------------------------------------------------------------ kube-proxy
# One per node, in the node's namespaces, iptables mode: ClusterIP services
# (kubernetes.default included) work from pods and from host-network pods.
# Pod-to-service traffic that stays on a node's bridge passes iptables
# (bridge-nf-call-iptables), so replies are translated back. The conntrack
# table size and timeouts are the kernel's (0 = leave as is): they are global.
kubeconfig "$D/kube-proxy.kubeconfig" "$IN_API" system:kube-proxy cert kube-proxy
for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i"); ND="$D/$n"
  nsenter --net="/run/netns/$n" -- sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # Per-connection byte counters and timestamps, as a node image for netmon's conntrack mode
  # sets them (a container cannot: /proc/sys is read-only in it).
  nsenter --net="/run/netns/$n" -- sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
  cat >"$ND/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $D/kube-proxy.kubeconfig}
hostnameOverride: $n
bindAddress: $(node_ip "$i")
clusterCIDR: 10.214.0.0/16
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start "kube-proxy-$n" "$LOGS/$n-kube-proxy.log" "$n" "$(pid_of "holder-$n")" -- \
    kube-proxy --config="$ND/kube-proxy.yaml" --v=1
done
for i in $(seq 1 "$NODES"); do
  n=$(node_name "$i")
  wait_for "kube-proxy of $n healthy" "$UP_TIMEOUT" "$LOGS/$n-kube-proxy.log" "kube-proxy-$n" -- \
    nsenter --net="/run/netns/$n" -- curl -sf --max-time 2 http://127.0.0.1:10256/healthz
done
wait_for "cluster DNS answering kubernetes.default" 60 "$LOGS/cluster-dns.log" cluster-dns -- \
  grep -q ' kubernetes.default.svc.cluster.local$' "$D/dns/hosts"

wait_for "default service account" 60 "$LOGS/kube-controller-manager.log" kube-controller-manager -- \
  "$KUBECTL" -n default get serviceaccount default

# ------------------------------------------------------------------ env file
NODE_NAMES=""; NODE_IPS=""; NODE_SOCKS=""; DRAIN_NODE=""
(( DRAIN_NODE_INDEX )) && DRAIN_NODE=$(node_name "$DRAIN_NODE_INDEX")
for i in $(seq 1 "$NODES"); do
  NODE_NAMES+="$(node_name "$i") "; NODE_IPS+="$(node_ip "$i") "
  NODE_SOCKS+="$D/$(node_name "$i")/containerd.sock "
done
cat >"$D/env" <<EOF
# Written by tests/cluster/up.sh; source it: . ${D}/env
export TALLY_CLUSTER_DIR=${D}
export TALLY_K8S_BIN=${K8S_BIN}
export TALLY_KUBECTL=${D}/bin/kubectl
export TALLY_API_PORT=${API_PORT}
export TALLY_API_SERVER=${HOST_API}
export TALLY_CA_CERT=${PKI}/ca.crt
export KUBECONFIG=${D}/admin.kubeconfig
export TALLY_ADMIN_KUBECONFIG=${D}/admin.kubeconfig
export TALLY_VIEWER_KUBECONFIG=${D}/viewer.kubeconfig
export TALLY_NOBODY_KUBECONFIG=${D}/nobody.kubeconfig
export TALLY_COLLECTOR_KUBECONFIG=${D}/collector.kubeconfig
export TALLY_ADMIN_TOKEN=${ADMIN_TOKEN}
export TALLY_VIEWER_TOKEN=${VIEWER_TOKEN}
export TALLY_NOBODY_TOKEN=${NOBODY_TOKEN}
export TALLY_COLLECTOR_TOKEN=${COLLECTOR_TOKEN}
export TALLY_CP_NETNS=${CP_NS}
export TALLY_CP_IP=${CP_IP}
export TALLY_NODES="${NODE_NAMES% }"
export TALLY_NODE_NETNS="${NODE_NAMES% }"
export TALLY_NODE_IPS="${NODE_IPS% }"
export TALLY_CONTAINERD_SOCKETS="${NODE_SOCKS% }"
export TALLY_FAKE_NODES="fake-node-a fake-node-b fake-node-c"
export TALLY_DRAIN_NODE=${DRAIN_NODE}
export TALLY_CLUSTER_DNS=${CP_IP}
export TALLY_IMAGE_BUSYBOX=tally.local/busybox:1.35
export TALLY_IMAGE_PAUSE=tally.local/pause:1.0
export TALLY_IMAGES_TAR=${D}/images.tar
export TALLY_LOG_DIR=${LOGS}
EOF

t_end=$(date +%s)
echo "$(( t_end - t_installed ))" >"$D/up-seconds"
log "cluster up: ${NODES} real node(s) Ready + 3 fake nodes; up took $(( t_end - t_installed ))s (install check $(( t_installed - t_start ))s)"
log "  source $D/env   # KUBECONFIG=$D/admin.kubeconfig, API ${HOST_API}"
