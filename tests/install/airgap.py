#!/usr/bin/env python3
"""Tally installed as an air-gapped user installs it, on the real test cluster.

    python3 tests/install/airgap.py [--results FILE] [--keep]

Needs the test cluster up (tests/cluster/up.sh; it reads /tmp/tally-cluster/env), the release
binaries (`cargo build --release -p tally-appliance -p tally-agent`, in
$CARGO_TARGET_DIR/release or --release-dir) and the venv of tests/requirements.txt (Helm 4
through helm-python-sdk, DuckDB). tests/run.sh runs it. Steps, each printed with its time:

 1. The image: `helm/chart.py images` lists what to mirror; tests/cluster/mkimage.py assembles
    that image from the release binaries (debug info stripped, as a release image would be)
    and exactly the shared libraries they link, with no registry and no Docker, and every
    node's containerd imports it as a user imports a mirrored image.
 2. The install: a hostPath PersistentVolume for the appliance (what a local-volume
    provisioner would make), the chart rendered by real Helm with `global.imageRegistry`
    naming the mirror, the CRDs applied first (as `helm install` does), then the rest with
    kubectl. Nothing of the chart is overridden but user values (registry, storage class,
    intervals, the analysis's confidence hold).
 3. Ready: every pod Ready through its own readiness probe; the time from apply to ready is
    recorded. The appliance's log shows the certificate its TokenReview bootstrap issued to
    each agent's ServiceAccount (the chart gives them no other way to get one).
 4. Workloads of the test (a busy pod, an idle over-provisioned Deployment, a Deployment
    that is OOM-killed) show up in SQL; an analysis run recommends shrinking the idle one
    and growing the OOM-killed one.
 5. The UI and the SQL API answer at the appliance pod's address; a Parquet export reads in
    DuckDB with the SQL count.
 6. The appliance pod deleted: the StatefulSet brings it back on the same volume, no row
    acknowledged before is lost, the agents reconnect and write again.
 7. Air-gapped for real: every connection the nodes' conntrack tables saw from Tally's pods
    and nodes (sampled four times during the run), and every flow netmon recorded, stays
    inside the test's networks.
 8. An upgrade with changed values rolls out (objects the new render lacks are pruned, as
    `helm upgrade` does).
 9. Uninstall (what `helm uninstall` deletes): everything goes but the data volume's claim and
    the CA Secret/ConfigMap, as helm/README.md says; then those too, and the PV.

Exit status 0 only if every check held. Everything it created is removed (--keep leaves it).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACE = "tally-airgap"
WORK_NS = "tally-airgap-work"
RELEASE = "tally"
MIRROR = "mirror.tally.test"
STORAGE_CLASS = "tally-airgap-local"
PV_NAME = "tally-airgap-data"
# The networks of the test cluster (tests/cluster/README.md): nodes, pods, services, loopback.
OUR_NETWORKS = [ipaddress.ip_network(n) for n in
                ("10.213.0.0/24", "10.214.0.0/16", "10.215.0.0/24", "127.0.0.0/8")]

STARTED = time.monotonic()
FAILURES: list[str] = []


def step(text: str) -> None:
    print(f"\n== {text} ({time.monotonic() - STARTED:.0f}s)", flush=True)


def ok(text: str) -> None:
    print(f"PASS: {text}", flush=True)


def fail(text: str) -> None:
    print(f"FAIL: {text}", flush=True)
    FAILURES.append(text)


def run(*cmd: str, input: str | None = None, check: bool = True, capture: bool = True,
        timeout: float = 300) -> str:
    proc = subprocess.run(cmd, input=input, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr or ''}{proc.stdout or ''}")
    return proc.stdout if capture else ""


class Cluster:
    def __init__(self) -> None:
        env_file = os.path.join(os.environ.get("TALLY_CLUSTER_DIR", "/tmp/tally-cluster"), "env")
        if not os.path.exists(env_file):
            sys.exit(f"{env_file} is missing: bring the test cluster up first (bash tests/cluster/up.sh)")
        self.env: dict[str, str] = {}
        for line in open(env_file):
            m = re.match(r'export (\w+)="?([^"]*)"?$', line.strip())
            if m:
                self.env[m.group(1)] = m.group(2)
        self.kubectl_bin = self.env["TALLY_KUBECTL"]
        self.kubeconfig = self.env["TALLY_ADMIN_KUBECONFIG"]
        self.nodes = self.env["TALLY_NODES"].split()
        self.sockets = self.env["TALLY_CONTAINERD_SOCKETS"].split()
        self.cp_netns = self.env["TALLY_CP_NETNS"]
        self.dir = self.env["TALLY_CLUSTER_DIR"]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 300) -> str:
        return run(self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args,
                   input=input, check=check, timeout=timeout)

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def in_cp(self, *cmd: str, timeout: float = 120) -> str:
        """Runs a command in the control plane's network namespace, which routes to every
        pod and node address (and nowhere else)."""
        return run("ip", "netns", "exec", self.cp_netns, *cmd, timeout=timeout)


def wait(desc: str, timeout: float, probe, every: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            got = probe()
            if got:
                return got
            last = got
        except Exception as err:  # noqa: BLE001 - retried until the deadline, then reported
            last = err
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {desc} (last: {last})")
        time.sleep(every)


def helm(*args: str) -> str:
    return run(sys.executable, os.path.join(REPO, "helm", "chart.py"), *args)


# ---------------------------------------------------------------------------- 1. the image
def build_and_import_image(cluster: Cluster, values_file: str, release_dir: str, work: str) -> str:
    step("1. the image: listed by the chart, assembled from the release binaries, imported into every node")
    images = helm("images", "-f", values_file).split()
    if len(images) != 1 or not images[0].startswith(MIRROR + "/"):
        raise RuntimeError(f"the chart should reference exactly one image, from {MIRROR}: {images}")
    image = images[0]
    files = []
    for binary in ("tally", "tally-agent"):
        src = os.path.join(release_dir, binary)
        if not os.path.exists(src):
            raise RuntimeError(f"{src} is missing: cargo build --release -p tally-appliance -p tally-agent")
        stripped = os.path.join(work, binary)
        run("objcopy", "--strip-debug", src, stripped)
        files += ["--file", f"{stripped}:/usr/local/bin/{binary}"]
    archive = os.path.join(work, "tally-image.tar")
    run(sys.executable, os.path.join(REPO, "tests", "cluster", "mkimage.py"), archive,
        "--image", image, "--bare", "--ldd", *files,
        "--cmd", "/usr/local/bin/tally", "--cmd", "serve")
    size = os.path.getsize(archive)
    for sock in cluster.sockets:
        run("ctr", "-a", sock, "-n", "k8s.io", "images", "import", archive, timeout=600)
    ok(f"{image}: {size / 2**20:.0f} MiB archive (binaries, their shared libraries, /tmp, /etc/passwd; no shell) imported into {len(cluster.sockets)} nodes")
    return image


# ---------------------------------------------------------------------------- 2. install
def values(extra: dict | None = None) -> dict:
    v = {
        "global": {"imageRegistry": MIRROR},
        "appliance": {
            "persistence": {"storageClass": STORAGE_CLASS, "size": "5Gi"},
            # A fresh cluster has minutes of history: recommend from the first samples.
            "analysisHoldBelowConfidence": 0,
            "analysisInterval": "1m",
        },
        "collector": {"scrapeInterval": "10s"},
        "netmon": {"flushInterval": "10s"},
        "operator": {"pollInterval": "15s"},
    }
    for key, value in (extra or {}).items():
        v.setdefault(key, {}).update(value)
    return v


def write_values(path: str, v: dict) -> None:
    with open(path, "w") as f:
        json.dump(v, f)  # JSON is YAML


def render(values_file: str, crds: bool) -> list[dict]:
    out = json.loads(helm("render", "--name", RELEASE, "--namespace", NAMESPACE,
                          "-f", values_file, "--json", *(["--include-crds"] if crds else [])))
    return [o["object"] for o in out["objects"]]


def objects_yaml(objs: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})


def persistent_volume(cluster: Cluster) -> str:
    path = os.path.join(cluster.dir, "airgap-pv")
    os.makedirs(path, exist_ok=True)
    # The appliance runs as uid/gid 65532 (the chart's security context); a local volume's
    # directory is prepared for it as a provisioner would (hostPath ignores fsGroup).
    os.chown(path, 65532, 65532)
    node = cluster.nodes[0]
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": PV_NAME, "labels": {"tally.dev/test": "airgap"}},
        "spec": {
            "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": path, "type": "Directory"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))
    return path


def ready_nodes(cluster: Cluster) -> set[str]:
    ready = set()
    for n in cluster.json("get", "nodes")["items"]:
        conds = {c["type"]: c["status"] for c in n["status"].get("conditions", [])}
        if conds.get("Ready") == "True":
            ready.add(n["metadata"]["name"])
    return ready


def on_dead_nodes(cluster: Cluster, namespace: str) -> list[dict]:
    """Pods bound to nodes that are not Ready: the test cluster's kubelet-less fake nodes,
    where netmon's DaemonSet (it tolerates every taint) places a pod that never starts."""
    ready = ready_nodes(cluster)
    return [p for p in cluster.json("-n", namespace, "get", "pods")["items"]
            if p["spec"].get("nodeName") and p["spec"]["nodeName"] not in ready]


def force_delete_dead(cluster: Cluster, namespace: str) -> None:
    # No kubelet will ever confirm these pods' end: delete them as an admin deletes the pods
    # of a node that is gone.
    for p in on_dead_nodes(cluster, namespace):
        cluster.kubectl("-n", namespace, "delete", "pod", p["metadata"]["name"], "--grace-period=0",
                        "--force", "--ignore-not-found", check=False)


def pods_ready(cluster: Cluster) -> list[dict] | None:
    ready_nodes_now = ready_nodes(cluster)
    pods = [p for p in cluster.json("-n", NAMESPACE, "get", "pods")["items"]
            if p["spec"].get("nodeName") in ready_nodes_now or not p["spec"].get("nodeName")]
    if not pods:
        return None
    for p in pods:
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if p["metadata"].get("deletionTimestamp") or conds.get("Ready") != "True":
            return None
    return pods


def expected_pods(cluster: Cluster) -> int:
    # appliance + collector + operator + netmon on every real node (it tolerates every taint).
    return 3 + len(cluster.nodes)


def install(cluster: Cluster, values_file: str) -> tuple[list[dict], float]:
    step("2. install: PV, CRDs, then the chart's objects, rendered by Helm 4 and applied with kubectl")
    persistent_volume(cluster)
    objs = render(values_file, crds=True)
    crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objs if o["kind"] != "CustomResourceDefinition"]
    cluster.kubectl("apply", "-f", "-", input=objects_yaml(crds))
    for crd in crds:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
    cluster.kubectl("create", "namespace", NAMESPACE)
    started = time.monotonic()
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=objects_yaml(rest))
    kinds = sorted({o["kind"] for o in rest})
    ok(f"{len(rest)} objects applied ({', '.join(kinds)}) and {len(crds)} CRDs")

    step("3. every pod Ready through its own readiness probe")
    want = expected_pods(cluster)

    def all_ready():
        pods = pods_ready(cluster)
        return pods if pods and len(pods) == want else None
    try:
        pods = wait(f"{want} Ready pods in {NAMESPACE}", 300, all_ready)
    except RuntimeError:
        print(cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False))
        print(cluster.kubectl("-n", NAMESPACE, "describe", "pods", check=False)[-6000:])
        for p in cluster.json("-n", NAMESPACE, "get", "pods")["items"]:
            print(f"--- logs of {p['metadata']['name']}")
            print(cluster.kubectl("-n", NAMESPACE, "logs", "--all-containers", "--tail=30",
                                  p["metadata"]["name"], check=False))
        raise
    ready_seconds = time.monotonic() - started
    netmon_nodes = sorted(p["spec"]["nodeName"] for p in pods if "netmon" in p["metadata"]["name"])
    if netmon_nodes == sorted(cluster.nodes):
        ok(f"netmon runs on every real node: {', '.join(netmon_nodes)}")
    else:
        fail(f"netmon on {netmon_nodes}, nodes are {cluster.nodes}")
    ok(f"all {len(pods)} pods Ready {ready_seconds:.0f}s after apply")
    # The chart gives the agents no certificate: each one presents its ServiceAccount token to
    # the appliance's bootstrap endpoint, which checks it with a TokenReview and signs one.
    agents = {f"system:serviceaccount:{NAMESPACE}:{RELEASE}-{a}" for a in ("collector", "operator", "netmon")}

    def issued():
        log = cluster.kubectl("-n", NAMESPACE, "logs", f"{RELEASE}-appliance-0")
        got = set(re.findall(r"issued an agent certificate identity=(\S+)", log))
        return got if agents <= got else None
    got = wait("an agent certificate issued to the collector, the operator and netmon", 120, issued)
    ok(f"the appliance's bootstrap issued certificates (TokenReview) to {', '.join(sorted(got))}")
    dead = on_dead_nodes(cluster, NAMESPACE)
    if dead:
        print(f"(not counted: {len(dead)} netmon pods bound to the kubelet-less fake nodes "
              f"{', '.join(sorted(p['spec']['nodeName'] for p in dead))}, which never start)")
    return pods, ready_seconds


# ---------------------------------------------------------------------------- helpers at the pod
class Appliance:
    def __init__(self, cluster: Cluster, token: str) -> None:
        self.cluster = cluster
        self.token = token
        self.ip: str | None = None  # the pod's address, looked up once per pod

    def pod(self) -> dict:
        return self.cluster.json("-n", NAMESPACE, "get", "pod", f"{RELEASE}-appliance-0")

    def address(self) -> str:
        if self.ip is None:
            self.ip = self.pod()["status"].get("podIP")
            if not self.ip:
                raise RuntimeError("the appliance pod has no IP yet")
        return f"http://{self.ip}:8080"

    def curl(self, path: str, *args: str) -> str:
        return self.cluster.in_cp("curl", "-sS", "--fail-with-body", "--max-time", "60",
                                  *args, self.address() + path)

    def sql(self, query: str) -> list[list]:
        out = self.curl("/api/v1/sql", "-H", "Content-Type: application/json",
                        "-d", json.dumps({"sql": query}))
        return json.loads(out)["rows"]

    def scalar(self, query: str):
        return self.sql(query)[0][0]


def count_rows(app: Appliance, table: str, before_ms: int | None = None) -> int:
    where = f" WHERE time <= to_timestamp_millis({before_ms})" if before_ms is not None else ""
    return int(app.scalar(f"SELECT count(*) FROM {table}{where}"))


# ---------------------------------------------------------------------------- 4. workloads
WORKLOADS = f"""
apiVersion: v1
kind: Pod
metadata: {{name: busy, namespace: {WORK_NS}}}
spec:
  containers:
  - name: busy
    image: {{busybox}}
    command: [sh, -c, 'while :; do :; done']
    resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 200m, memory: 64Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: idle, namespace: {WORK_NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: idle}}}}
  template:
    metadata: {{labels: {{app: idle}}}}
    spec:
      containers:
      - name: idle
        image: {{busybox}}
        command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1; done']
        resources: {{requests: {{cpu: 400m, memory: 512Mi}}, limits: {{memory: 512Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: oomer, namespace: {WORK_NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: oomer}}}}
  template:
    metadata: {{labels: {{app: oomer}}}}
    spec:
      containers:
      - name: oomer
        image: {{busybox}}
        # tail keeps the last line of a stream with no newline: it grows until the kill.
        command: [sh, -c, 'sleep 5; tail /dev/zero']
        resources: {{requests: {{cpu: 10m, memory: 24Mi}}, limits: {{memory: 24Mi}}}}
"""


def workloads_and_analysis(cluster: Cluster, app: Appliance) -> None:
    step("4. the test's workloads appear in SQL; the analysis shrinks the idle one, grows the OOM-killed one")
    cluster.kubectl("create", "namespace", WORK_NS)
    cluster.kubectl("apply", "-f", "-",
                    input=WORKLOADS.replace("{busybox}", cluster.env["TALLY_IMAGE_BUSYBOX"]))

    def usage_seen():
        rows = app.sql(
            "SELECT workload_name, count(*), max(cpu_cores) FROM container_usage "
            f"WHERE namespace = '{WORK_NS}' GROUP BY workload_name ORDER BY workload_name")
        names = {r[0] for r in rows}
        # A container's first sample has no CPU rate yet (it is a difference of counters).
        busy_running = any(r[0] == "busy" and r[2] > 0.05 for r in rows)
        return rows if {"busy", "idle", "oomer"} <= names and busy_running else None
    rows = wait("usage of busy (CPU > 0.05 cores), idle and oomer in container_usage", 240,
                usage_seen, every=5)
    ok(f"container_usage per workload (name, samples, max cores): {rows}")
    busy_cpu = max(r[2] for r in rows if r[0] == "busy")
    if busy_cpu > 0.05:
        ok(f"the busy pod used {busy_cpu:.3f} cores")
    else:
        fail(f"the busy pod's CPU usage is {busy_cpu}")

    kills = wait("the OOM kill of oomer in events", 240, lambda: app.sql(
        f"SELECT reason, pod FROM events WHERE namespace = '{WORK_NS}' AND reason = 'OOMKilled'"),
        every=5)
    ok(f"OOM kills in events: {len(kills)} (pod {kills[0][1]})")

    def recommended():
        # The rollups come with each flush (10 s); a run reads them.
        app.curl("/api/v1/analysis/run", "-X", "POST")
        recs = app.sql(
            "SELECT target_name, current_cpu_request_cores, recommended_cpu_request_cores, "
            "current_memory_request_bytes, recommended_memory_request_bytes, why "
            "FROM recommendations WHERE kind = 'rightsizing' AND namespace = '" + WORK_NS + "' "
            "AND run_id = (SELECT max(run_id) FROM recommendations WHERE kind = 'rightsizing') "
            "ORDER BY target_name")
        by_name = {r[0]: r for r in recs}
        idle, oomer = by_name.get("idle"), by_name.get("oomer")
        if not idle or not oomer:
            return None
        if idle[2] < idle[1] and oomer[4] > oomer[3]:
            return by_name
        return None
    try:
        recs = wait("a rightsizing run with both recommendations", 300, recommended, every=10)
        idle, oomer = recs["idle"], recs["oomer"]
        ok(f"idle: CPU request {idle[1]} -> {idle[2]} cores, memory {idle[3] >> 20} -> {idle[4] >> 20} MiB ({idle[5]})")
        ok(f"oomer: memory request {oomer[3] >> 20} -> {oomer[4] >> 20} MiB ({oomer[5]})")
    except RuntimeError as err:
        print(app.sql("SELECT kind, namespace, target_name, current_cpu_request_cores, "
                      "recommended_cpu_request_cores, current_memory_request_bytes, "
                      f"recommended_memory_request_bytes, why FROM recommendations WHERE namespace = '{WORK_NS}'"))
        fail(str(err))


# ---------------------------------------------------------------------------- 5. UI, SQL, export
def ui_sql_export(cluster: Cluster, app: Appliance, work: str) -> None:
    step("5. the UI and the SQL API at the appliance pod's address; a Parquet export read by DuckDB")
    # Sign in as a browser does (the form's CSRF token is double-submitted: cookie and field)
    # with a Kubernetes token (the admin user's): the appliance checks it with a TokenReview
    # and SubjectAccessReviews against the API server, from inside the cluster.
    cookies = os.path.join(work, "cookies")
    page = app.curl("/sign-in", "-c", cookies)
    csrf = re.search(r'name="csrf"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf"', page)
    if "<html" in page.lower() and "bearer token" in page.lower() and csrf:
        ok(f"GET {app.address()}/sign-in: the UI's sign-in page ({len(page)} bytes)")
    else:
        fail(f"the sign-in page looks wrong: {page[:300]}")
        return
    app.cluster.in_cp("curl", "-sS", "--max-time", "60", "-b", cookies, "-c", cookies, "-o", "/dev/null",
                      "--data-urlencode", f"csrf={csrf.group(1) or csrf.group(2)}",
                      "--data-urlencode", f"token={app.token}", app.address() + "/sign-in")
    overview = app.curl("/", "-b", cookies)
    if "Overview" in overview or "overview" in overview:
        ok("signed in with a Kubernetes token; the overview page renders")
    else:
        fail(f"the overview after sign-in: {overview[:300]}")

    cutoff = int(app.scalar("SELECT CAST(to_unixtime(max(time)) * 1000 AS BIGINT) FROM container_usage"))
    sql = f"SELECT * FROM container_usage WHERE time <= to_timestamp_millis({cutoff})"
    count = int(app.scalar(f"SELECT count(*) FROM ({sql})"))
    parquet = os.path.join(work, "export.parquet")
    app.cluster.in_cp("curl", "-sS", "--fail-with-body", "--max-time", "120", "-o", parquet,
                      "-H", "Content-Type: application/json",
                      "-d", json.dumps({"sql": sql, "format": "parquet"}),
                      app.address() + "/api/v1/export")
    import duckdb  # the venv's; imported here so --help works without it
    got = duckdb.sql(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchone()[0]
    if got == count and count > 0:
        ok(f"export of container_usage up to the cutoff: {count} rows in SQL, {got} in DuckDB")
    else:
        fail(f"export: {count} rows in SQL, {got} read by DuckDB")


# ---------------------------------------------------------------------------- 6. pod deleted
TABLES = ("container_usage", "node_usage", "pods", "events", "network_flows")


def appliance_restart(cluster: Cluster, app: Appliance) -> None:
    step("6. the appliance pod deleted: back on the same volume, nothing acknowledged lost, agents reconnect")
    before_uid = app.pod()["metadata"]["uid"]
    cutoff = int(time.time() * 1000)
    time.sleep(2)
    counts = {t: count_rows(app, t, cutoff) for t in TABLES}
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", f"{RELEASE}-appliance-0", "--wait=true", timeout=180)

    def back():
        pod = app.pod()
        conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        return pod if pod["metadata"]["uid"] != before_uid and conds.get("Ready") == "True" else None
    pod = wait("a new, Ready appliance pod", 300, back)
    app.ip = None  # the new pod has an address of its own
    claim = [v for v in pod["spec"]["volumes"] if v["name"] == "data"][0]["persistentVolumeClaim"]["claimName"]
    pvc = cluster.json("-n", NAMESPACE, "get", "pvc", claim)
    if pvc["spec"]["volumeName"] == PV_NAME:
        ok(f"the new pod {pod['metadata']['uid'][:8]} mounts claim {claim} on the same volume {PV_NAME}")
    else:
        fail(f"claim {claim} is bound to {pvc['spec']['volumeName']}")
    after = {t: count_rows(app, t, cutoff) for t in TABLES}
    lost = {t: (counts[t], after[t]) for t in TABLES if after[t] < counts[t]}
    if lost:
        fail(f"rows up to the cutoff lost over the restart (before, after): {lost}")
    else:
        ok(f"rows up to the cutoff before and after: {counts} == {after}")
    restarted_ms = int(time.time() * 1000)

    def fresh():
        since = f"WHERE time > to_timestamp_millis({restarted_ms})"
        usage = int(app.scalar(f"SELECT count(*) FROM container_usage {since}"))
        flows = int(app.scalar(f"SELECT count(*) FROM network_flows {since}"))
        return (usage, flows) if usage > 0 and flows > 0 else None
    got = wait("new container_usage and network_flows rows after the restart", 240, fresh, every=5)
    ok(f"the collector and netmon reconnected: {got[0]} usage rows and {got[1]} flows since")


# ---------------------------------------------------------------------------- 7. upgrade
def upgrade(cluster: Cluster, values_file: str, old: list[dict]) -> None:
    step("8. an upgrade with changed values rolls out (and prunes what the new render drops)")
    new_values = values({"collector": {"scrapeInterval": "20s"}, "operator": {"enabled": False}})
    write_values(values_file, new_values)
    new = [o for o in render(values_file, crds=False)]
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    gone = [o for o in old if key(o) not in {key(n) for n in new}]
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=objects_yaml(new))
    for o in gone:
        ns = ["-n", NAMESPACE] if o["metadata"].get("namespace") else []
        cluster.kubectl(*ns, "delete", o["kind"], o["metadata"]["name"], "--ignore-not-found", "--wait=true")
    collector = f"{RELEASE}-collector"
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{collector}", "--timeout=180s", timeout=200)
    args = cluster.json("-n", NAMESPACE, "get", "deployment", collector)["spec"]["template"]["spec"]["containers"][0]["args"]
    pods = cluster.json("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=collector")["items"]
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if any("20s" in a for a in args) and running and all(
            any("20s" in a for a in p["spec"]["containers"][0]["args"]) for p in running):
        ok(f"the collector rolled out with the new scrape interval ({[a for a in args if '20s' in a][0]})")
    else:
        fail(f"collector args after upgrade: {args}")
    left = cluster.kubectl("-n", NAMESPACE, "get", "deployment", f"{RELEASE}-operator", "--ignore-not-found")
    if left.strip():
        fail("operator.enabled=false left the operator Deployment")
    else:
        ok(f"operator.enabled=false: {len(gone)} objects of the operator pruned ({', '.join(sorted({o['kind'] for o in gone}))})")
    wait("every pod Ready after the upgrade", 240,
         lambda: (p := pods_ready(cluster)) and len(p) == expected_pods(cluster) - 1)
    ok("every remaining pod Ready after the upgrade")
    return new


# ---------------------------------------------------------------------------- 8. no egress
def tally_sources(cluster: Cluster) -> set[str]:
    pods = cluster.json("-n", NAMESPACE, "get", "pods")["items"]
    return {p["status"]["podIP"] for p in pods if p["status"].get("podIP")}


def conntrack_destinations(cluster: Cluster, sources: set[str]) -> dict[str, set[str]]:
    """Every destination the nodes' (and the control plane's) conntrack tables hold for a
    connection whose original source is one of `sources`."""
    found: dict[str, set[str]] = {}
    for ns in cluster.env["TALLY_NODE_NETNS"].split() + [cluster.cp_netns]:
        out = run("ip", "netns", "exec", ns, "conntrack", "-L", check=False)
        for line in out.splitlines():
            src = re.search(r"\bsrc=(\S+)", line)
            dst = re.search(r"\bdst=(\S+)", line)
            if src and dst and src.group(1) in sources:
                found.setdefault(src.group(1), set()).add(dst.group(1))
    return found


def outside(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return not any(ip in net for net in OUR_NETWORKS)


def no_egress(cluster: Cluster, app: Appliance, samples: list[dict[str, set[str]]]) -> None:
    step("7. air-gapped for real: no connection of Tally's pods leaves the test's networks")
    sources = tally_sources(cluster)
    samples.append(conntrack_destinations(cluster, sources))
    seen: dict[str, set[str]] = {}
    for s in samples:
        for src, dsts in s.items():
            seen.setdefault(src, set()).update(dsts)
    out = {src: sorted(d for d in dsts if outside(d)) for src, dsts in seen.items()}
    out = {k: v for k, v in out.items() if v}
    if not seen:
        fail("the conntrack tables showed no connection of Tally's pods at all (the check would prove nothing)")
    elif out:
        fail(f"connections outside the test's networks: {out}")
    else:
        ok(f"conntrack, sampled {len(samples)} times: {sum(len(d) for d in seen.values())} destinations of "
           f"{len(seen)} Tally addresses, all inside {', '.join(map(str, OUR_NETWORKS))}")
    flows = app.sql(
        "SELECT DISTINCT src_ip, dst_ip, dst_port FROM network_flows "
        f"WHERE src_namespace = '{NAMESPACE}'")
    leaving = [f for f in flows if outside(f[1])]
    if leaving:
        fail(f"netmon saw flows of Tally's pods leaving the test's networks: {leaving}")
    elif flows:
        ok(f"netmon's own flows of Tally's pods: {len(flows)} (source, destination, port), none outside")
    else:
        fail("netmon recorded no flow of Tally's pods (the check would prove nothing)")


# ---------------------------------------------------------------------------- 9. uninstall
def uninstall(cluster: Cluster, objs: list[dict]) -> None:
    step("9. uninstall: what helm uninstall deletes goes; the data volume and the CA stay")
    for o in reversed(objs):
        ns = ["-n", NAMESPACE] if o["metadata"].get("namespace") else []
        cluster.kubectl(*ns, "delete", o["kind"], o["metadata"]["name"], "--ignore-not-found", "--wait=false")
    force_delete_dead(cluster, NAMESPACE)
    wait("no pod of the release left", 180,
         lambda: not cluster.json("-n", NAMESPACE, "get", "pods")["items"])
    # Every object the chart rendered, namespaced or cluster-scoped (RBAC included), is gone.
    left = cluster.kubectl("-n", NAMESPACE, "get", "all", "-o", "name").split()
    for o in objs:
        ns = ["-n", NAMESPACE] if o["metadata"].get("namespace") else []
        left += cluster.kubectl(*ns, "get", o["kind"], o["metadata"]["name"], "--ignore-not-found",
                                "-o", "name").split()
    pvcs = cluster.kubectl("-n", NAMESPACE, "get", "pvc", "-o", "name").split()
    ca = cluster.kubectl("-n", NAMESPACE, "get", "secret,configmap", f"{RELEASE}-ca", "-o", "name",
                         "--ignore-not-found").split()
    if left:
        fail(f"left after uninstall: {left}")
    elif pvcs == [f"persistentvolumeclaim/data-{RELEASE}-appliance-0"] and len(ca) == 2:
        ok(f"none of the {len(objs)} objects of the release is left, only the data claim {pvcs[0]} "
           f"and the CA {ca}, as helm/README.md says")
    else:
        fail(f"after uninstall: claims {pvcs}, CA objects {ca}")


def rss_of_appliance(cluster: Cluster) -> tuple[int, int] | None:
    """Resident memory now and at its peak (kB) of the appliance's `tally serve` process,
    read from /proc (the containers' processes are the host's)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if cmd[0].endswith(b"/tally") and b"serve" in cmd and any(b"--ca-secret=" + NAMESPACE.encode() in c for c in cmd):
                status = open(f"/proc/{pid}/status").read()
                return (int(re.search(r"VmRSS:\s+(\d+)", status).group(1)),
                        int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))
        except (OSError, IndexError, AttributeError):
            continue
    return None


def cleanup(cluster: Cluster) -> None:
    step("cleanup: the namespaces, the data claim, the PV and its directory, the image")
    for ns in (NAMESPACE, WORK_NS):
        if not cluster.kubectl("get", "namespace", ns, "--ignore-not-found", check=False).strip():
            continue
        # The operator first, so that nothing puts finalizers back.
        cluster.kubectl("-n", ns, "delete", "deployment,statefulset,daemonset", "--all",
                        "--wait=true", check=False, timeout=180)
        force_delete_dead(cluster, ns)
        # Recommendations the operator applied keep its rollback finalizer; with the operator
        # uninstalled nobody removes it (helm/README.md, Uninstall): the test does, by hand.
        recs = cluster.kubectl("-n", ns, "get", "workloadrecommendations.tally.dev", "-o", "name",
                               check=False).split()
        for rec in recs:
            cluster.kubectl("-n", ns, "patch", rec, "--type=merge", "-p",
                            '{"metadata":{"finalizers":[]}}', check=False)
    try:
        cluster.kubectl("delete", "namespace", NAMESPACE, WORK_NS, "--ignore-not-found",
                        "--wait=true", check=False, timeout=240)
    except subprocess.TimeoutExpired:
        print(cluster.kubectl("get", "namespace", NAMESPACE, WORK_NS, "-o", "yaml", check=False))
        raise RuntimeError(f"namespaces {NAMESPACE}, {WORK_NS} were not deleted within 240 s")
    cluster.kubectl("delete", "pv", PV_NAME, "--ignore-not-found", check=False)
    for o in ("clusterrole", "clusterrolebinding", "mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        names = cluster.kubectl("get", o, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
                                check=False).split()
        names = [n for n in names if NAMESPACE in cluster.kubectl("get", n, "-o", "json", check=False)]
        if names:
            cluster.kubectl("delete", *names, "--ignore-not-found", check=False)
    shutil.rmtree(os.path.join(cluster.dir, "airgap-pv"), ignore_errors=True)


def write_results(path: str, figures: dict, failures: list[str]) -> None:
    """The install figures as the `install` section of a RESULTS.md-style file: replaced in
    place between its markers when the file has them, else written alone."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_gib = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) / 2**20
    commit = run("git", "-C", REPO, "rev-parse", "--short", "HEAD", check=False).strip() or "?"
    rss = figures.get("rss_kb") or (0, 0)
    section = f"""<!-- bench:install -->
## In-cluster install (issue 12)

`python3 tests/install/airgap.py --results benchmarks/RESULTS.md` (tests/run.sh runs it too), on
the real test cluster of tests/cluster (Kubernetes 1.20.2, {figures.get('nodes', '?')} kubelet nodes on this
one machine), commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} cores
({cpu}), {mem_gib:.0f} GiB. Release binaries, debug info stripped, in an image assembled
without a registry or Docker ({figures.get('image_mib', 0):.0f} MiB archive), the chart rendered by Helm 4 and
applied with kubectl. {'All checks passed.' if not failures else f'{len(failures)} checks FAILED.'}

| measure | value |
|---|---|
| install to every pod Ready (appliance, collector, operator, netmon on each node) | {figures['ready_s']:.0f} s |
| appliance RSS after ~1 min of the test's workloads (now / peak) | {rss[0] / 1024:.0f} MiB / {rss[1] / 1024:.0f} MiB |
| the whole script up to the uninstall (image, install, checks, restart, upgrade, uninstall) | {figures.get('total_s', 0):.0f} s |

Peers: none measured side by side. Not broken down: how much of the install time is the
kubelets starting pods and the readiness probes' 10 s periods rather than Tally starting.
<!-- /bench:install -->"""
    text = open(path).read() if os.path.exists(path) else ""
    marked = re.compile(r"<!-- bench:install -->.*?<!-- /bench:install -->", re.S)
    text = marked.sub(lambda _: section, text) if marked.search(text) else section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release-dir", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tally/target")), "release"),
        help="where the release tally and tally-agent are (default: $CARGO_TARGET_DIR/release)")
    ap.add_argument("--results", help="write the install figures as a markdown section to this file")
    ap.add_argument("--keep", action="store_true", help="leave everything installed")
    args = ap.parse_args()

    cluster = Cluster()
    work = tempfile.mkdtemp(prefix="tally-airgap-")
    values_file = os.path.join(work, "values.json")
    write_values(values_file, values())
    figures = {}
    try:
        cleanup(cluster)  # a previous run killed half-way
        image = build_and_import_image(cluster, values_file, args.release_dir, work)
        figures["image"] = image
        figures["image_mib"] = os.path.getsize(os.path.join(work, "tally-image.tar")) / 2**20
        figures["nodes"] = len(cluster.nodes)
        pods, figures["ready_s"] = install(cluster, values_file)
        objs = render(values_file, crds=False)
        app = Appliance(cluster, cluster.env["TALLY_ADMIN_TOKEN"])
        samples = [conntrack_destinations(cluster, tally_sources(cluster))]
        workloads_and_analysis(cluster, app)
        samples.append(conntrack_destinations(cluster, tally_sources(cluster)))
        figures["rss_kb"] = rss_of_appliance(cluster)
        ui_sql_export(cluster, app, work)
        appliance_restart(cluster, app)
        samples.append(conntrack_destinations(cluster, tally_sources(cluster)))
        no_egress(cluster, app, samples)
        objs = upgrade(cluster, values_file, objs)
        uninstall(cluster, objs)
        figures["total_s"] = time.monotonic() - STARTED
    except Exception as err:  # noqa: BLE001 - reported as a failed check, then cleaned up
        fail(f"{type(err).__name__}: {err}")
    finally:
        if not args.keep:
            cleanup(cluster)
        shutil.rmtree(work, ignore_errors=True)
    if args.results and "ready_s" in figures:
        write_results(args.results, figures, FAILURES)
    print(f"\nairgap: {'all checks passed' if not FAILURES else f'{len(FAILURES)} failed'} "
          f"in {time.monotonic() - STARTED:.0f}s", flush=True)
    for f in FAILURES:
        print(f"  FAILED: {f}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
