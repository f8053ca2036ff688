//! Every agent reaches the appliance the same way (`tally_wire::agent::ApplianceArgs` and the
//! renewal in `tally_wire::link`). The collector's and the operator's own tests cover them;
//! here netmon, a DaemonSet pod in the chart, gets its client certificate from the real
//! `tally` binary's bootstrap endpoint with its ServiceAccount token (checked with a real
//! TokenReview), renews it before it expires and writes the flows it counted in a network
//! namespace of its own over mutual TLS. A ServiceAccount the appliance does not allow gets
//! no certificate and writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_e2e::Server;
use tally_e2e::cluster::{TestNamespace, cluster, free_address, start_tally_at, tally_agent_bin};

fn sh(command: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    assert!(
        out.status.success(),
        "`{command}` failed (needs root, iproute2 and nftables): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace whose loopback traffic conntrack counts; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        let netns = Netns(name);
        // Accounting on before the traffic starts; a `ct` rule makes the namespace track.
        sh(&format!(
            "ip netns exec {0} sysctl -qw net.netfilter.nf_conntrack_acct=1 && \
             printf 'table inet tally {{\n chain out {{\n type filter hook output priority 0; policy accept;\n \
             ct state new,established accept\n }}\n}}\n' | ip netns exec {0} nft -f -",
            netns.0
        ));
        netns
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rows of `network_flows` written for `node`, and the latest window's end (ms).
async fn flows_of(appliance: &Server, node: &str) -> (i64, i64) {
    let answer = tally_e2e::sql(
        &appliance.http_url,
        &format!(
            "SELECT count(*), max(CAST(time AS BIGINT)) FROM network_flows WHERE node = '{node}'"
        ),
    )
    .await
    .expect("network_flows query");
    let row = &answer["rows"][0];
    (row[0].as_i64().unwrap_or(0), row[1].as_i64().unwrap_or(0))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn netmon_bootstraps_its_certificate_with_its_service_account_token_and_renews_it() {
    let cluster = cluster();
    let mut ns = TestNamespace::create(&cluster, "agents");
    let n = ns.name.clone();
    ns.service_accounts(&["netmon", "stranger"]);
    ns.appliance_account();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let netmon_token = ns.token_file(dir.path(), "netmon");
    let stranger_token = ns.token_file(dir.path(), "stranger");
    let appliance_token = ns.token_file(dir.path(), "appliance");
    let api_ca = file("api-ca.crt", &cluster.ca_pem);

    // The appliance: mutual TLS only (no --insecure), certificates for netmon's account only,
    // valid 8 s from their arrival, so netmon must renew within the test.
    let (flight, http, bootstrap) = (free_address(), free_address(), free_address());
    let data = dir.path().join("data");
    let allow = format!("{n}:netmon");
    let appliance = start_tally_at(
        &data,
        &flight,
        &http,
        &[
            "--bootstrap-listen",
            &bootstrap,
            "--bootstrap-allow",
            &allow,
            "--kube-api-server",
            &cluster.api_server,
            "--kube-ca",
            &api_ca.display().to_string(),
            "--kube-token-file",
            &appliance_token.display().to_string(),
            "--server-name",
            "127.0.0.1",
            "--flush-interval",
            "1s",
            "--agent-cert-ttl",
            "8s",
        ],
    )
    .unwrap();
    let ca = data.join("pki/ca.pem");
    assert!(ca.exists(), "the appliance created its CA");

    // Traffic in a namespace of the test's own, counted by two netmon processes that differ
    // only in the token they present.
    let netns = Netns::new(format!("tally-agents-{}", std::process::id()));
    let netmon = |token: &Path, node: &str, log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        Killed(
            Command::new(tally_agent_bin())
                .arg("netmon")
                .args(["--appliance", &format!("https://{flight}")])
                .args(["--bootstrap-url", &format!("https://{bootstrap}")])
                .arg("--appliance-ca")
                .arg(&ca)
                .arg("--token-file")
                .arg(token)
                .args(["--node", node, "--no-kubernetes", "--no-dns"])
                .arg("--netns")
                .arg(netns.path())
                .args(["--poll-interval", "200ms", "--flush-interval", "1s"])
                .env_remove("TALLY_APPLIANCE_URL")
                .env_remove("TALLY_BOOTSTRAP_URL")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start tally-agent netmon"),
        )
    };
    let node = format!("{n}-node");
    let stranger_node = format!("{n}-stranger");
    let started_ms = now_ms();
    let mut agent = netmon(&netmon_token, &node, "netmon.log");
    let mut stranger = netmon(&stranger_token, &stranger_node, "stranger.log");
    let traffic = Killed(
        Command::new("ip")
            .args(["netns", "exec", &netns.0, "python3", "-c"])
            .arg(
                "import socket, time\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 while True:\n    s.sendto(b'x' * 100, ('127.0.0.1', 9))\n    time.sleep(0.05)\n",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 in the namespace"),
    );

    // Flows arrive, and keep arriving after the first certificate expired (8 s): the renewed
    // one is in use.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (rows, latest) = loop {
        let (rows, latest) = flows_of(&appliance, &node).await;
        if latest > started_ms + 14_000 {
            break (rows, latest);
        }
        for child in [&mut agent.0, &mut stranger.0] {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "netmon exited ({status}):\n{}\n{}",
                    std::fs::read_to_string(dir.path().join("netmon.log")).unwrap_or_default(),
                    std::fs::read_to_string(dir.path().join("stranger.log")).unwrap_or_default()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "no flows of {node} 14 s after the start ({rows} rows, latest {latest}):\n{}",
            std::fs::read_to_string(dir.path().join("netmon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(traffic);
    eprintln!(
        "{rows} flow rows, the latest window ending {} ms after the start",
        latest - started_ms
    );

    let log = std::fs::read_to_string(dir.path().join("netmon.log")).unwrap();
    let identity = format!("system:serviceaccount:{n}:netmon");
    let received = log
        .lines()
        .filter(|l| l.contains("received a client certificate") && l.contains(&identity))
        .count();
    assert!(
        received >= 2,
        "a first certificate and at least one renewal for {identity}:\n{log}"
    );
    // Renewed at two thirds of 8 s from each arrival, not at every flush (1 s).
    let elapsed_ms = now_ms() - started_ms;
    let most = (elapsed_ms / 5_333 + 2) as usize;
    assert!(
        received <= most,
        "{received} certificates in {elapsed_ms} ms (at most {most}):\n{log}"
    );

    // The stranger's token is refused at the bootstrap: no certificate, no rows.
    let (stranger_rows, _) = flows_of(&appliance, &stranger_node).await;
    assert_eq!(stranger_rows, 0, "rows from an account that is not allowed");
    let stranger_log = std::fs::read_to_string(dir.path().join("stranger.log")).unwrap();
    assert!(
        stranger_log.contains("may not get an agent certificate"),
        "the refusal is logged with its reason:\n{stranger_log}"
    );
    assert!(
        !stranger_log.contains("received a client certificate"),
        "{stranger_log}"
    );
}
