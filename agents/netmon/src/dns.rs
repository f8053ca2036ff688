//! A DNS response parser (RFC 1035 wire format): the question, A and AAAA answers, and the
//! CNAME chain that leads to them. It reads only what it needs, follows compression
//! pointers with a hop limit, and rejects truncated or malformed packets with an error; it
//! never panics on any input (fuzzed with proptest below).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A record type Tally understands in answers.
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// The longest name DNS allows, in presentation form (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Compression pointers followed per name before the name is called a loop.
const MAX_POINTER_HOPS: usize = 32;
/// Answers read per response; the rest are ignored (a response carries a handful).
const MAX_ANSWERS: usize = 64;

/// Why a packet is not a DNS response Tally can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("the packet ends inside {0}")]
    Truncated(&'static str),
    #[error("the packet is a query, not a response")]
    NotAResponse,
    #[error("the response carries {0} questions; exactly one is expected")]
    QuestionCount(u16),
    #[error("a name is malformed: {0}")]
    BadName(&'static str),
    #[error("a {kind} record has {len} bytes of data")]
    BadRecord { kind: &'static str, len: u16 },
}

/// What one DNS response says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResponse {
    /// The transaction id.
    pub id: u16,
    /// The response code (0 is NOERROR, 3 NXDOMAIN).
    pub rcode: u8,
    /// The name asked, lower case, without the trailing dot.
    pub query_name: String,
    /// The type asked: `A`, `AAAA`, `CNAME`, or `TYPE<n>`.
    pub query_type: String,
    /// The CNAMEs followed from the query name, in order (empty when there were none).
    pub cname_chain: Vec<String>,
    /// The addresses the chain ends at (A and AAAA records of the last name).
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL among the answers used, in seconds (0 when there are none).
    pub ttl_seconds: u32,
}

impl DnsResponse {
    /// The name the addresses belong to: the last CNAME, or the query name.
    pub fn canonical_name(&self) -> &str {
        self.cname_chain.last().unwrap_or(&self.query_name)
    }
}

/// The name of a query type as `dig` prints it.
pub fn type_name(qtype: u16) -> String {
    match qtype {
        TYPE_A => "A".into(),
        TYPE_CNAME => "CNAME".into(),
        TYPE_AAAA => "AAAA".into(),
        2 => "NS".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        other => format!("TYPE{other}"),
    }
}

struct Reader<'a> {
    packet: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&self, at: usize, len: usize, what: &'static str) -> Result<&'a [u8], DnsError> {
        at.checked_add(len)
            .and_then(|end| self.packet.get(at..end))
            .ok_or(DnsError::Truncated(what))
    }

    fn u16(&self, at: usize, what: &'static str) -> Result<u16, DnsError> {
        let b = self.bytes(at, 2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&self, at: usize, what: &'static str) -> Result<u32, DnsError> {
        let b = self.bytes(at, 4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads the name starting at `at`; returns it (lower case, dotted, no trailing dot) and
    /// the offset just past it in the record (past the first pointer when compressed).
    fn name(&self, at: usize) -> Result<(String, usize), DnsError> {
        let mut name = String::new();
        let mut pos = at;
        let mut end_in_record = None;
        let mut hops = 0;
        loop {
            let len = *self.packet.get(pos).ok_or(DnsError::Truncated("a name"))?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    let end = end_in_record.unwrap_or(pos + 1);
                    return Ok((name, end));
                }
                0x00 => {
                    let label = self.bytes(pos + 1, len as usize, "a label")?;
                    if !name.is_empty() {
                        name.push('.');
                    }
                    for &c in label {
                        // Keep names printable: anything else is escaped as \DDD like dig.
                        if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                            name.push(c.to_ascii_lowercase() as char);
                        } else {
                            name.push_str(&format!("\\{c:03}"));
                        }
                    }
                    if name.len() > MAX_NAME_LEN * 4 {
                        return Err(DnsError::BadName("longer than 255 bytes"));
                    }
                    pos += 1 + len as usize;
                }
                0xC0 => {
                    let low = *self
                        .packet
                        .get(pos + 1)
                        .ok_or(DnsError::Truncated("a compression pointer"))?;
                    let target = (((len & 0x3F) as usize) << 8) | low as usize;
                    end_in_record.get_or_insert(pos + 2);
                    hops += 1;
                    if hops > MAX_POINTER_HOPS {
                        return Err(DnsError::BadName("compression pointers loop"));
                    }
                    if target >= self.packet.len() {
                        return Err(DnsError::BadName("compression pointer past the end"));
                    }
                    pos = target;
                }
                _ => return Err(DnsError::BadName("reserved label type")),
            }
        }
    }
}

/// One resource record of the answer section, as far as Tally needs it.
enum Record {
    Address(String, IpAddr, u32),
    Cname(String, String, u32),
    Other,
}

/// Parses a DNS response (the UDP payload, or a TCP message without its length prefix).
pub fn parse_response(packet: &[u8]) -> Result<DnsResponse, DnsError> {
    let r = Reader { packet };
    let id = r.u16(0, "the header")?;
    let flags = r.u16(2, "the header")?;
    let qdcount = r.u16(4, "the header")?;
    let ancount = r.u16(6, "the header")?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotAResponse);
    }
    if qdcount != 1 {
        return Err(DnsError::QuestionCount(qdcount));
    }
    let rcode = (flags & 0x000F) as u8;
    let (query_name, mut pos) = r.name(12)?;
    let qtype = r.u16(pos, "the question")?;
    let _qclass = r.u16(pos + 2, "the question")?;
    pos += 4;

    let mut records = Vec::new();
    for _ in 0..ancount.min(MAX_ANSWERS as u16) {
        let (owner, after) = r.name(pos)?;
        let rtype = r.u16(after, "a record header")?;
        let class = r.u16(after + 2, "a record header")?;
        let ttl = r.u32(after + 4, "a record header")?;
        let rdlen = r.u16(after + 8, "a record header")?;
        let rdata_at = after + 10;
        let rdata = r.bytes(rdata_at, rdlen as usize, "a record's data")?;
        let record = match (rtype, class) {
            (TYPE_A, CLASS_IN) => {
                let octets: [u8; 4] = rdata.try_into().map_err(|_| DnsError::BadRecord {
                    kind: "A",
                    len: rdlen,
                })?;
                Record::Address(owner, IpAddr::V4(Ipv4Addr::from(octets)), ttl)
            }
            (TYPE_AAAA, CLASS_IN) => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| DnsError::BadRecord {
                    kind: "AAAA",
                    len: rdlen,
                })?;
                Record::Address(owner, IpAddr::V6(Ipv6Addr::from(octets)), ttl)
            }
            (TYPE_CNAME, CLASS_IN) => {
                let (target, target_end) = r.name(rdata_at)?;
                if target_end > rdata_at + rdlen as usize {
                    return Err(DnsError::BadRecord {
                        kind: "CNAME",
                        len: rdlen,
                    });
                }
                Record::Cname(owner, target, ttl)
            }
            _ => Record::Other,
        };
        records.push(record);
        pos = rdata_at + rdlen as usize;
    }

    // Follow the chain from the query name; a loop or a long chain stops at the limit.
    let mut cname_chain: Vec<String> = Vec::new();
    let mut ttl_seconds = u32::MAX;
    let mut current = query_name.clone();
    for _ in 0..records.len() {
        let next = records.iter().find_map(|rec| match rec {
            Record::Cname(owner, target, ttl) if *owner == current => Some((target, *ttl)),
            _ => None,
        });
        match next {
            Some((target, ttl)) if !cname_chain.contains(target) && *target != query_name => {
                ttl_seconds = ttl_seconds.min(ttl);
                cname_chain.push(target.clone());
                current = target.clone();
            }
            _ => break,
        }
    }
    let addresses: Vec<IpAddr> = records
        .iter()
        .filter_map(|rec| match rec {
            Record::Address(owner, ip, ttl) if *owner == current => {
                ttl_seconds = ttl_seconds.min(*ttl);
                Some(*ip)
            }
            _ => None,
        })
        .collect();
    if ttl_seconds == u32::MAX {
        ttl_seconds = 0;
    }
    Ok(DnsResponse {
        id,
        rcode,
        query_name,
        query_type: type_name(qtype),
        cname_chain,
        addresses,
        ttl_seconds,
    })
}

/// Builds DNS responses for tests (this crate's and the end-to-end ones): a real encoder,
/// with compression pointers for owner names, so the parser is tested on what servers send.
pub mod build {
    use std::net::IpAddr;

    /// One answer record.
    #[derive(Debug, Clone)]
    pub enum Answer {
        /// `owner` CNAME `target`.
        Cname(&'static str, &'static str),
        /// `owner` A or AAAA `address`.
        Address(&'static str, IpAddr),
    }

    fn push_name(out: &mut Vec<u8>, name: &str) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// A response to `id` asking `name` (type `qtype`) with `answers`, each with `ttl`.
    /// Owner names equal to the query name are written as a pointer to the question.
    pub fn response(id: u16, name: &str, qtype: u16, answers: &[Answer], ttl: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&0x8180u16.to_be_bytes()); // response, RD, RA, NOERROR
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        push_name(&mut out, name);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        for answer in answers {
            let owner = match answer {
                Answer::Cname(owner, _) | Answer::Address(owner, _) => *owner,
            };
            if owner == name {
                out.extend_from_slice(&[0xC0, 12]);
            } else {
                push_name(&mut out, owner);
            }
            let (rtype, rdata) = match answer {
                Answer::Cname(_, target) => {
                    let mut rdata = Vec::new();
                    push_name(&mut rdata, target);
                    (5u16, rdata)
                }
                Answer::Address(_, IpAddr::V4(ip)) => (1, ip.octets().to_vec()),
                Answer::Address(_, IpAddr::V6(ip)) => (28, ip.octets().to_vec()),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{Answer, response};
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_records_of_the_query_name() {
        let packet = response(
            7,
            "Example.COM",
            1,
            &[
                Answer::Address("Example.COM", ip("93.184.216.34")),
                Answer::Address("Example.COM", ip("93.184.216.35")),
            ],
            300,
        );
        let parsed = parse_response(&packet).unwrap();
        assert_eq!(parsed.id, 7);
        assert_eq!(parsed.query_name, "example.com");
        assert_eq!(parsed.query_type, "A");
        assert!(parsed.cname_chain.is_empty());
        assert_eq!(
            parsed.addresses,
            vec![ip("93.184.216.34"), ip("93.184.216.35")]
        );
        assert_eq!(parsed.ttl_seconds, 300);
        assert_eq!(parsed.canonical_name(), "example.com");
    }

    #[test]
    fn aaaa_records_through_a_cname_chain() {
        let packet = response(
            1,
            "www.shop.io",
            28,
            &[
                Answer::Cname("www.shop.io", "shop.cdn.net"),
                Answer::Cname("shop.cdn.net", "edge.cdn.net"),
                Answer::Address("edge.cdn.net", ip("2001:db8::1")),
                // An address of another name is not an answer to this question.
                Answer::Address("unrelated.net", ip("2001:db8::99")),
            ],
            60,
        );
        let parsed = parse_response(&packet).unwrap();
        assert_eq!(parsed.query_type, "AAAA");
        assert_eq!(parsed.cname_chain, vec!["shop.cdn.net", "edge.cdn.net"]);
        assert_eq!(parsed.addresses, vec![ip("2001:db8::1")]);
        assert_eq!(parsed.canonical_name(), "edge.cdn.net");
    }

    #[test]
    fn compressed_names_inside_cname_data() {
        // A CNAME whose target ends with a pointer to the question's "example.com".
        let mut packet = response(2, "a.example.com", 1, &[], 0);
        packet[7] = 2; // two answers
        packet.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 4]);
        packet.extend_from_slice(&[1, b'b', 0xC0, 14]); // "b" + pointer to "example.com"
        let cname_target_at = packet.len() - 4;
        packet.extend_from_slice(&[0xC0, cname_target_at as u8, 0, 1, 0, 1, 0, 0, 0, 20, 0, 4]);
        packet.extend_from_slice(&[10, 0, 0, 1]);
        let parsed = parse_response(&packet).unwrap();
        assert_eq!(parsed.cname_chain, vec!["b.example.com"]);
        assert_eq!(parsed.addresses, vec![ip("10.0.0.1")]);
        assert_eq!(parsed.ttl_seconds, 20);
    }

    #[test]
    fn nxdomain_has_no_answers() {
        let mut packet = response(3, "nope.example", 1, &[], 0);
        packet[3] |= 3;
        let parsed = parse_response(&packet).unwrap();
        assert_eq!(parsed.rcode, 3);
        assert!(parsed.addresses.is_empty());
        assert_eq!(parsed.ttl_seconds, 0);
    }

    #[test]
    fn truncated_packets_are_rejected_at_every_length() {
        let packet = response(
            4,
            "example.com",
            1,
            &[
                Answer::Cname("example.com", "x.example.net"),
                Answer::Address("x.example.net", ip("192.0.2.1")),
            ],
            60,
        );
        assert!(parse_response(&packet).is_ok());
        for len in 0..packet.len() {
            let err = parse_response(&packet[..len]).unwrap_err();
            assert!(matches!(err, DnsError::Truncated(_)), "{len}: {err}");
        }
    }

    #[test]
    fn malformed_packets_get_a_reason() {
        let good = response(5, "example.com", 1, &[], 0);
        let mut query = good.clone();
        query[2] &= 0x7F;
        assert_eq!(parse_response(&query), Err(DnsError::NotAResponse));

        let mut two_questions = good.clone();
        two_questions[5] = 2;
        assert_eq!(
            parse_response(&two_questions),
            Err(DnsError::QuestionCount(2))
        );

        // A pointer to itself.
        let mut looping = good[..12].to_vec();
        looping.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(
            parse_response(&looping),
            Err(DnsError::BadName("compression pointers loop"))
        );

        let mut reserved = good[..12].to_vec();
        reserved.extend_from_slice(&[0x80, 0, 0, 1, 0, 1]);
        assert_eq!(
            parse_response(&reserved),
            Err(DnsError::BadName("reserved label type"))
        );

        let mut short_a = response(
            6,
            "example.com",
            1,
            &[Answer::Address("example.com", ip("192.0.2.1"))],
            1,
        );
        let at = short_a.len() - 6;
        short_a[at + 1] = 3; // rdlength 3
        short_a.pop();
        assert_eq!(
            parse_response(&short_a),
            Err(DnsError::BadRecord { kind: "A", len: 3 })
        );
    }

    #[test]
    fn cname_loops_end() {
        let packet = response(
            8,
            "a.test",
            1,
            &[
                Answer::Cname("a.test", "b.test"),
                Answer::Cname("b.test", "a.test"),
            ],
            5,
        );
        let parsed = parse_response(&packet).unwrap();
        assert_eq!(parsed.cname_chain, vec!["b.test"]);
        assert!(parsed.addresses.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn never_panics_on_random_bytes(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_response(&packet);
        }

        #[test]
        fn never_panics_on_mutated_responses(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut packet = response(
                9,
                "api.example.com",
                1,
                &[
                    Answer::Cname("api.example.com", "lb.example.net"),
                    Answer::Address("lb.example.net", "198.51.100.7".parse().unwrap()),
                    Answer::Address("lb.example.net", "2001:db8::7".parse().unwrap()),
                ],
                30,
            );
            for (at, value) in edits {
                let at = at % packet.len();
                packet[at] = value;
            }
            packet.truncate(cut % (packet.len() + 1));
            let _ = parse_response(&packet);
        }
    }
}
