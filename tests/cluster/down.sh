#!/usr/bin/env bash
# Tear down the Tally test cluster started by up.sh: kill every process,
# remove every mount, cgroup, network namespace (with its interfaces) and the
# cluster dir. Idempotent: safe to run when nothing is up.
#
# It undoes what ${TALLY_CLUSTER_DIR}/state records, and also sweeps for the
# exact names up.sh uses (netns/cgroups ${NS_PREFIX}cp, ${NS_PREFIX}n1..9 and
# processes whose command line names the cluster dir), so a half-finished
# up.sh or a lost state file is cleaned as well.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
need_root

D="${TALLY_CLUSTER_DIR}"
[[ "$D" == /* && "$D" != "/" && "$D" != "//" ]] || die "refusing TALLY_CLUSTER_DIR='$D'"
STATE="$D/state"
NAME_RE="^${NS_PREFIX}(cp|n[1-9])$"

declare -A NETNS=() CGROUPS=() MNTNS=() PIDS=() RMDIRS=() UMOUNTS=()
if [[ -f "$STATE" ]]; then
  while read -r kind a b c; do
    case "$kind" in
      netns)  NETNS[$a]=1 ;;
      cgroup) CGROUPS[$a]=1 ;;
      mntns)  MNTNS[$b]=1 ;;
      pid)    PIDS[$b]="${c:-}" ;;
      rmdir)  RMDIRS[$a]=1 ;;
      umount-if-empty) UMOUNTS[$a]=1 ;;
    esac
  done <"$STATE"
fi
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  [[ "$ns" =~ $NAME_RE ]] && NETNS[$ns]=1
done
CGROUP_MOUNTS=$(awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/mounts)
for m in $CGROUP_MOUNTS; do
  for dir in "$m"/"${NS_PREFIX}"n[1-9]; do
    [[ -d "$dir" ]] && CGROUPS[$(basename "$dir")]=1
  done
done

if ((${#NETNS[@]} + ${#CGROUPS[@]} + ${#PIDS[@]} == 0)) && [[ ! -e "$D" ]]; then
  log "nothing to tear down"
  exit 0
fi
log "tearing down the cluster in ${D}"

# Inodes of our network namespaces (a process in one of them is ours).
declare -A NETINO=()
for ns in "${!NETNS[@]}"; do
  ino=$(stat -L -c %i "/run/netns/$ns" 2>/dev/null) && NETINO[$ino]=1
done

# Our own ancestry is never a target.
declare -A SELF=()
p=$$
while [[ -n "$p" && "$p" != 0 ]]; do
  SELF[$p]=1
  p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || true)
done

targets() {
  local out=() pid st ino cg m f
  for pid in "${!PIDS[@]}"; do
    st=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) || continue
    [[ -z "${PIDS[$pid]}" || "$st" == "${PIDS[$pid]}" ]] && out+=("$pid")
  done
  for f in /proc/[0-9]*; do
    pid=${f#/proc/}
    [[ -n "${SELF[$pid]:-}" ]] && continue
    ino=$(readlink "$f/ns/net" 2>/dev/null) || continue
    ino=${ino#net:[}; ino=${ino%]}
    if [[ -n "${NETINO[$ino]:-}" ]]; then out+=("$pid"); continue; fi
    ino=$(readlink "$f/ns/mnt" 2>/dev/null) || continue
    ino=${ino#mnt:[}; ino=${ino%]}
    if [[ -n "${MNTNS[$ino]:-}" ]]; then out+=("$pid"); continue; fi
    if { tr '\0' ' ' <"$f/cmdline"; } 2>/dev/null | grep -qF -- "$D/"; then out+=("$pid"); fi
  done
  for cg in "${!CGROUPS[@]}"; do
    for m in $CGROUP_MOUNTS; do
      [[ -d "$m/$cg" ]] || continue
      find "$m/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
  done | sort -u | while read -r pid; do [[ -n "$pid" ]] && echo "$pid"; done
  printf '%s\n' "${out[@]}"
}

live_targets() {
  targets | sort -un | while read -r pid; do
    [[ -n "$pid" && -z "${SELF[$pid]:-}" ]] || continue
    # skip zombies: they are gone once reaped
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" =~ ^[RSDTtWXIP]$ ]] && echo "$pid"
  done
}

# Kubelets first (so they stop restarting containers), then everything.
for pid in "${!PIDS[@]}"; do
  if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q '^kubelet '; then kill -TERM "$pid" 2>/dev/null; fi
done
sig=TERM
deadline=$(( $(date +%s) + 30 ))
term_until=$(( $(date +%s) + 5 ))
while :; do
  mapfile -t left < <(live_targets)
  ((${#left[@]} == 0)) && break
  if (( $(date +%s) >= deadline )); then
    warn "processes still alive after 30s: ${left[*]}"
    break
  fi
  (( $(date +%s) >= term_until )) && sig=KILL
  kill -"$sig" "${left[@]}" 2>/dev/null
  sleep 0.5
done

# Mounts: the nodes' mounts live in their own mount namespaces and vanish
# with their last process; anything under the cluster dir that is visible
# here (should be none) is unmounted too.
for _ in 1 2 3; do
  mapfile -t mnts < <(awk -v d="$D" 'index($5, d"/") == 1 || $5 == d {print $5}' /proc/self/mountinfo | sort -r)
  ((${#mnts[@]} == 0)) && break
  for mp in "${mnts[@]}"; do umount -l "$mp" 2>/dev/null || true; done
done

# cgroups (v1 hierarchies and the v2 one), deepest first.
for cg in "${!CGROUPS[@]}"; do
  for m in $CGROUP_MOUNTS; do
    [[ -d "$m/$cg" ]] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$m/$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
      [[ -d "$m/$cg" ]] || break
      sleep 0.5
    done
    [[ -d "$m/$cg" ]] && warn "could not remove cgroup $m/$cg"
  done
done

# Network namespaces (their veths, bridges and routes go with them).
for ns in "${!NETNS[@]}"; do
  ip netns del "$ns" 2>/dev/null || true
  [[ -e "/run/netns/$ns" ]] && warn "could not delete netns $ns"
done

# Directories up.sh created outside the cluster dir, if they are empty now.
for dir in "${!UMOUNTS[@]}"; do
  if mountpoint -q "$dir" && [[ -z "$(ls -A "$dir" 2>/dev/null)" ]]; then umount "$dir" 2>/dev/null || true; fi
done
for dir in "${!RMDIRS[@]}"; do rmdir "$dir" 2>/dev/null || true; done

rm -rf "$D" 2>/dev/null || { sleep 1; rm -rf "$D" || warn "could not remove $D"; }

# Prove it: no network namespace, mount, listener or directory of the cluster is left.
left=()
leftover_netns=$(ip netns list | cut -d' ' -f1 | grep -E "^${NS_PREFIX}" | paste -sd' ' || true)
[[ -n "$leftover_netns" ]] && left+=("netns ${leftover_netns}")
grep -q " ${D}" /proc/mounts && left+=("mounts under ${D}")
ss -Hltn "sport = :${API_PORT}" | grep -q . && left+=("a listener on port ${API_PORT}")
[[ -e "$D" ]] && left+=("${D}")
if ((${#left[@]})); then
  warn "teardown left behind: ${left[*]}"
  exit 1
fi
log "teardown complete: no netns, mount, listener or directory of the cluster is left"
