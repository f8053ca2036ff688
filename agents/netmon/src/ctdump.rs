//! A streaming dump of the conntrack table over a NETLINK_NETFILTER socket.
//!
//! One `IPCTNL_MSG_CT_GET` request with `NLM_F_DUMP` for every address family; the kernel
//! answers with a multipart stream of datagrams, each holding several entry messages, ended by
//! `NLMSG_DONE`. Datagrams are read one at a time into one reused buffer and every entry is
//! parsed in place, straight into a [`Reading`], so memory does not grow with the table (the
//! `conntrack` crate built every entry as a `Flow` with heap data before anything was read).
//!
//! A malformed entry (a truncated attribute, an address of the wrong size) is skipped and
//! counted, never a panic; so is an entry without the tuples a reading needs.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::NetmonError;
use crate::flows::{Counters, EntryId, FlowKey, Reading};

// linux/netfilter/nfnetlink.h, nfnetlink_compat.h, nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFNETLINK_V0: u8 = 0;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_TIMESTAMP: u16 = 20;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;

const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;

const CTA_TIMESTAMP_START: u16 = 1;

/// Strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NFGENMSG_LEN: usize = 4;

/// The receive buffer. A dump datagram is at most 32 KiB (the kernel caps its dump skb at
/// the reader's buffer size, at most 32 KiB); twice that leaves room and is never truncated.
const BUFFER: usize = 64 * 1024;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A conntrack entry that could not become a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its attributes do not parse (truncated, or a value of the wrong size).
    Malformed,
    /// It parses but lacks a tuple, protocol or address a reading needs.
    Incomplete,
}

/// The netlink attributes of a buffer, in order; a truncated one ends them with an error.
struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Skip>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < NLA_HDRLEN {
            self.rest = &[];
            return Some(Err(Skip::Malformed));
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(Skip::Malformed));
        }
        let payload = &self.rest[NLA_HDRLEN..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((kind, payload)))
    }
}

fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

fn be_u16(v: &[u8]) -> Result<u16, Skip> {
    Ok(u16::from_be_bytes(
        v.try_into().map_err(|_| Skip::Malformed)?,
    ))
}

fn be_u32(v: &[u8]) -> Result<u32, Skip> {
    Ok(u32::from_be_bytes(
        v.try_into().map_err(|_| Skip::Malformed)?,
    ))
}

fn be_u64(v: &[u8]) -> Result<u64, Skip> {
    Ok(u64::from_be_bytes(
        v.try_into().map_err(|_| Skip::Malformed)?,
    ))
}

fn v4(v: &[u8]) -> Result<IpAddr, Skip> {
    let octets: [u8; 4] = v.try_into().map_err(|_| Skip::Malformed)?;
    Ok(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn v6(v: &[u8]) -> Result<IpAddr, Skip> {
    let octets: [u8; 16] = v.try_into().map_err(|_| Skip::Malformed)?;
    Ok(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// One direction's tuple (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY).
#[derive(Debug, Default, Clone, Copy)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    /// CTA_TUPLE_PROTO was there.
    has_proto: bool,
    protocol: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

fn tuple(buf: &[u8]) -> Result<Tuple, Skip> {
    let mut t = Tuple::default();
    for attr in attrs(buf) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_IP => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_IP_V4_SRC => t.src = Some(v4(value)?),
                        CTA_IP_V4_DST => t.dst = Some(v4(value)?),
                        CTA_IP_V6_SRC => t.src = Some(v6(value)?),
                        CTA_IP_V6_DST => t.dst = Some(v6(value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                t.has_proto = true;
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_PROTO_NUM => {
                            let [number] = value else {
                                return Err(Skip::Malformed);
                            };
                            t.protocol = Some(*number);
                        }
                        CTA_PROTO_SRC_PORT => t.src_port = Some(be_u16(value)?),
                        CTA_PROTO_DST_PORT => t.dst_port = Some(be_u16(value)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

/// (bytes, packets) of one direction; a missing value is 0.
fn counters(buf: &[u8]) -> Result<(u64, u64), Skip> {
    let (mut bytes, mut packets) = (0, 0);
    for attr in attrs(buf) {
        let (kind, value) = attr?;
        match kind {
            CTA_COUNTERS_BYTES => bytes = be_u64(value)?,
            CTA_COUNTERS_PACKETS => packets = be_u64(value)?,
            CTA_COUNTERS32_BYTES => bytes = u64::from(be_u32(value)?),
            CTA_COUNTERS32_PACKETS => packets = u64::from(be_u32(value)?),
            _ => {}
        }
    }
    Ok((bytes, packets))
}

/// The reading of one conntrack entry from its attributes (the message after the netlink and
/// nfgenmsg headers).
///
/// TX is the original direction's counters, RX the reply's. The destination is the reply's
/// source: the endpoint that really answered, after kube-proxy's DNAT of a Service address.
/// Ports count only for protocols that have them (TCP, UDP, SCTP, DCCP, UDP-Lite); the
/// destination port is the reply's source port for the same reason.
pub fn parse_entry(buf: &[u8]) -> Result<Reading, Skip> {
    let mut origin = None;
    let mut reply = None;
    let (mut tx, mut rx) = ((0, 0), (0, 0));
    let mut ct_id = 0u32;
    let mut started = 0u64;
    for attr in attrs(buf) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_ORIG => origin = Some(tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(tuple(value)?),
            CTA_COUNTERS_ORIG => tx = counters(value)?,
            CTA_COUNTERS_REPLY => rx = counters(value)?,
            CTA_ID => ct_id = be_u32(value)?,
            CTA_TIMESTAMP => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    if kind == CTA_TIMESTAMP_START {
                        started = be_u64(value)?;
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(origin), Some(reply)) = (origin, reply) else {
        return Err(Skip::Incomplete);
    };
    if !origin.has_proto {
        return Err(Skip::Incomplete);
    }
    let protocol = origin.protocol.ok_or(Skip::Incomplete)?;
    let (src_port, dst_port) = match protocol {
        6 | 17 | 132 | 33 | 136 => (
            origin.src_port.unwrap_or(0),
            reply.src_port.or(origin.dst_port).unwrap_or(0),
        ),
        _ => (0, 0),
    };
    // The kernel's id hashes the entry's address, which a new connection with the same tuple
    // may reuse right after the old one ends; the start time (nf_conntrack_timestamp) tells
    // them apart, so a reused id is a new entry and its counters are not read as a delta.
    let id = ct_id ^ (started ^ (started >> 32)) as u32;
    Ok(Reading {
        entry: EntryId {
            key: FlowKey {
                src: origin.src.ok_or(Skip::Incomplete)?,
                dst: reply.src.or(origin.dst).ok_or(Skip::Incomplete)?,
                dst_port,
                protocol,
            },
            src_port,
            id,
        },
        counters: Counters {
            tx_bytes: tx.0,
            tx_packets: tx.1,
            rx_bytes: rx.0,
            rx_packets: rx.1,
        },
    })
}

/// One netlink message of a dump answer, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A conntrack entry: its attributes.
    Entry(&'a [u8]),
    /// The end of the dump.
    Done,
    /// The kernel's error (a positive errno); 0 is an acknowledgement.
    Error(i32),
    /// The kernel lost messages (NLMSG_OVERRUN).
    Overrun,
    /// Anything else (NLMSG_NOOP, another sequence number, another message type).
    Other,
}

/// The next message of a datagram starting at `*offset`, or `None` at its end. A message
/// header that does not fit is an error and ends the datagram.
pub fn next_message<'a>(
    datagram: &'a [u8],
    offset: &mut usize,
    seq: u32,
) -> Option<Result<Message<'a>, Skip>> {
    let rest = datagram.get(*offset..)?;
    if rest.is_empty() {
        return None;
    }
    if rest.len() < NLMSG_HDRLEN {
        *offset = datagram.len();
        return Some(Err(Skip::Malformed));
    }
    let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes([rest[4], rest[5]]);
    let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
    if len < NLMSG_HDRLEN || len > rest.len() {
        *offset = datagram.len();
        return Some(Err(Skip::Malformed));
    }
    *offset = offset.saturating_add(align4(len)).min(datagram.len());
    let body = &rest[NLMSG_HDRLEN..len];
    if msg_seq != seq {
        return Some(Ok(Message::Other));
    }
    let message = match kind as i32 {
        libc::NLMSG_DONE => Message::Done,
        libc::NLMSG_OVERRUN => Message::Overrun,
        libc::NLMSG_ERROR => match body.get(0..4) {
            Some(e) => {
                let error = i32::from_ne_bytes(e.try_into().expect("4 bytes"));
                Message::Error(error.saturating_neg())
            }
            None => return Some(Err(Skip::Malformed)),
        },
        _ if kind >> 8 == NFNL_SUBSYS_CTNETLINK
            && matches!(kind & 0xff, IPCTNL_MSG_CT_NEW | IPCTNL_MSG_CT_GET) =>
        {
            match body.get(NFGENMSG_LEN..) {
                Some(attributes) => Message::Entry(attributes),
                None => return Some(Err(Skip::Malformed)),
            }
        }
        _ => Message::Other,
    };
    Some(Ok(message))
}

/// What one dump read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries turned into readings.
    pub entries: usize,
    /// Entries or messages skipped because they do not parse.
    pub malformed: usize,
    /// Entries skipped because they lack what a reading needs.
    pub incomplete: usize,
}

/// An open NETLINK_NETFILTER socket, in the network namespace of the thread that opened it.
pub struct CtSocket {
    fd: RefCell<OwnedFd>,
    /// The receive buffer, reused by every dump (taken while one runs).
    buffer: Cell<Vec<u8>>,
    seq: Cell<u32>,
    /// A dump stopped before its end: its rest may still be queued, so the next dump opens a
    /// fresh socket (the kernel refuses a second dump while one runs on a socket).
    dirty: Cell<bool>,
}

fn open_socket() -> Result<OwnedFd, NetmonError> {
    let os =
        |what: &str| NetmonError::Conntrack(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: plain socket(2); the descriptor is owned right below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(os("opening the netlink socket"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; all zero binds to a port id the kernel picks.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the address is a valid sockaddr_nl of the length given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(os("binding the netlink socket"));
    }
    // A dump that stalls must not stop the poll loop forever.
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(os("setting the netlink receive timeout"));
    }
    Ok(fd)
}

impl CtSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetmonError> {
        Ok(Self {
            fd: RefCell::new(open_socket()?),
            buffer: Cell::new(Vec::new()),
            seq: Cell::new(0),
            dirty: Cell::new(false),
        })
    }

    /// Starts a dump of the whole table (every address family). The dump yields one reading
    /// per entry as it reads them, or an error that ends it.
    pub fn dump(&self) -> Result<Dump<'_>, NetmonError> {
        if self.dirty.get() {
            let mut fd = self.fd.try_borrow_mut().map_err(|_| {
                NetmonError::Conntrack("a dump is still being read on this socket".into())
            })?;
            *fd = open_socket()?;
            self.dirty.set(false);
        }
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        let mut request = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
        request[0..4].copy_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
        let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
        request[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        request[6..8].copy_from_slice(&flags.to_ne_bytes());
        request[8..12].copy_from_slice(&seq.to_ne_bytes());
        // nfgenmsg: AF_UNSPEC dumps every family; version 0; resource id 0.
        request[16] = libc::AF_UNSPEC as u8;
        request[17] = NFNETLINK_V0;
        // SAFETY: sockaddr_nl is plain data; port id 0 is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        loop {
            // SAFETY: the request and the address are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.borrow().as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if sent >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.dirty.set(true);
                return Err(NetmonError::Conntrack(format!(
                    "sending the dump request: {e}"
                )));
            }
        }
        let mut buffer = self.buffer.take();
        buffer.resize(BUFFER, 0);
        Ok(Dump {
            socket: self,
            buffer,
            len: 0,
            offset: 0,
            seq,
            finished: false,
            stats: DumpStats::default(),
        })
    }

    /// Receives one datagram into `buffer`: its length.
    fn receive(&self, buffer: &mut [u8]) -> Result<usize, NetmonError> {
        loop {
            // SAFETY: the buffer is valid for writes of its length. MSG_TRUNC makes the call
            // return the datagram's real length, so a cut one is noticed.
            let n = unsafe {
                libc::recv(
                    self.fd.borrow().as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > buffer.len() {
                    return Err(NetmonError::Conntrack(format!(
                        "a dump datagram of {n} bytes does not fit the {} byte buffer",
                        buffer.len()
                    )));
                }
                return Ok(n);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    return Err(NetmonError::Conntrack(
                        "the kernel dropped dump messages (ENOBUFS); the next poll reads again"
                            .into(),
                    ));
                }
                _ => return Err(NetmonError::Conntrack(format!("reading the dump: {e}"))),
            }
        }
    }
}

/// A dump in progress: an iterator of readings, read datagram by datagram.
pub struct Dump<'s> {
    socket: &'s CtSocket,
    buffer: Vec<u8>,
    len: usize,
    offset: usize,
    seq: u32,
    finished: bool,
    stats: DumpStats,
}

impl Dump<'_> {
    /// What the dump read so far.
    pub fn stats(&self) -> DumpStats {
        self.stats
    }

    fn fail(&mut self, e: NetmonError) -> Option<Result<Reading, NetmonError>> {
        self.finished = true;
        self.socket.dirty.set(true);
        Some(Err(e))
    }
}

impl Iterator for Dump<'_> {
    type Item = Result<Reading, NetmonError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            let message = match next_message(&self.buffer[..self.len], &mut self.offset, self.seq) {
                None => {
                    match self.socket.receive(&mut self.buffer) {
                        Ok(n) => self.len = n,
                        Err(e) => return self.fail(e),
                    }
                    self.offset = 0;
                    continue;
                }
                Some(Err(_)) => {
                    self.stats.malformed += 1;
                    continue;
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Entry(attributes) => match parse_entry(attributes) {
                    Ok(reading) => {
                        self.stats.entries += 1;
                        return Some(Ok(reading));
                    }
                    Err(Skip::Malformed) => self.stats.malformed += 1,
                    Err(Skip::Incomplete) => self.stats.incomplete += 1,
                },
                Message::Done => {
                    self.finished = true;
                    if self.stats.malformed > 0 || self.stats.incomplete > 0 {
                        tracing::warn!(
                            "conntrack dump: {} entries skipped as malformed, {} without the tuples a reading needs",
                            self.stats.malformed,
                            self.stats.incomplete
                        );
                    }
                    return None;
                }
                Message::Error(0) | Message::Other => {}
                Message::Error(errno) => {
                    let e = std::io::Error::from_raw_os_error(errno);
                    return self.fail(NetmonError::Conntrack(format!(
                        "the kernel refused the dump: {e}"
                    )));
                }
                Message::Overrun => {
                    return self.fail(NetmonError::Conntrack(
                        "the kernel lost dump messages (NLMSG_OVERRUN)".into(),
                    ));
                }
            }
        }
    }
}

impl Drop for Dump<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.socket.dirty.set(true);
        }
        self.socket.buffer.set(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn nested(kind: u16, children: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &children.concat())
    }

    fn ip(src: &str, dst: &str) -> Vec<u8> {
        let octets = |a: &str| match a.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let (s, d) = if src.contains(':') {
            (CTA_IP_V6_SRC, CTA_IP_V6_DST)
        } else {
            (CTA_IP_V4_SRC, CTA_IP_V4_DST)
        };
        nested(
            CTA_TUPLE_IP,
            &[attr(s, &octets(src)), attr(d, &octets(dst))],
        )
    }

    fn tuple_attr(kind: u16, src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        nested(
            kind,
            &[
                ip(src, dst),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[proto]),
                        attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                        attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    fn counter_attr(kind: u16, bytes: u64, packets: u64) -> Vec<u8> {
        nested(
            kind,
            &[
                attr(CTA_COUNTERS_PACKETS, &packets.to_be_bytes()),
                attr(CTA_COUNTERS_BYTES, &bytes.to_be_bytes()),
            ],
        )
    }

    /// The DNAT example: a pod connects to a Service's ClusterIP 10.96.0.10:80, kube-proxy
    /// sends it to the endpoint 10.244.1.7:8080, which answers.
    fn dnat_entry() -> Vec<Vec<u8>> {
        vec![
            tuple_attr(CTA_TUPLE_ORIG, "10.244.0.5", "10.96.0.10", 6, 40000, 80),
            tuple_attr(CTA_TUPLE_REPLY, "10.244.1.7", "10.244.0.5", 6, 8080, 40000),
            attr(CTA_ID, &42u32.to_be_bytes()),
            counter_attr(CTA_COUNTERS_ORIG, 180, 3),
            counter_attr(CTA_COUNTERS_REPLY, 1500, 2),
        ]
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&(libc::NLM_F_MULTI as u16).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&77u32.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(align4(out.len()), 0);
        out
    }

    fn entry_message(seq: u32, attributes: &[u8]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
        body.extend_from_slice(attributes);
        message(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW, seq, &body)
    }

    #[test]
    fn a_dnatted_connection_is_keyed_by_the_endpoint_that_answered() {
        let reading = parse_entry(&dnat_entry().concat()).unwrap();
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
    }

    #[test]
    fn the_start_time_tells_a_reused_id_apart() {
        let started: u64 = 0x1234_5678_9abc_def0;
        let mut entry = dnat_entry();
        entry.push(nested(
            CTA_TIMESTAMP,
            &[attr(CTA_TIMESTAMP_START, &started.to_be_bytes())],
        ));
        let reading = parse_entry(&entry.concat()).unwrap();
        assert_eq!(
            reading.entry.id,
            42 ^ (started ^ (started >> 32)) as u32,
            "the id mixes in the start time"
        );
        assert_ne!(reading.entry.id, 42);
    }

    #[test]
    fn ipv6_icmp_and_missing_counters() {
        // ICMPv6 has no ports: both are 0 whatever the tuple holds; no counters (accounting
        // off) read as zero.
        let entry = [
            tuple_attr(CTA_TUPLE_ORIG, "fd77::1", "fd77::2", 58, 7, 9),
            tuple_attr(CTA_TUPLE_REPLY, "fd77::2", "fd77::1", 58, 7, 9),
        ]
        .concat();
        let reading = parse_entry(&entry).unwrap();
        assert_eq!(reading.entry.key.src, "fd77::1".parse::<IpAddr>().unwrap());
        assert_eq!(reading.entry.key.dst, "fd77::2".parse::<IpAddr>().unwrap());
        assert_eq!((reading.entry.key.dst_port, reading.entry.src_port), (0, 0));
        assert_eq!(reading.entry.key.protocol, 58);
        assert!(reading.counters.is_zero());
        assert_eq!(reading.entry.id, 0);
    }

    #[test]
    fn without_a_reply_port_the_original_destination_port_counts() {
        let entry = [
            tuple_attr(CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2", 17, 5000, 53),
            nested(CTA_TUPLE_REPLY, &[ip("10.0.0.2", "10.0.0.1")]),
        ]
        .concat();
        let reading = parse_entry(&entry).unwrap();
        assert_eq!(reading.entry.key.dst_port, 53);
        assert_eq!(reading.entry.src_port, 5000);
    }

    #[test]
    fn entries_without_tuples_are_incomplete() {
        assert_eq!(parse_entry(&[]), Err(Skip::Incomplete));
        let only_origin = tuple_attr(CTA_TUPLE_ORIG, "10.0.0.1", "10.0.0.2", 6, 1, 2);
        assert_eq!(parse_entry(&only_origin), Err(Skip::Incomplete));
        // No protocol in the original tuple.
        let entry = [
            nested(CTA_TUPLE_ORIG, &[ip("10.0.0.1", "10.0.0.2")]),
            tuple_attr(CTA_TUPLE_REPLY, "10.0.0.2", "10.0.0.1", 6, 2, 1),
        ]
        .concat();
        assert_eq!(parse_entry(&entry), Err(Skip::Incomplete));
        // No addresses at all.
        let entry = [
            nested(
                CTA_TUPLE_ORIG,
                &[nested(CTA_TUPLE_PROTO, &[attr(CTA_PROTO_NUM, &[6])])],
            ),
            nested(CTA_TUPLE_REPLY, &[]),
        ]
        .concat();
        assert_eq!(parse_entry(&entry), Err(Skip::Incomplete));
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let good = dnat_entry().concat();
        // Cut anywhere inside the last attribute: its length points past the end.
        for cut in 1..8 {
            assert_eq!(
                parse_entry(&good[..good.len() - cut]),
                Err(Skip::Malformed),
                "cut {cut}"
            );
        }
        // An attribute length below its header.
        let mut bad = good.clone();
        bad[0..2].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse_entry(&bad), Err(Skip::Malformed));
        // An IPv4 address of 3 bytes, a counter of 4, a protocol of 2.
        let entry = [
            nested(
                CTA_TUPLE_ORIG,
                &[nested(CTA_TUPLE_IP, &[attr(CTA_IP_V4_SRC, &[10, 0, 0])])],
            ),
            dnat_entry()[1].clone(),
        ]
        .concat();
        assert_eq!(parse_entry(&entry), Err(Skip::Malformed));
        let mut entry = dnat_entry();
        entry[3] = nested(
            CTA_COUNTERS_ORIG,
            &[attr(CTA_COUNTERS_BYTES, &[0, 0, 0, 1])],
        );
        assert_eq!(parse_entry(&entry.concat()), Err(Skip::Malformed));
        let mut entry = dnat_entry();
        entry[0] = nested(
            CTA_TUPLE_ORIG,
            &[nested(CTA_TUPLE_PROTO, &[attr(CTA_PROTO_NUM, &[6, 0])])],
        );
        assert_eq!(parse_entry(&entry.concat()), Err(Skip::Malformed));
    }

    #[test]
    fn a_datagram_holds_entries_then_done_and_stale_messages_are_ignored() {
        let entry = dnat_entry().concat();
        let datagram = [
            entry_message(5, &entry),
            entry_message(4, &entry), // an earlier dump's leftover
            message(libc::NLMSG_NOOP as u16, 5, &[]),
            entry_message(5, &entry),
            message(libc::NLMSG_DONE as u16, 5, &0i32.to_ne_bytes()),
        ]
        .concat();
        let mut offset = 0;
        let mut messages = Vec::new();
        while let Some(m) = next_message(&datagram, &mut offset, 5) {
            messages.push(m.unwrap());
        }
        assert_eq!(
            messages,
            vec![
                Message::Entry(&entry),
                Message::Other,
                Message::Other,
                Message::Entry(&entry),
                Message::Done
            ]
        );
    }

    #[test]
    fn the_kernels_error_and_a_cut_header_are_reported() {
        let mut body = (-libc::EPERM).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; NLMSG_HDRLEN]); // the request that failed
        let datagram = message(libc::NLMSG_ERROR as u16, 9, &body);
        let mut offset = 0;
        assert_eq!(
            next_message(&datagram, &mut offset, 9),
            Some(Ok(Message::Error(libc::EPERM)))
        );
        assert_eq!(next_message(&datagram, &mut offset, 9), None);
        // A header whose length runs past the datagram ends it as malformed.
        let mut cut = entry_message(9, &dnat_entry().concat());
        cut.truncate(cut.len() - 4);
        let mut offset = 0;
        assert_eq!(
            next_message(&cut, &mut offset, 9),
            Some(Err(Skip::Malformed))
        );
        assert_eq!(next_message(&cut, &mut offset, 9), None);
        let mut offset = 0;
        assert_eq!(
            next_message(&cut[..10], &mut offset, 9),
            Some(Err(Skip::Malformed))
        );
    }

    #[test]
    fn a_dump_left_unfinished_does_not_spoil_the_next() {
        // A real socket in this process's network namespace (needs CAP_NET_ADMIN; the test
        // command runs as root). The table may be empty: the dump still ends with NLMSG_DONE.
        let socket = CtSocket::open().expect("a NETLINK_NETFILTER socket (run as root)");
        let abandoned = socket.dump().unwrap();
        drop(abandoned);
        assert!(socket.dirty.get(), "an unfinished dump marks the socket");
        let mut dump = socket.dump().unwrap();
        let readings: Result<Vec<_>, _> = dump.by_ref().collect();
        let readings = readings.unwrap();
        assert_eq!(dump.stats().entries, readings.len());
        drop(dump);
        assert!(!socket.dirty.get(), "a fresh socket, dumped to its end");
        let again: Result<Vec<_>, _> = socket.dump().unwrap().collect();
        again.unwrap();
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_entry(&bytes);
            let mut offset = 0;
            let mut steps = 0;
            while let Some(m) = next_message(&bytes, &mut offset, 0) {
                if let Ok(Message::Entry(attributes)) = m {
                    let _ = parse_entry(attributes);
                }
                steps += 1;
                proptest::prop_assert!(steps <= bytes.len() / 4 + 1, "the walk moves forward");
            }
        }

        #[test]
        fn a_corrupted_entry_never_panics(position in 0usize..200, value in proptest::num::u8::ANY) {
            // Arbitrary bytes rarely look like attributes; flipping one byte of a real entry
            // reaches the nested parsers.
            let mut entry = dnat_entry().concat();
            let position = position % entry.len();
            entry[position] = value;
            let _ = parse_entry(&entry);
            let mut truncated = entry.clone();
            truncated.truncate(position);
            let _ = parse_entry(&truncated);
        }
    }
}
