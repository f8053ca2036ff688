//! The node network agent against the real Kubernetes cluster: the real `tally-agent netmon`
//! binary for one real node (its pod watcher authenticated as a ServiceAccount with only the
//! chart's pod rights), reading that node's conntrack table in the node's network namespace
//! (`--netns`), writing to the real `tally` binary. Real pods on both nodes send real HTTP
//! traffic to each other across the nodes' routed pod network.
//!
//! What it shows: the flows the agent reports are the ones opened by pods scheduled on its
//! node, named with their namespace and pod (so the watcher's index holds them); the flows
//! opened by a pod on the other node pass through the same conntrack table but are never
//! reported (that pod is not in the index).
//!
//! The test cluster has no kube-proxy, so nothing in a node's namespace uses conntrack and
//! the kernel does not track there (it tracks a namespace only once a rule needs it). The
//! test adds one nftables `ct` rule in the node's namespace, as kube-proxy's rules would on
//! a real node, and deletes it at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_e2e::Server;
use tally_e2e::cluster::{Cluster, TestNamespace, cluster, tally_agent_bin};

/// The node network namespaces of the test cluster, by node name (from its env file).
fn node_netns(cluster: &Cluster) -> HashMap<String, String> {
    let dir = std::env::var("TALLY_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/tally-cluster".into());
    let env_file = Path::new(&dir).join("env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. netmon's test reads a node's conntrack table inside the node's network \
             namespace, so it needs the test cluster of tests/cluster/up.sh",
            env_file.display()
        )
    });
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("{} lacks {key}", env_file.display()))
    };
    let nodes: Vec<String> = get("TALLY_NODES")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let netns: Vec<String> = get("TALLY_NODE_NETNS")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(nodes, cluster.real_nodes);
    assert_eq!(nodes.len(), netns.len(), "one namespace per node");
    nodes.into_iter().zip(netns).collect()
}

fn sh(command: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "`{command}` failed (needs root, nftables, conntrack-tools): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An nftables table with a `ct` rule in a node's namespace (so the kernel tracks its
/// connections, as kube-proxy's rules make it do on a real node), deleted when dropped.
struct TrackingRule {
    netns: String,
    table: String,
}

impl TrackingRule {
    fn add(netns: &str, table: &str) -> TrackingRule {
        sh(&format!(
            "printf 'table inet {table} {{\n chain tracked {{\n type filter hook forward priority 0; policy accept;\n \
             ct state new,established accept\n }}\n}}\n' | ip netns exec {netns} nft -f -"
        ));
        TrackingRule {
            netns: netns.to_string(),
            table: table.to_string(),
        }
    }
}

impl Drop for TrackingRule {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "nft",
                "delete",
                "table",
                "inet",
            ])
            .arg(&self.table)
            .status();
    }
}

/// A `tally-agent netmon` process, killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A busybox pod pinned to `node` running `script`.
fn pod(name: &str, ns: &str, node: &str, image: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", {script:?}]
"#
    )
}

/// A pod's IP once it runs.
fn running_ip(cluster: &Cluster, ns: &str, name: &str) -> String {
    cluster.wait(
        &format!("pod {ns}/{name} running with an IP"),
        Duration::from_secs(120),
        || {
            let out = cluster.kubectl(&[
                "-n",
                ns,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ])?;
            match out.split_whitespace().collect::<Vec<_>>()[..] {
                ["Running", ip] => Ok(ip.to_string()),
                _ => Err(format!("now: `{out}`")),
            }
        },
    )
}

/// A web server answering 10 kB, and a client fetching from `server` every second.
const SERVE: &str = "mkdir -p /www && head -c 10000 /dev/zero > /www/index.html && \
                     exec httpd -f -p 8080 -h /www";

fn fetch_forever(server: &str) -> String {
    format!("while :; do wget -q -O /dev/null http://{server}:8080/index.html; sleep 1; done")
}

async fn rows(server: &Server, sql: &str) -> Vec<Vec<Value>> {
    tally_e2e::sql_rows(&server.http_url, sql).await
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("<null>").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn netmon_reports_the_flows_of_its_own_nodes_pods_only() {
    let cluster = cluster();
    let netns = node_netns(&cluster);
    assert!(
        cluster.real_nodes.len() >= 2,
        "the test needs two real nodes, the cluster has {:?}",
        cluster.real_nodes
    );
    let (here, there) = (cluster.real_nodes[0].clone(), cluster.real_nodes[1].clone());
    let here_netns = netns[&here].clone();
    let mut ns = TestNamespace::create(&cluster, "netmon");
    let n = ns.name.clone();
    let image = cluster.busybox_image.clone();

    // The agent's rights exactly as the repository keeps them (agents/netmon/rbac.yaml, which
    // the chart uses): list and watch pods, nothing else.
    ns.agent_account(
        include_str!("../../agents/netmon/rbac.yaml"),
        "tally-netmon",
        "netmon",
    );
    let dir = tempfile::tempdir().unwrap();
    let token = cluster.service_account_token(&n, "netmon");
    let kubeconfig = cluster.kubeconfig_for_token(dir.path(), "netmon", &token);

    // Servers on both nodes first (the clients need their addresses).
    cluster.apply(&pod("server-here", &n, &here, &image, SERVE));
    cluster.apply(&pod("server-there", &n, &there, &image, SERVE));
    let server_here = running_ip(&cluster, &n, "server-here");
    let server_there = running_ip(&cluster, &n, "server-there");

    // The kernel tracks the node's connections from here on; the agent turns accounting on
    // when it starts, before the clients' first connection.
    let suffix = &n[n.len() - 6..];
    let _tracking = TrackingRule::add(&here_netns, &format!("tally_e2e_netmon_{suffix}"));
    let server = Server::start(
        &dir.path().join("data"),
        &["--insecure", "--flush-interval", "1s"],
    )
    .unwrap();
    let log = dir.path().join("netmon.log");
    let mut agent = Agent {
        child: Command::new(tally_agent_bin())
            .arg("netmon")
            .args(["--node", &here])
            .args(["--appliance", &server.flight_url, "--insecure"])
            .arg("--netns")
            .arg(Path::new("/var/run/netns").join(&here_netns))
            .args([
                "--no-dns",
                "--poll-interval",
                "1s",
                "--flush-interval",
                "2s",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tally_agent_bin().display())),
        log,
    };
    // Let the agent start: list the pods, turn accounting on, take its baseline poll.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(status) = agent.child.try_wait().unwrap() {
        panic!("netmon exited ({status}):\n{}", agent.log());
    }

    // A client on each node, each fetching from the server on the other node: both
    // connections cross this node's conntrack table.
    cluster.apply(&pod(
        "client-here",
        &n,
        &here,
        &image,
        &fetch_forever(&server_there),
    ));
    cluster.apply(&pod(
        "client-there",
        &n,
        &there,
        &image,
        &fetch_forever(&server_here),
    ));
    let client_here = running_ip(&cluster, &n, "client-here");
    let client_there = running_ip(&cluster, &n, "client-there");

    // The other node's client really passes through this node's table (so leaving it out
    // is the agent's doing), with byte counters.
    let seen_in_table = cluster.wait(
        "client-there's connections in this node's conntrack table",
        Duration::from_secs(60),
        || {
            let table = sh(&format!(
                "ip netns exec {here_netns} conntrack -L -p tcp --orig-src {client_there} 2>/dev/null"
            ));
            if table.contains(&format!("dst={server_here}")) && table.contains("bytes=") {
                Ok(Instant::now())
            } else {
                Err(format!("table: {table}"))
            }
        },
    );

    // Wait for client-here's traffic in windows flushed after that moment.
    let flows_sql = format!(
        "SELECT src_ip, dst_ip, dst_port, protocol, src_namespace, src_pod, \
         sum(tx_bytes), sum(rx_bytes), sum(tx_packets), sum(rx_packets), count(*) \
         FROM network_flows WHERE node = '{here}' \
         GROUP BY src_ip, dst_ip, dst_port, protocol, src_namespace, src_pod ORDER BY src_ip"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let all = loop {
        let all = rows(&server, &flows_sql).await;
        let windows_of_client_here = all
            .iter()
            .find(|r| text(&r[0]) == client_here)
            .and_then(|r| r[10].as_i64())
            .unwrap_or(0);
        // Three windows of 2 s after the other client was seen in the table: its
        // connections were polled (every second) several times by then.
        if windows_of_client_here >= 3 && seen_in_table.elapsed() > Duration::from_secs(6) {
            break all;
        }
        if Instant::now() > deadline {
            panic!(
                "no network_flows from client-here ({client_here}) after 90 s: {all:?}\nnetmon log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    eprintln!("network_flows of {here}: {all:?}");
    // client-here's flow to the other node's server, named by the watcher's index.
    let mine: Vec<_> = all.iter().filter(|r| text(&r[0]) == client_here).collect();
    assert_eq!(mine.len(), 1, "one flow of client-here: {all:?}");
    let row = mine[0];
    assert_eq!(text(&row[1]), server_there, "{row:?}");
    assert_eq!(row[2].as_i64(), Some(8080), "{row:?}");
    assert_eq!(text(&row[3]), "tcp", "{row:?}");
    assert_eq!(text(&row[4]), n, "src_namespace: {row:?}");
    assert_eq!(text(&row[5]), "client-here", "src_pod: {row:?}");
    let (tx, rx) = (row[6].as_i64().unwrap(), row[7].as_i64().unwrap());
    // Each fetch answers 10,000 bytes of body: the reply direction carries more than the
    // requests.
    assert!(
        rx > 10_000 && rx > tx && tx > 0,
        "tx {tx}, rx {rx}: {row:?}"
    );

    // Every reported flow comes from a named pod of this node (other tests' pods may run
    // here too); the other node's client (and its server) never appear, though the
    // client's connections crossed this table.
    for row in &all {
        let src = text(&row[0]);
        assert!(
            src != client_there && src != server_there,
            "a pod of {there} reported by the agent of {here}: {row:?}"
        );
        assert!(
            row[4].is_string() && row[5].is_string(),
            "a flow without its pod: {row:?}"
        );
        if text(&row[4]) == n {
            assert!(
                ["client-here", "server-here"].contains(&text(&row[5]).as_str()),
                "{row:?}"
            );
        }
    }
    assert!(
        all.iter().all(|r| text(&r[1]) != client_here),
        "no row sees client-here as a destination: {all:?}"
    );

    drop(agent);
    drop(server);
}
