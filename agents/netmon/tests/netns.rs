//! The agent against real kernel parts: network namespaces joined by a veth pair (addresses
//! only inside them), conntrack with accounting and an nftables `ct` rule in the client
//! namespace, real TCP and UDP traffic over IPv4 and IPv6, eBPF programs attached to a cgroup
//! the test creates, and a small DNS server answering a crafted response.
//!
//! These need root, `ip`, `nft`, `conntrack` and `python3` (tests/run.sh installs them) and
//! fail, never skip, without them. Every namespace and cgroup is removed on drop, also when a
//! test fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use tally_netmon::flows::{FlowTable, Limits};
use tally_netmon::{Mode, NetmonArgs, Sink, ct};
use tally_wire::Table;
use tally_wire::agent::ApplianceArgs;

fn sh(command: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    assert!(
        out.status.success(),
        "`{command}` failed (these tests need root, iproute2, nftables and conntrack-tools): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two network namespaces joined by a veth pair: the client side `a` (10.77.0.1, fd77::1)
/// with conntrack accounting and a `ct` rule, the server side `b` (10.77.0.2, fd77::2).
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id();
        let lab = Lab {
            a: format!("tnm-{tag}-{id}-a"),
            b: format!("tnm-{tag}-{id}-b"),
        };
        // Leftovers of a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &lab.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &lab.b]).output();
        let (a, b) = (&lab.a, &lab.b);
        sh(&format!("ip netns add {a} && ip netns add {b}"));
        sh(&format!(
            "ip link add veth-a netns {a} type veth peer name veth-b netns {b}"
        ));
        for (ns, dev, v4, v6) in [
            (a, "veth-a", "10.77.0.1/24", "fd77::1/64"),
            (b, "veth-b", "10.77.0.2/24", "fd77::2/64"),
        ] {
            sh(&format!(
                "ip -n {ns} addr add {v4} dev {dev} && ip -n {ns} addr add {v6} dev {dev} nodad \
                 && ip -n {ns} link set lo up && ip -n {ns} link set {dev} up"
            ));
        }
        // Accounting must be on before a flow starts; a `ct` rule makes the namespace track.
        // Timestamps too, as the agent turns them on: a new entry that reuses a deleted one's
        // id is told apart by its start time.
        sh(&format!(
            "ip netns exec {a} sysctl -qw net.netfilter.nf_conntrack_acct=1 && \
             ip netns exec {a} sysctl -qw net.netfilter.nf_conntrack_timestamp=1 && \
             printf 'table inet tally {{\n chain out {{\n type filter hook output priority 0; policy accept;\n \
             ct state new,established accept\n }}\n chain in {{\n type filter hook input priority 0; policy accept;\n \
             ct state new,established accept\n }}\n}}\n' \
             | ip netns exec {a} nft -f -"
        ));
        lab
    }

    fn path(name: &str) -> PathBuf {
        Path::new("/var/run/netns").join(name)
    }

    /// Runs `f` on a thread inside namespace `name`.
    fn run_in<T: Send + 'static>(
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = Lab::path(name);
        std::thread::spawn(move || {
            ct::enter_netns(&path).unwrap();
            f()
        })
    }

    /// `conntrack -L` of the client namespace, summed per flow as the agent keys it:
    /// (source, reply source, reply source port, protocol) → [tx bytes, tx packets, rx bytes, rx packets].
    fn conntrack_list(&self) -> BTreeMap<(String, String, i64, String), [i64; 4]> {
        let text = sh(&format!(
            "ip netns exec {} conntrack -L -o extended 2>/dev/null",
            self.a
        ));
        let mut flows = BTreeMap::new();
        for line in text.lines() {
            let proto = line
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string();
            let mut fields: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for token in line.split_whitespace() {
                if let Some((k, v)) = token.split_once('=') {
                    fields.entry(k).or_default().push(v);
                }
            }
            let get = |k: &str, i: usize| fields.get(k).and_then(|v| v.get(i)).copied();
            let (Some(src), Some(reply_src)) = (get("src", 0), get("src", 1)) else {
                continue;
            };
            let port = get("sport", 1).map(|p| p.parse().unwrap()).unwrap_or(0);
            let n = |k: &str, i: usize| get(k, i).map(|v| v.parse::<i64>().unwrap()).unwrap_or(0);
            let entry = flows
                .entry((src.to_string(), reply_src.to_string(), port, proto))
                .or_insert([0; 4]);
            entry[0] += n("bytes", 0);
            entry[1] += n("packets", 0);
            entry[2] += n("bytes", 1);
            entry[3] += n("packets", 1);
        }
        flows
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A TCP server in `ns` on `addr`: reads everything, then answers `reply` bytes.
fn tcp_server(ns: &str, addr: SocketAddr, reply: usize) -> std::thread::JoinHandle<usize> {
    let (ready, wait) = mpsc::channel();
    let handle = Lab::run_in(ns, move || {
        let listener = TcpListener::bind(addr).unwrap();
        ready.send(()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(&vec![b'r'; reply]).unwrap();
        got.len()
    });
    wait.recv().unwrap();
    handle
}

fn tcp_client(ns: &str, addr: SocketAddr, send: usize) -> usize {
    Lab::run_in(ns, move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(&vec![b's'; send]).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got.len()
    })
    .join()
    .unwrap()
}

/// A UDP server in `ns` answering each of `count` datagrams with `reply` bytes.
fn udp_echo(ns: &str, addr: SocketAddr, count: usize, reply: usize) -> std::thread::JoinHandle<()> {
    let (ready, wait) = mpsc::channel();
    let handle = Lab::run_in(ns, move || {
        let socket = UdpSocket::bind(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..count {
            let (_, from) = socket.recv_from(&mut buf).unwrap();
            socket.send_to(&vec![b'e'; reply], from).unwrap();
        }
    });
    wait.recv().unwrap();
    handle
}

/// Sends `count` datagrams of `size` bytes from one socket in `ns` and waits for each answer.
fn udp_client(socket: &UdpSocket, to: SocketAddr, count: usize, size: usize) {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        socket.send_to(&vec![b'u'; size], to).unwrap();
        socket.recv_from(&mut buf).unwrap();
    }
}

fn args(mode: Mode) -> NetmonArgs {
    NetmonArgs {
        // Unused: the batches go to a channel (Sink::Channel).
        connection: ApplianceArgs {
            appliance: "http://127.0.0.1:1".into(),
            bootstrap_url: None,
            appliance_ca: None,
            token_file: PathBuf::from("/nonexistent"),
            tls_cert: None,
            tls_key: None,
            insecure: true,
        },
        node: "test-node".into(),
        mode,
        poll_interval: Duration::from_millis(100),
        flush_interval: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(120),
        domain_ttl: Duration::from_secs(120),
        max_flows: 1000,
        max_entries: 1000,
        max_dns_lookups: 100,
        max_domains: 100,
        cgroup: None,
        no_dns: true,
        no_kubernetes: true,
        netns: None,
    }
}

/// Runs the agent until `work` has run, and returns everything it flushed.
fn run_agent(args: NetmonArgs, work: impl FnOnce()) -> Vec<(Table, RecordBatch)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = runtime.spawn(tally_netmon::run_until(
        args,
        Sink::Channel(tx),
        async move {
            let _ = stopped.await;
        },
    ));
    // Let the first poll record its baseline before the traffic starts.
    std::thread::sleep(Duration::from_millis(1500));
    if agent.is_finished() {
        panic!("the agent stopped early: {:?}", runtime.block_on(agent));
    }
    work();
    // Let the last packets (FIN, ACK) land before the final poll.
    std::thread::sleep(Duration::from_millis(500));
    stop.send(()).unwrap();
    runtime.block_on(agent).unwrap().unwrap();
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(item);
    }
    out
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref()
        .unwrap()
}

fn ints<'a>(batch: &'a RecordBatch, name: &str) -> &'a Int64Array {
    batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref()
        .unwrap()
}

/// The agent's `network_flows` rows summed per flow, keyed like [`Lab::conntrack_list`].
fn agent_flows(
    batches: &[(Table, RecordBatch)],
) -> BTreeMap<(String, String, i64, String), [i64; 4]> {
    let mut flows = BTreeMap::new();
    for (table, batch) in batches {
        if *table != Table::NetworkFlows {
            continue;
        }
        for row in 0..batch.num_rows() {
            let key = (
                strings(batch, "src_ip").value(row).to_string(),
                strings(batch, "dst_ip").value(row).to_string(),
                ints(batch, "dst_port").value(row),
                strings(batch, "protocol").value(row).to_string(),
            );
            let entry = flows.entry(key).or_insert([0; 4]);
            for (i, column) in ["tx_bytes", "tx_packets", "rx_bytes", "rx_packets"]
                .iter()
                .enumerate()
            {
                entry[i] += ints(batch, column).value(row);
            }
        }
    }
    flows
}

#[test]
fn conntrack_mode_counts_what_conntrack_lists() {
    let lab = Lab::new("ct");
    let mut args = args(Mode::Conntrack);
    args.netns = Some(Lab::path(&lab.a));
    let b = lab.b.clone();
    let a = lab.a.clone();
    let batches = run_agent(args, move || {
        let v4: SocketAddr = "10.77.0.2:9000".parse().unwrap();
        let server = tcp_server(&b, v4, 50_000);
        assert_eq!(tcp_client(&a, v4, 200_000), 50_000);
        assert_eq!(server.join().unwrap(), 200_000);
        let v6: SocketAddr = "[fd77::2]:9000".parse().unwrap();
        let server = tcp_server(&b, v6, 7_000);
        assert_eq!(tcp_client(&a, v6, 3_000), 7_000);
        server.join().unwrap();
        let udp: SocketAddr = "[fd77::2]:9001".parse().unwrap();
        let echo = udp_echo(&b, udp, 12, 300);
        Lab::run_in(&a, move || {
            let socket = UdpSocket::bind("[fd77::1]:0").unwrap();
            udp_client(&socket, udp, 12, 900);
        })
        .join()
        .unwrap();
        echo.join().unwrap();
    });
    let listed = lab.conntrack_list();
    let counted = agent_flows(&batches);
    assert_eq!(counted, listed, "agent (left) vs conntrack -L (right)");
    // And the numbers are the traffic sent: 12 UDP datagrams of 900 bytes over IPv6 (40 + 8
    // bytes of headers) and their 300-byte answers.
    let udp = counted[&(
        "fd77::1".to_string(),
        "fd77::2".to_string(),
        9001,
        "udp".to_string(),
    )];
    assert_eq!(udp, [12 * 948, 12, 12 * 348, 12]);
    let tcp = counted[&(
        "10.77.0.1".to_string(),
        "10.77.0.2".to_string(),
        9000,
        "tcp".to_string(),
    )];
    assert!(tcp[0] > 200_000 && tcp[2] > 50_000, "{tcp:?}");
    assert!(batches.iter().all(|(t, _)| *t == Table::NetworkFlows));
}

#[test]
fn deltas_are_right_across_flushes_and_a_counter_reset() {
    let lab = Lab::new("delta");
    let to: SocketAddr = "10.77.0.2:9100".parse().unwrap();
    // 5 + 3 + 2 + 4 datagrams of 100 bytes (128 on the wire), answered with 50 (78).
    let echo = udp_echo(&lab.b, to, 14, 50);
    let a = lab.a.clone();
    let (step_tx, step_rx) = mpsc::channel::<usize>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // One client socket for the whole test: the same conntrack tuple throughout.
    let client = Lab::run_in(&a, move || {
        let socket = UdpSocket::bind("10.77.0.1:40100").unwrap();
        for count in step_rx {
            udp_client(&socket, to, count, 100);
            done_tx.send(()).unwrap();
        }
    });
    let send = |count: usize| {
        step_tx.send(count).unwrap();
        done_rx.recv().unwrap();
    };
    let reader_ns = lab.a.clone();
    let (poll_tx, poll_rx) = mpsc::channel::<()>();
    let (result_tx, result_rx) = mpsc::channel();
    let reader = Lab::run_in(&reader_ns, move || {
        let reader = ct::ConntrackReader::open().unwrap();
        let mut table = FlowTable::new(Limits {
            max_entries: 100,
            max_flows: 100,
            idle_polls: u64::MAX,
        });
        for _ in poll_rx {
            let stats = table.poll(reader.read().unwrap());
            let flows: Vec<[u64; 4]> = table
                .flush()
                .into_iter()
                .filter(|(k, _)| k.dst_port == 9100)
                .map(|(_, c)| [c.tx_bytes, c.tx_packets, c.rx_bytes, c.rx_packets])
                .collect();
            result_tx.send((stats, flows)).unwrap();
        }
    });
    let flush = || {
        poll_tx.send(()).unwrap();
        result_rx.recv().unwrap()
    };
    let (_, baseline) = flush();
    assert!(baseline.is_empty(), "the first poll is a baseline");

    send(5);
    let (_, first) = flush();
    assert_eq!(first, vec![[5 * 128, 5, 5 * 78, 5]], "first window");
    send(3);
    let (_, second) = flush();
    assert_eq!(
        second,
        vec![[3 * 128, 3, 3 * 78, 3]],
        "second window: only the new traffic"
    );
    let (_, quiet) = flush();
    assert!(quiet.is_empty(), "nothing moved");

    // Zero the counters (`conntrack -L -z`), then 2 more: the reading went back, so it is a
    // reset and the whole reading is new traffic.
    sh(&format!(
        "ip netns exec {} conntrack -L -z >/dev/null 2>&1",
        lab.a
    ));
    send(2);
    let (stats, after_reset) = flush();
    assert_eq!(stats.resets, 1);
    assert_eq!(
        after_reset,
        vec![[2 * 128, 2, 2 * 78, 2]],
        "after the reset"
    );

    // Delete the entry: the same tuple comes back as a new connection with a new id.
    sh(&format!(
        "ip netns exec {} conntrack -D -p udp --dport 9100 >/dev/null 2>&1",
        lab.a
    ));
    send(4);
    let (stats, new_entry) = flush();
    // The kernel's entry id hashes the entry's address, which the new entry may reuse: then
    // it is the same entry whose counters went back (a reset), else the old one is forgotten.
    assert_eq!(
        stats.expired + stats.resets,
        1,
        "the deleted entry is forgotten or reset"
    );
    assert_eq!(
        new_entry,
        vec![[4 * 128, 4, 4 * 78, 4]],
        "a new entry of the same flow"
    );

    drop(step_tx);
    drop(poll_tx);
    client.join().unwrap();
    reader.join().unwrap();
    echo.join().unwrap();
}

/// A cgroup v2 directory created for the test, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Cgroup {
        let root = tally_netmon::bpf::cgroup2_mount().expect("cgroup v2 in /proc/mounts");
        let path = root.join(format!("tally-netmon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap();
        Cgroup(path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

const DNS_CLIENT: &str = r#"
import socket, struct
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in 'api.tally.test'.split('.')) + b'\0'
q += struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(q, ('10.77.0.2', 53))
s.recv(2048)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
for _ in range(10):
    u.sendto(b'x' * 1000, ('10.77.0.2', 9001))
    u.recv(2048)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.settimeout(10)
for _ in range(7):
    u6.sendto(b'y' * 300, ('fd77::2', 9002))
    u6.recv(2048)
"#;

#[test]
fn ebpf_mode_counts_a_known_transfer_and_traces_dns() {
    use tally_netmon::dns::build::{Answer, response};
    let lab = Lab::new("bpf");
    let cgroup = Cgroup::new("bpf");
    // The programs load and attach here (the agent would fall back to conntrack quietly).
    let features = tally_netmon::bpf::BpfFeatures {
        count_flows: true,
        trace_dns: true,
    };
    drop(
        tally_netmon::bpf::BpfPrograms::attach(&cgroup.0, features)
            .expect("eBPF programs load and attach"),
    );
    let mut args = args(Mode::Ebpf);
    args.cgroup = Some(cgroup.0.clone());
    args.no_dns = false;
    let (a, b, cg) = (lab.a.clone(), lab.b.clone(), cgroup.0.clone());
    let answer = response(
        0x1234,
        "api.tally.test",
        1,
        &[
            Answer::Cname("api.tally.test", "edge.tally.test"),
            Answer::Address("edge.tally.test", "10.77.0.2".parse().unwrap()),
        ],
        30,
    );
    let answer_len = answer.len() as i64;
    let batches = run_agent(args, move || {
        let dns = Lab::run_in(&b, move || {
            let socket = UdpSocket::bind("10.77.0.2:53").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut buf = [0u8; 512];
            let (_, from) = socket.recv_from(&mut buf).unwrap();
            socket.send_to(&answer, from).unwrap();
        });
        let v4 = udp_echo(&b, "10.77.0.2:9001".parse().unwrap(), 10, 500);
        let v6 = udp_echo(&b, "[fd77::2]:9002".parse().unwrap(), 7, 200);
        // The client is a separate process placed in the cgroup before it opens a socket.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {a} python3 -c \"$0\"",
                cg.display()
            ))
            .arg(DNS_CLIENT)
            .status()
            .unwrap();
        assert!(status.success(), "the client in the cgroup failed");
        dns.join().unwrap();
        v4.join().unwrap();
        v6.join().unwrap();
    });
    let flows = agent_flows(&batches);
    let key = |src: &str, dst: &str, port: i64| {
        (src.to_string(), dst.to_string(), port, "udp".to_string())
    };
    // Exactly the datagrams sent, with their IP and UDP headers (IPv4 28 bytes, IPv6 48).
    let get = |k| {
        flows
            .get(&k)
            .copied()
            .unwrap_or_else(|| panic!("no flow {k:?} in {flows:?}"))
    };
    assert_eq!(
        get(key("10.77.0.1", "10.77.0.2", 9001)),
        [10 * 1028, 10, 10 * 528, 10]
    );
    assert_eq!(
        get(key("fd77::1", "fd77::2", 9002)),
        [7 * 348, 7, 7 * 248, 7]
    );
    // The DNS exchange: a 32-byte query and the crafted answer.
    assert_eq!(
        get(key("10.77.0.1", "10.77.0.2", 53)),
        [32 + 28, 1, answer_len + 28, 1]
    );
    assert_eq!(flows.len(), 3, "only the cgroup's traffic: {flows:?}");

    let (_, lookups) = batches
        .iter()
        .find(|(t, _)| *t == Table::DnsLookups)
        .expect("a dns_lookups batch");
    assert_eq!(lookups.num_rows(), 1);
    assert_eq!(strings(lookups, "client_ip").value(0), "10.77.0.1");
    assert_eq!(strings(lookups, "query_name").value(0), "api.tally.test");
    assert_eq!(strings(lookups, "query_type").value(0), "A");
    assert_eq!(strings(lookups, "answers").value(0), "10.77.0.2");
    assert_eq!(strings(lookups, "cname_chain").value(0), "edge.tally.test");
    assert_eq!(ints(lookups, "ttl_seconds").value(0), 30);
    assert!(strings(lookups, "client_pod").is_null(0));
    // The answer names the address in the flows to it.
    for (table, batch) in &batches {
        if *table == Table::NetworkFlows {
            for row in 0..batch.num_rows() {
                if strings(batch, "dst_ip").value(row) == "10.77.0.2" {
                    assert_eq!(strings(batch, "dst_domain").value(row), "api.tally.test");
                }
            }
        }
    }
    drop(cgroup);
}
