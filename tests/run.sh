#!/usr/bin/env bash
# Runs every test of Tally on a fresh Debian machine: installs what the tests need
# (idempotently, cached), then formatting, lints, the whole test suite, and the benchmarks
# at a tiny size so they cannot rot. `.ci/run` calls exactly this.
#
#   tests/run.sh              everything
#   TALLY_SKIP_INSTALL=1      skip package installation (when you know it is done)
set -euo pipefail
cd "$(dirname "$0")/.."

export TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TALLY_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$TALLY_CACHE" "$CARGO_TARGET_DIR"
started=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh must run as root: the tests mount tmpfs volumes and create network namespaces" >&2
  exit 1
fi

if [ -z "${TALLY_SKIP_INSTALL:-}" ]; then
  step "installing test dependencies"
  # chromium + chromium-driver: the web UI's end-to-end tests drive a real headless Chromium.
  # victoria-metrics + prometheus: the peers benchmark (tally-bench peers) loads the same data into them.
  # binutils: objcopy strips the release binaries for the in-cluster install's image.
  debs=(python3 python3-venv ca-certificates binutils chromium chromium-driver clang-19 libbpf-dev bpftool conntrack nftables iproute2 victoria-metrics prometheus)
  missing=()
  for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # DuckDB and pyarrow read the exported Parquet, helm-python-sdk (Helm 4) renders the chart,
  # in a virtualenv cached outside the clone.
  venv="$TALLY_CACHE/venv"
  if ! "$venv/bin/python3" -c 'import duckdb, pyarrow, helm_python' 2>/dev/null; then
    echo "creating $venv with duckdb, pyarrow and helm-python-sdk"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
  fi
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
export PATH="$TALLY_CACHE/venv/bin:$PATH"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo build (the tally binary the end-to-end tests run)"
cargo build --quiet --bin tally --bin tally-agent
export TALLY_BIN="$CARGO_TARGET_DIR/debug/tally"
export TALLY_AGENT_BIN="$CARGO_TARGET_DIR/debug/tally-agent"

# The collector's tests (and others) run against a real Kubernetes cluster on this machine,
# brought up once for the whole suite and torn down on exit (TALLY_KEEP=1 leaves it up).
# With TALLY_KUBECONFIG set, the same tests run against that cluster instead.
if [ -z "${TALLY_KUBECONFIG:-}" ]; then
  step "the real Kubernetes test cluster up (etcd, kube-apiserver, controllers, scheduler, kubelet nodes)"
  # down.sh fails if anything of the cluster is left behind; so does this run then.
  cluster_down() {
    local rc=$?
    [ "${TALLY_KEEP:-0}" = 1 ] || bash tests/cluster/down.sh || rc=1
    exit "$rc"
  }
  trap cluster_down EXIT
  bash tests/cluster/up.sh
fi

step "cargo test"
cargo test --workspace --quiet -- --test-threads=2

if [ -z "${TALLY_KUBECONFIG:-}" ]; then
  # The path a user takes with their own cluster: only a kubeconfig (the test cluster's
  # admin one), no env file of ours (TALLY_CLUSTER_DIR points nowhere), kubectl from PATH.
  step "the collector's tests again, through TALLY_KUBECONFIG alone (as against a user's cluster)"
  (
    source /tmp/tally-cluster/env
    PATH="$(dirname "$TALLY_KUBECTL"):$PATH" \
    TALLY_KUBECONFIG="$TALLY_ADMIN_KUBECONFIG" TALLY_CLUSTER_DIR=/nonexistent \
      env -u TALLY_KUBECTL -u TALLY_IMAGE_BUSYBOX \
      cargo test --quiet -p tally-e2e --test e2e -- --test-threads=2 collector::
  )
fi

if [ -z "${TALLY_KUBECONFIG:-}" ]; then
  # Issue 12: the release binaries in an image built without a registry or Docker, imported
  # into the nodes, the chart rendered by Helm 4 and applied; readiness, data, analysis, UI,
  # export, a restart, an upgrade, no egress, uninstall. Figures: benchmarks/RESULTS.md.
  step "Tally installed in the test cluster as an air-gapped user installs it (release build, image, chart)"
  cargo build --release --quiet -p tally-appliance -p tally-benchmarks -p tally-agent
  python3 tests/install/airgap.py --results "$CARGO_TARGET_DIR/install-results.md"
fi

step "benchmarks at a tiny size (so they cannot rot; real numbers: benchmarks/RESULTS.md)"
cargo build --quiet -p tally-benchmarks -p tally-agent
"$CARGO_TARGET_DIR/debug/tally-bench" --results "$CARGO_TARGET_DIR/bench-tiny.md" all --tiny >/dev/null

if [ -z "${TALLY_KUBECONFIG:-}" ]; then
  step "the test cluster's smoke checks (against the cluster already up)"
  TALLY_SMOKE_REUSE=1 bash tests/cluster/smoke.sh
fi

step "done"
