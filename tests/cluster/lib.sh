# Common settings and helpers for the Tally test-cluster scripts (sourced).
# shellcheck shell=bash

TALLY_CACHE="${TALLY_CACHE:-/root/.cache/tally}"
K8S_CACHE="${TALLY_CACHE}/k8s-1.20.2"
K8S_BIN="${K8S_CACHE}/bin"
TALLY_CLUSTER_DIR="${TALLY_CLUSTER_DIR:-/tmp/tally-cluster}"
mkdir -p "${TALLY_CACHE}"

log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }
# Network namespace names: ${NS_PREFIX}cp and ${NS_PREFIX}n1..n9 (also the node names).
NS_PREFIX="${TALLY_NS_PREFIX:-tally-}"
API_PORT="${TALLY_API_PORT:-16443}"
