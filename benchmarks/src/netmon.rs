//! `tally-bench netmon`: the node agent's memory and CPU with a large conntrack table.
//!
//! A network namespace gets `entries` conntrack entries (one UDP datagram each to a distinct
//! loopback address, with a 10-minute UDP timeout so they stay), then the real `tally-agent
//! netmon` binary reads that namespace's table (`--netns`) every 5 s and flushes to a real
//! `tally serve` every `flush` seconds, while a tenth of the flows keep sending (so every poll
//! has deltas and every window has rows). Measured from /proc: the agent's peak RSS (VmHWM)
//! and its CPU time over the run, as millicores. Aim: ≤ 64 MiB and ≤ 50 millicores.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::machine;

fn sh(command: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .expect("sh");
    assert!(
        status.success(),
        "`{command}` failed (needs root, iproute2, nftables)"
    );
}

/// The loopback address of entry `i` (127.1.0.0/16 and up: every address of 127/8 is local).
fn address(i: usize) -> SocketAddrV4 {
    let i = i as u32;
    SocketAddrV4::new(
        Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8),
        9,
    )
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = std::path::PathBuf::from(path);
    std::thread::spawn(move || {
        tally_netmon::ct::enter_netns(&path).expect("enter the benchmark namespace");
        f()
    })
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn netmon(entries: usize, seconds: u64, poll: &str, flush: &str) -> (String, String) {
    let name = format!("tally-bench-netmon-{}", std::process::id());
    let ns = Netns(name.clone());
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    sh(&format!(
        "ip netns add {name} && ip -n {name} link set lo up"
    ));
    sh(&format!(
        "ip netns exec {name} sysctl -qw net.netfilter.nf_conntrack_acct=1 \
         net.netfilter.nf_conntrack_udp_timeout=600 && \
         printf 'table inet tally {{\n chain out {{\n type filter hook output priority 0; policy accept;\n \
         ct state new,established accept\n }}\n}}\n' \
         | ip netns exec {name} nft -f -"
    ));
    let path = format!("/var/run/netns/{name}");

    // The table: one entry per destination address.
    let filling = Instant::now();
    in_netns(&path, move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..entries {
            let _ = socket.send_to(b"x", address(i));
        }
    })
    .join()
    .unwrap();
    let fill_seconds = filling.elapsed().as_secs_f64();
    let count = |name: &str| -> usize {
        let out = Command::new("ip")
            .args(["netns", "exec", name, "conntrack", "-C"])
            .output()
            .expect("conntrack -C");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let tracked = count(&name);

    // The appliance the agent writes to.
    let dir = std::env::temp_dir().join(format!("tally-bench-netmon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut server, url) = crate::spawn_tally_serve(&dir);

    let agent_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("tally-agent");
    assert!(
        agent_bin.exists(),
        "{} not found: build it with cargo build -p tally-agent (same profile)",
        agent_bin.display()
    );
    let mut agent = Command::new(&agent_bin)
        .args([
            "netmon",
            "--appliance",
            &url,
            "--insecure",
            "--node",
            "bench",
            "--no-kubernetes",
            "--no-dns",
        ])
        .args([
            "--netns",
            &path,
            "--poll-interval",
            poll,
            "--flush-interval",
            flush,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tally-agent netmon");
    let pid = agent.id();

    // A tenth of the flows keep sending, one datagram each per second.
    let stop = Arc::new(AtomicBool::new(false));
    let active = (entries / 10).max(1);
    let stop_traffic = stop.clone();
    let traffic = in_netns(&path, move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0u64;
        while !stop_traffic.load(Ordering::Relaxed) {
            let round = Instant::now();
            for i in 0..active {
                let _ = socket.send_to(b"x", address(i * 10));
                sent += 1;
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
        }
        sent
    });

    let cpu_start = machine::process_cpu_seconds(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu = machine::process_cpu_seconds(pid) - cpu_start;
    let wall = started.elapsed().as_secs_f64();
    let peak = machine::process_peak_rss(pid);
    let exited = agent.try_wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let datagrams = traffic.join().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = agent.wait();
    unsafe { libc::kill(server.id() as i32, libc::SIGKILL) };
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    drop(ns);
    assert!(
        exited.is_none(),
        "the agent exited during the run: {exited:?}"
    );

    let millicores = cpu / wall * 1000.0;
    let peak_mib = peak as f64 / (1024.0 * 1024.0);
    let verdict = if peak_mib <= 64.0 && millicores <= 50.0 {
        "**met**"
    } else {
        "**not met**"
    };
    let body = format!(
        "| conntrack entries | active flows | poll | flush | run | agent peak RSS | agent CPU |\n\
         |---|---|---|---|---|---|---|\n\
         | {tracked} | {active} ({datagrams} datagrams) | {poll} | {flush} | {wall:.0} s | {} | {millicores:.1} millicores ({cpu:.2} CPU s) |\n\n\
         Entries created in {fill_seconds:.1} s (one UDP datagram each to a distinct loopback address in a \
         network namespace, 10-minute UDP timeout). The real `tally-agent netmon` binary reads that \
         namespace's table over netlink and writes to a real `tally serve`; a tenth of the flows \
         keep sending, so every poll has deltas. The agent streams each conntrack dump: every \
         netlink datagram is parsed in place into the delta table, so memory holds that table, \
         not a copy of the kernel's. Aim: ≤ 64 MiB RSS, ≤ 50 millicores: {verdict}.",
        machine::mib(peak),
    );
    ("netmon".into(), body)
}
