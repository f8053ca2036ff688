#!/usr/bin/env bash
# Idempotent installer for the Tally test cluster.
#
#  1. installs the Debian packages the cluster needs (apt-get update once, only
#     when something is missing);
#  2. builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#     kube-proxy and kubectl 1.20.2 from Debian bookworm's `kubernetes` source
#     package, once per machine, into ${TALLY_CACHE:-/root/.cache/tally}/k8s-1.20.2/bin/.
#
# A second run is a quick no-op. Progress goes to stdout; the Go build log goes
# to ${K8S_CACHE}/build.log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"

need_root

# ---------------------------------------------------------------- packages
PKGS=(
  curl etcd-server containerd runc containernetworking-plugins busybox-static
  iproute2 iptables socat conntrack rsync golang-go openssl python3
  util-linux procps psmisc dpkg-dev xz-utils make ca-certificates
  golang-github-modern-go-reflect2-dev dnsmasq-base
)
missing=()
for p in "${PKGS[@]}"; do
  st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done

# deb-src for bookworm is needed only to fetch the kubernetes source.
BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# Bump BUILD_TAG whenever the build recipe changes: cached binaries with
# another tag are rebuilt.
BUILD_TAG="k8s-1.20.2+debian-bookworm+reflect2-1.0.2"
need_build=0
[[ "$(cat "${K8S_BIN}/.build-tag" 2>/dev/null)" == "$BUILD_TAG" ]] || need_build=1
for b in "${BINS[@]}"; do [[ -x "${K8S_BIN}/$b" ]] || need_build=1; done

have_debsrc() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    grep -qE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' "$f" && return 0
  done
  return 1
}

updated=0
apt_update() {
  if [[ $updated == 0 ]]; then
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    updated=1
  fi
}

if (( need_build )) && ! have_debsrc; then
  # Reuse the URI of the existing Debian entry (deb822 or one-line format).
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -m1 -E 'debian/?$' | awk '{print $2}' || true)"
  [[ -n "$uri" ]] || uri="$(grep -hsE '^deb\s+\S*debian/?\s+bookworm\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | head -1 || true)"
  [[ -n "$uri" ]] || uri="http://deb.debian.org/debian"
  log "adding deb-src for bookworm (${uri}) in /etc/apt/sources.list.d/tally-k8s-src.sources"
  cat >/etc/apt/sources.list.d/tally-k8s-src.sources <<EOF
Types: deb-src
URIs: ${uri}
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  updated=0
  apt_update
fi

if (( ${#missing[@]} )); then
  apt_update
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"${TALLY_CACHE}/apt-install.log" 2>&1 \
    || { tail -20 "${TALLY_CACHE}/apt-install.log" >&2; die "apt-get install failed (log: ${TALLY_CACHE}/apt-install.log)"; }
else
  log "Debian packages: all present"
fi

# Debian's packages must not leave daemons of their own running (there is no
# systemd here, but be sure): our scripts start their own instances.
for d in etcd containerd; do
  if pgrep -x "$d" -a 2>/dev/null | grep -vq -- "${TALLY_CLUSTER_DIR}"; then
    warn "a '$d' not started by the tally scripts is running; it is left alone"
  fi
done

# ---------------------------------------------------------------- kubernetes
if (( ! need_build )); then
  log "kubernetes 1.20.2 binaries: cached in ${K8S_BIN}"
  exit 0
fi

mkdir -p "${K8S_CACHE}/src" "${K8S_BIN}"
SRC="$(find "${K8S_CACHE}/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -1)"
if [[ -z "$SRC" || ! -f "$SRC/debian/rules" ]]; then
  apt_update
  log "apt-get source kubernetes/bookworm -> ${K8S_CACHE}/src"
  rm -rf "${K8S_CACHE:?}/src"/*
  (cd "${K8S_CACHE}/src" && apt-get source -qq kubernetes/bookworm) >"${K8S_CACHE}/source.log" 2>&1 \
    || { tail -20 "${K8S_CACHE}/source.log" >&2; die "apt-get source kubernetes/bookworm failed"; }
  SRC="$(find "${K8S_CACHE}/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -1)"
fi
[[ -n "$SRC" ]] || die "kubernetes source tree not found under ${K8S_CACHE}/src"
grep -q '^1\.20\.' <(sed -n 's/^kubernetes (\([^)]*\)).*/\1/p;q' "$SRC/debian/changelog" | sed 's/.*really//') \
  || warn "source is not 1.20.x: $(head -1 "$SRC/debian/changelog")"

# The vendored github.com/modern-go/reflect2 v1.0.1 crashes under Go >= 1.18
# (SIGSEGV in mapiterinit while json-iterator encodes a map: the apiserver
# dies on its first such request). Debian ships v1.0.2, which fixes it and
# keeps the API; swap it in.
R2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
R2_DST="$SRC/vendor/github.com/modern-go/reflect2"
if [[ ! -e "$R2_DST/go_above_118.go" ]]; then
  [[ -e "$R2_SRC/go_above_118.go" ]] || die "$R2_SRC lacks go_above_118.go (need golang-github-modern-go-reflect2-dev >= 1.0.2)"
  log "patching vendored modern-go/reflect2 1.0.1 -> 1.0.2 (Debian golang-github-modern-go-reflect2-dev)"
  find "$R2_DST" -maxdepth 1 -name '*.go' -delete
  cp "$R2_SRC"/*.go "$R2_SRC"/*.s "$R2_DST"/
fi

# Same environment as the package's debian/rules: GOPATH=$CURDIR/.go with a
# k8s.io/kubernetes symlink, CGO_ENABLED=0, Debian's Go first in PATH.
todo=()
if [[ "$(cat "${K8S_BIN}/.build-tag" 2>/dev/null)" == "$BUILD_TAG" ]]; then
  for b in "${BINS[@]}"; do [[ -x "${K8S_BIN}/$b" ]] || todo+=("cmd/$b"); done
else
  for b in "${BINS[@]}"; do todo+=("cmd/$b"); done
fi
log "building ${todo[*]} with $(go version | awk '{print $3}') under nice -n 19 (~10 min on 2 cores; log: ${K8S_CACHE}/build.log)"
start=$(date +%s)
(
  cd "$SRC"
  export GOPATH="$SRC/.go" CGO_ENABLED=0 HOME="${K8S_CACHE}/home"
  export PATH="/usr/lib/go/bin:$PATH"
  mkdir -p .go/src/k8s.io "$HOME"
  [[ -L .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
  nice -n 19 make WHAT="${todo[*]}"
) >"${K8S_CACHE}/build.log" 2>&1 || { tail -30 "${K8S_CACHE}/build.log" >&2; die "kubernetes build failed (log: ${K8S_CACHE}/build.log)"; }
for b in "${todo[@]}"; do
  b="${b#cmd/}"
  f="$(find "$SRC/_output" -type f -name "$b" -perm -u+x | head -1)"
  [[ -n "$f" ]] || die "built binary $b not found under $SRC/_output"
  install -m 0755 "$f" "${K8S_BIN}/$b.tmp" && mv "${K8S_BIN}/$b.tmp" "${K8S_BIN}/$b"
done
echo "$BUILD_TAG" >"${K8S_BIN}/.build-tag"
secs=$(( $(date +%s) - start ))
echo "$secs" >"${K8S_CACHE}/build-seconds"
log "kubernetes binaries built in ${secs}s -> ${K8S_BIN}"
"${K8S_BIN}/kube-apiserver" --version
if [[ "${TALLY_KEEP_K8S_SRC:-0}" != 1 ]]; then
  log "removing the build tree ${K8S_CACHE}/src (set TALLY_KEEP_K8S_SRC=1 to keep it)"
  rm -rf "${K8S_CACHE:?}/src" "${K8S_CACHE:?}/home"
fi
