#!/usr/bin/env bash
# Run a command inside one of the test cluster's namespaces.
#
#   nsexec.sh tally-cp CMD...   control-plane network namespace (etcd on
#                               127.0.0.1:2379, apiserver on 10.213.0.1:6443)
#   nsexec.sh tally-n1 CMD...   a node: its network namespace plus its mount
#                               namespace (its own /var and /run, as the
#                               node's kubelet and containerd see them)
#
# e.g.  nsexec.sh tally-n1 ctr -a /tmp/tally-cluster/tally-n1/containerd.sock -n k8s.io images ls
#       nsexec.sh tally-n1 curl -sk https://10.213.0.11:10250/healthz
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
need_root
(( $# >= 2 )) || die "usage: $0 NAMESPACE CMD... (namespaces: $(ip netns list | awk '{print $1}' | grep "^${NS_PREFIX}" | paste -sd' '))"
ns=$1; shift
STATE="${TALLY_CLUSTER_DIR}/state"
[[ -f "$STATE" ]] || die "no cluster is up in ${TALLY_CLUSTER_DIR}"
[[ -e "/run/netns/$ns" ]] || die "no network namespace '$ns'"
read -r pid st < <(awk -v n="holder-$ns" '$1 == "pid" && $2 == n {print $3, $4}' "$STATE") || true
if [[ -n "${pid:-}" ]]; then
  [[ "$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" == "$st" ]] || die "mount namespace holder of $ns (pid $pid) is gone"
  exec nsenter --net="/run/netns/$ns" --mount="/proc/$pid/ns/mnt" --wd="$PWD" -- "$@"
fi
exec nsenter --net="/run/netns/$ns" -- "$@"
