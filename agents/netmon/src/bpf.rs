//! eBPF mode and DNS tracing: loads the cgroup_skb programs of `ebpf/netmon.bpf.c` with aya,
//! attaches them to a cgroup v2 directory, reads the flow counters map as readings for the
//! delta accounting, and hands out the DNS responses the ingress program captured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::NetmonError;
use crate::flows::{Counters, EntryId, FlowKey, Reading};

/// The compiled object (empty when the agent was built without clang; see build.rs).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/netmon.bpf.o"));
/// "built", or why the object is empty.
const BUILD: &str = env!("TALLY_NETMON_BPF");
/// The largest DNS payload the program copies (DNS_MAX in the C source).
const DNS_MAX: usize = 2048;

/// `struct flow_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfFlowKey {
    local: [u8; 16],
    remote: [u8; 16],
    remote_port: u16,
    family: u8,
    protocol: u8,
}

/// `struct flow_counters` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct BpfCounters {
    tx_bytes: u64,
    tx_packets: u64,
    rx_bytes: u64,
    rx_packets: u64,
}

// SAFETY: both are #[repr(C)] plain data without padding, matching the C structs.
unsafe impl aya::Pod for BpfFlowKey {}
unsafe impl aya::Pod for BpfCounters {}

fn address(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

impl BpfFlowKey {
    fn flow_key(&self) -> Option<FlowKey> {
        Some(FlowKey {
            src: address(self.family, &self.local)?,
            dst: address(self.family, &self.remote)?,
            dst_port: self.remote_port,
            protocol: self.protocol,
        })
    }

    fn from_flow_key(key: &FlowKey) -> Self {
        let mut out = BpfFlowKey {
            local: [0; 16],
            remote: [0; 16],
            remote_port: key.dst_port,
            family: 4,
            protocol: key.protocol,
        };
        for (ip, bytes) in [(key.src, &mut out.local), (key.dst, &mut out.remote)] {
            match ip {
                IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => {
                    out.family = 6;
                    bytes.copy_from_slice(&v6.octets());
                }
            }
        }
        out
    }
}

/// What to run in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfFeatures {
    /// Count bytes and packets per flow (eBPF mode).
    pub count_flows: bool,
    /// Copy DNS responses into the ring buffer.
    pub trace_dns: bool,
}

/// The loaded and attached programs; dropping it detaches them.
pub struct BpfPrograms {
    ebpf: Ebpf,
    cgroup: PathBuf,
}

impl BpfPrograms {
    /// Loads the programs and attaches them to the cgroup v2 directory `cgroup` (every socket
    /// of the processes in it and below it).
    pub fn attach(cgroup: &Path, features: BpfFeatures) -> Result<Self, NetmonError> {
        if OBJECT.is_empty() {
            return Err(NetmonError::Bpf(format!("the eBPF object is {BUILD}")));
        }
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            NetmonError::Bpf(format!("{what} ({}): {e}", cgroup.display()))
        };
        let count_flows = u8::from(features.count_flows);
        let trace_dns = u8::from(features.trace_dns);
        let mut ebpf = EbpfLoader::new()
            .override_global("count_flows", &count_flows, true)
            .override_global("trace_dns", &trace_dns, true)
            .load(OBJECT)
            .map_err(|e| fail("loading the programs", &e))?;
        let dir = std::fs::File::open(cgroup).map_err(|e| fail("opening the cgroup", &e))?;
        let mut attach = |name: &str, kind: CgroupSkbAttachType| -> Result<(), NetmonError> {
            let program: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or_else(|| fail("finding a program", &name))?
                .try_into()
                .map_err(|e| fail(name, &e))?;
            program
                .load()
                .map_err(|e| fail(&format!("loading {name}"), &e))?;
            // Single: AllowMultiple is refused with EINVAL on some kernels.
            program
                .attach(&dir, kind, CgroupAttachMode::Single)
                .map_err(|e| fail(&format!("attaching {name}"), &e))?;
            Ok(())
        };
        if features.count_flows {
            attach("netmon_egress", CgroupSkbAttachType::Egress)?;
        }
        if features.count_flows || features.trace_dns {
            attach("netmon_ingress", CgroupSkbAttachType::Ingress)?;
        }
        Ok(Self {
            ebpf,
            cgroup: cgroup.to_path_buf(),
        })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    fn flows_map(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, BpfFlowKey, BpfCounters>, NetmonError> {
        let map = self
            .ebpf
            .map_mut("flows")
            .ok_or_else(|| NetmonError::Bpf("the object has no `flows` map".into()))?;
        BpfHashMap::try_from(map).map_err(|e| NetmonError::Bpf(format!("the `flows` map: {e}")))
    }

    /// Reads every flow's counters (since its key was created).
    pub fn read_flows(&mut self) -> Result<Vec<Reading>, NetmonError> {
        let map = self.flows_map()?;
        let mut readings = Vec::new();
        for item in map.iter() {
            // A key deleted between listing and lookup is skipped, not an error.
            let Ok((key, value)) = item else { continue };
            let Some(flow) = key.flow_key() else { continue };
            readings.push(Reading {
                entry: EntryId {
                    key: flow,
                    src_port: 0,
                    id: 0,
                },
                counters: Counters {
                    tx_bytes: value.tx_bytes,
                    tx_packets: value.tx_packets,
                    rx_bytes: value.rx_bytes,
                    rx_packets: value.rx_packets,
                },
            });
        }
        Ok(readings)
    }

    /// Deletes idle flows from the map, so their counters restart from zero if they return.
    pub fn forget(&mut self, entries: &[EntryId]) -> Result<(), NetmonError> {
        let mut map = self.flows_map()?;
        for entry in entries {
            // Already gone (LRU eviction) is fine.
            let _ = map.remove(&BpfFlowKey::from_flow_key(&entry.key));
        }
        Ok(())
    }

    /// Takes the DNS ring buffer (once) for a reader.
    pub fn take_dns(&mut self) -> Result<DnsRing, NetmonError> {
        let map = self.ebpf.take_map("dns_events").ok_or_else(|| {
            NetmonError::Bpf("the `dns_events` ring buffer was already taken".into())
        })?;
        let ring = RingBuf::try_from(map)
            .map_err(|e| NetmonError::Bpf(format!("the `dns_events` ring buffer: {e}")))?;
        Ok(DnsRing { ring })
    }
}

/// A DNS response copied by the kernel: who received it and the DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedDns {
    pub client: IpAddr,
    pub message: Vec<u8>,
}

/// The ring buffer of captured DNS responses.
pub struct DnsRing {
    ring: RingBuf<MapData>,
}

impl DnsRing {
    /// Every response waiting in the buffer.
    pub fn drain(&mut self) -> Vec<CapturedDns> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(event) = decode_event(&item) {
                out.push(event);
            }
        }
        out
    }
}

/// Decodes `struct dns_event`: u32 len, u8 family, 3 pad, 16 client, data.
fn decode_event(raw: &[u8]) -> Option<CapturedDns> {
    let len = u32::from_ne_bytes(raw.get(0..4)?.try_into().ok()?) as usize;
    let family = *raw.get(4)?;
    let client: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
    let message = raw.get(24..24 + len.min(DNS_MAX))?.to_vec();
    Some(CapturedDns {
        client: address(family, &client)?,
        message,
    })
}

/// The cgroup v2 mount point, from /proc/mounts (never assumed: it is /sys/fs/cgroup on pure
/// v2 hosts and /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, NetmonError> {
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(|e| NetmonError::Bpf(format!("reading /proc/mounts: {e}")))?;
    cgroup2_in(&mounts).ok_or_else(|| NetmonError::Bpf("no cgroup2 file system is mounted".into()))
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_comes_from_proc_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn keys_round_trip_for_both_families() {
        for (src, dst) in [("10.0.0.1", "192.0.2.9"), ("fd00::1", "2001:db8::9")] {
            let key = FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                dst_port: 8443,
                protocol: 17,
            };
            assert_eq!(BpfFlowKey::from_flow_key(&key).flow_key(), Some(key));
        }
        assert_eq!(std::mem::size_of::<BpfFlowKey>(), 36);
    }

    #[test]
    fn events_decode_and_bad_ones_are_skipped() {
        let mut raw = vec![0u8; 24 + DNS_MAX];
        raw[0..4].copy_from_slice(&3u32.to_ne_bytes());
        raw[4] = 4;
        raw[8..12].copy_from_slice(&[10, 0, 0, 7]);
        raw[24..27].copy_from_slice(b"abc");
        let event = decode_event(&raw).unwrap();
        assert_eq!(event.client.to_string(), "10.0.0.7");
        assert_eq!(event.message, b"abc");
        raw[4] = 9;
        assert!(decode_event(&raw).is_none(), "unknown family");
        assert!(decode_event(&raw[..10]).is_none(), "short");
    }
}
