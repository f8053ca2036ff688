//! Conntrack mode: the kernel's connection tracking table, dumped over netlink (what
//! `conntrack -L` prints), read as counter readings for the delta accounting.
//!
//! A connection's original direction starts at the local end that opened it: TX is the
//! original direction's counters, RX the reply's. The destination is the reply's source,
//! which is the endpoint that really answered (after kube-proxy's DNAT of a Service address).

use std::path::Path;

use crate::NetmonError;
use crate::flows::{Counters, EntryId, FlowKey, Reading};

const ACCT_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
const TIMESTAMP_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";

/// An open conntrack netlink socket (in the network namespace of the thread that opened it).
pub struct ConntrackReader {
    socket: conntrack::Conntrack,
}

impl ConntrackReader {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetmonError> {
        let socket = conntrack::Conntrack::connect()
            .map_err(|e| NetmonError::Conntrack(format!("opening the netlink socket: {e}")))?;
        Ok(Self { socket })
    }

    /// Dumps the table: one reading per tracked connection that has counters.
    pub fn read(&self) -> Result<Vec<Reading>, NetmonError> {
        let flows = self
            .socket
            .dump()
            .map_err(|e| NetmonError::Conntrack(format!("dumping the table: {e}")))?;
        Ok(flows.iter().filter_map(reading_of).collect())
    }
}

/// The reading of one conntrack entry, or `None` when it lacks addresses.
pub fn reading_of(flow: &conntrack::model::Flow) -> Option<Reading> {
    let origin = flow.origin.as_ref()?;
    let reply = flow.reply.as_ref()?;
    let proto = origin.proto.as_ref()?;
    let protocol: u8 = proto.number.as_ref().map(u8::from)?;
    let (src_port, dst_port) = match protocol {
        6 | 17 | 132 | 33 | 136 => (
            proto.src_port.unwrap_or(0),
            reply
                .proto
                .as_ref()
                .and_then(|p| p.src_port)
                .or(proto.dst_port)
                .unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let counter = |c: &Option<conntrack::model::Counter>| {
        c.as_ref()
            .map(|c| (c.bytes.unwrap_or(0), c.packets.unwrap_or(0)))
            .unwrap_or((0, 0))
    };
    // The kernel's id hashes the entry's address, which a new connection with the same tuple
    // may reuse right after the old one ends; the start time (nf_conntrack_timestamp) tells
    // them apart, so a reused id is a new entry and its counters are not read as a delta.
    let started = flow
        .timestamp
        .as_ref()
        .and_then(|t| t.start)
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0) as u64;
    let id = flow.id.unwrap_or(0) ^ (started ^ (started >> 32)) as u32;
    let (tx_bytes, tx_packets) = counter(&flow.counter_origin);
    let (rx_bytes, rx_packets) = counter(&flow.counter_reply);
    Some(Reading {
        entry: EntryId {
            key: FlowKey {
                src: origin.src?,
                dst: reply.src.or(origin.dst)?,
                dst_port,
                protocol,
            },
            src_port,
            id,
        },
        counters: Counters {
            tx_bytes,
            tx_packets,
            rx_bytes,
            rx_packets,
        },
    })
}

/// Turns on `nf_conntrack_acct` (per-connection byte and packet counters) in the calling
/// thread's network namespace. Returns true when it was off. Connections that started while
/// it was off have no counters.
pub fn enable_accounting() -> Result<bool, NetmonError> {
    enable_accounting_at(Path::new(ACCT_SYSCTL))
}

/// Turns on `nf_conntrack_timestamp` (each entry's start time, which tells a new connection
/// from an old one whose id it reuses). Returns true when it was off.
pub fn enable_timestamps() -> Result<bool, NetmonError> {
    enable_accounting_at(Path::new(TIMESTAMP_SYSCTL))
}

fn enable_accounting_at(path: &Path) -> Result<bool, NetmonError> {
    let sysctl = |e: std::io::Error| {
        NetmonError::Conntrack(format!(
            "{}: {e} (is the nf_conntrack module loaded?)",
            path.display()
        ))
    };
    let current = std::fs::read_to_string(path).map_err(sysctl)?;
    if current.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1\n").map_err(sysctl)?;
    Ok(true)
}

/// Moves the calling thread into the network namespace at `path` (a `/var/run/netns/<name>`
/// or `/proc/<pid>/ns/net` file). Sockets opened afterwards by this thread live there.
pub fn enter_netns(path: &Path) -> Result<(), NetmonError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)
        .map_err(|e| NetmonError::Netns(format!("opening {}: {e}", path.display())))?;
    // SAFETY: setns on a valid namespace file descriptor affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetmonError::Netns(format!(
            "entering {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use conntrack::model::{Counter, Flow, IpProto, IpTuple, ProtoTuple};

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> IpTuple {
        IpTuple {
            src: Some(src.parse().unwrap()),
            dst: Some(dst.parse().unwrap()),
            proto: Some(ProtoTuple {
                number: Some(IpProto::Tcp),
                src_port: Some(sport),
                dst_port: Some(dport),
                ..Default::default()
            }),
            zone: None,
        }
    }

    #[test]
    fn a_dnatted_connection_is_keyed_by_the_endpoint_that_answered() {
        // A pod connects to a Service's ClusterIP 10.96.0.10:80; kube-proxy sends it to the
        // endpoint 10.244.1.7:8080, which answers.
        let flow = Flow {
            id: Some(42),
            origin: Some(tuple("10.244.0.5", "10.96.0.10", 40000, 80)),
            reply: Some(tuple("10.244.1.7", "10.244.0.5", 8080, 40000)),
            counter_origin: Some(Counter {
                packets: Some(3),
                bytes: Some(180),
            }),
            counter_reply: Some(Counter {
                packets: Some(2),
                bytes: Some(1500),
            }),
            ..Default::default()
        };
        let reading = reading_of(&flow).unwrap();
        assert_eq!(reading.entry.key.src.to_string(), "10.244.0.5");
        assert_eq!(reading.entry.key.dst.to_string(), "10.244.1.7");
        assert_eq!(reading.entry.key.dst_port, 8080);
        assert_eq!(reading.entry.key.protocol, 6);
        assert_eq!(reading.entry.src_port, 40000);
        assert_eq!(reading.entry.id, 42);
        assert_eq!(
            reading.counters,
            Counters {
                tx_bytes: 180,
                tx_packets: 3,
                rx_bytes: 1500,
                rx_packets: 2
            }
        );
        assert!(reading_of(&Flow::default()).is_none());
    }

    #[test]
    fn accounting_is_switched_on_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nf_conntrack_acct");
        std::fs::write(&path, "0\n").unwrap();
        assert!(enable_accounting_at(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        assert!(!enable_accounting_at(&path).unwrap());
        let err = enable_accounting_at(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("nf_conntrack module"), "{err}");
    }
}
