//! Delta accounting: turns readings of monotonic counters (conntrack entries, eBPF map slots)
//! into the traffic of each flow since the last flush.
//!
//! Every source entry (one conntrack connection, one eBPF map key) is remembered with its last
//! reading. Each poll adds `reading - last` to the flow's pending totals; a reading smaller
//! than the last one means the counters were reset (the entry was zeroed, or replaced by a new
//! connection with the same tuple) and the whole reading is new traffic. Entries missing from
//! a poll are gone and forgotten; entries whose counters have not moved for the idle timeout
//! are forgotten too, so the cache holds only live traffic. Flushing hands out the pending
//! totals and starts from zero. Both maps are bounded: past the limit, new flows are counted
//! as dropped rather than growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// A flow as the appliance sees it: source, destination, destination port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The local end that opened the flow.
    pub src: IpAddr,
    /// The far end (after DNAT: the endpoint that actually answered).
    pub dst: IpAddr,
    /// The far end's port (0 for protocols without ports).
    pub dst_port: u16,
    /// The IP protocol number (6 TCP, 17 UDP, …).
    pub protocol: u8,
}

/// The name of an IP protocol number, as written to `network_flows.protocol`.
pub fn protocol_name(number: u8) -> String {
    match number {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => format!("ip-{other}"),
    }
}

/// Bytes and packets both ways: TX from the source, RX back to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

impl Counters {
    /// True when any counter is below `last`'s: the source was reset.
    fn went_back_from(&self, last: &Counters) -> bool {
        self.tx_bytes < last.tx_bytes
            || self.tx_packets < last.tx_packets
            || self.rx_bytes < last.rx_bytes
            || self.rx_packets < last.rx_packets
    }

    fn minus(&self, last: &Counters) -> Counters {
        Counters {
            tx_bytes: self.tx_bytes - last.tx_bytes,
            tx_packets: self.tx_packets - last.tx_packets,
            rx_bytes: self.rx_bytes - last.rx_bytes,
            rx_packets: self.rx_packets - last.rx_packets,
        }
    }

    fn add(&mut self, other: &Counters) {
        self.tx_bytes = self.tx_bytes.saturating_add(other.tx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(other.tx_packets);
        self.rx_bytes = self.rx_bytes.saturating_add(other.rx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(other.rx_packets);
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// Identifies one counter source entry: its flow, plus what tells two connections of the same
/// flow apart (conntrack: the source port and the entry id; eBPF: nothing, both zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub key: FlowKey,
    pub src_port: u16,
    pub id: u32,
}

/// One reading of one entry's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub entry: EntryId,
    pub counters: Counters,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    counters: Counters,
    seen_in_poll: u64,
    changed_in_poll: u64,
}

/// Limits of the accounting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries remembered between polls.
    pub max_entries: usize,
    /// Flows with pending traffic between flushes.
    pub max_flows: usize,
    /// Polls without any change after which an entry is forgotten (`u64::MAX`: never; right
    /// for conntrack, whose entries expire by themselves and would otherwise be counted twice
    /// when they wake up).
    pub idle_polls: u64,
}

impl Limits {
    /// Limits for a poll interval and an idle timeout.
    pub fn new(max_entries: usize, max_flows: usize, poll: Duration, idle: Duration) -> Self {
        let idle_polls = (idle.as_millis() / poll.as_millis().max(1)).max(1) as u64;
        Self {
            max_entries,
            max_flows,
            idle_polls,
        }
    }
}

/// What a poll or a flush did, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Entries read.
    pub entries: usize,
    /// Entries whose counters went back (reset) since the last poll.
    pub resets: usize,
    /// Entries forgotten because they disappeared or stayed idle.
    pub expired: usize,
    /// Readings not accounted because a limit was reached.
    pub dropped: usize,
}

/// The delta accounting of one agent.
#[derive(Debug)]
pub struct FlowTable {
    limits: Limits,
    last: HashMap<EntryId, Last>,
    pending: HashMap<FlowKey, Counters>,
    idle: Vec<EntryId>,
    poll: u64,
    /// The first poll after start only records a baseline: traffic from before the agent ran
    /// belongs to no window it reports.
    baseline_done: bool,
}

impl FlowTable {
    /// An empty table.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            last: HashMap::new(),
            pending: HashMap::new(),
            idle: Vec::new(),
            poll: 0,
            baseline_done: false,
        }
    }

    /// An empty table whose first poll already counts (for sources that start empty, such as
    /// a freshly created eBPF map).
    pub fn without_baseline(limits: Limits) -> Self {
        let mut table = Self::new(limits);
        table.baseline_done = true;
        table
    }

    /// Accounts one complete reading of the source (every live entry once).
    pub fn poll(&mut self, readings: impl IntoIterator<Item = Reading>) -> PollStats {
        match self.try_poll(readings.into_iter().map(Ok::<_, std::convert::Infallible>)) {
            Ok(stats) => stats,
            Err(never) => match never {},
        }
    }

    /// Accounts a reading of the source that streams in and may fail part way (a netlink
    /// dump). The readings before an error count as usual, but the poll is incomplete: the
    /// entries it did not reach are kept, not forgotten (forgetting them would count their
    /// whole counters again when the next poll finds them), and a first poll stays a
    /// baseline.
    pub fn try_poll<E>(
        &mut self,
        readings: impl IntoIterator<Item = Result<Reading, E>>,
    ) -> Result<PollStats, E> {
        self.poll += 1;
        let poll = self.poll;
        let counting = self.baseline_done;
        let mut stats = PollStats::default();
        for reading in readings {
            let reading = reading?;
            stats.entries += 1;
            let delta = match self.last.get_mut(&reading.entry) {
                Some(last) => {
                    let delta = if reading.counters.went_back_from(&last.counters) {
                        stats.resets += 1;
                        reading.counters
                    } else {
                        reading.counters.minus(&last.counters)
                    };
                    last.counters = reading.counters;
                    last.seen_in_poll = poll;
                    if !delta.is_zero() {
                        last.changed_in_poll = poll;
                    }
                    delta
                }
                None => {
                    if self.last.len() >= self.limits.max_entries {
                        stats.dropped += 1;
                        continue;
                    }
                    self.last.insert(
                        reading.entry,
                        Last {
                            counters: reading.counters,
                            seen_in_poll: poll,
                            changed_in_poll: poll,
                        },
                    );
                    if counting {
                        reading.counters
                    } else {
                        Counters::default()
                    }
                }
            };
            if delta.is_zero() {
                continue;
            }
            let key = reading.entry.key;
            if let Some(pending) = self.pending.get_mut(&key) {
                pending.add(&delta);
            } else if self.pending.len() < self.limits.max_flows {
                self.pending.insert(key, delta);
            } else {
                stats.dropped += 1;
            }
        }
        let idle_polls = self.limits.idle_polls;
        let before = self.last.len();
        let idle = &mut self.idle;
        self.last.retain(|entry, last| {
            if last.seen_in_poll != poll {
                return false;
            }
            if poll - last.changed_in_poll >= idle_polls {
                idle.push(*entry);
                return false;
            }
            true
        });
        stats.expired = before - self.last.len();
        self.baseline_done = true;
        Ok(stats)
    }

    /// The entries forgotten for being idle since the last call. A source whose counters
    /// live on after that (an eBPF map) must delete them, so they restart from zero.
    pub fn take_idle(&mut self) -> Vec<EntryId> {
        std::mem::take(&mut self.idle)
    }

    /// True when the entry is still remembered (not expired).
    pub fn remembers(&self, entry: &EntryId) -> bool {
        self.last.contains_key(entry)
    }

    /// Entries remembered now.
    pub fn entries(&self) -> usize {
        self.last.len()
    }

    /// The traffic of every flow since the last flush, sorted by flow; starts a new window.
    pub fn flush(&mut self) -> Vec<(FlowKey, Counters)> {
        let mut flows: Vec<_> = self.pending.drain().collect();
        flows.sort_by_key(|(key, _)| *key);
        // Give memory back after a burst instead of keeping the peak's capacity forever.
        if self.pending.capacity() > 4 * self.limits.max_flows.min(1024) {
            self.pending.shrink_to(1024);
        }
        flows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dst: &str) -> FlowKey {
        FlowKey {
            src: "10.0.0.1".parse().unwrap(),
            dst: dst.parse().unwrap(),
            dst_port: 443,
            protocol: 6,
        }
    }

    fn reading(dst: &str, src_port: u16, id: u32, tx: u64, rx: u64) -> Reading {
        Reading {
            entry: EntryId {
                key: key(dst),
                src_port,
                id,
            },
            counters: Counters {
                tx_bytes: tx,
                tx_packets: tx / 100,
                rx_bytes: rx,
                rx_packets: rx / 100,
            },
        }
    }

    fn limits() -> Limits {
        Limits {
            max_entries: 100,
            max_flows: 100,
            idle_polls: 3,
        }
    }

    fn totals(flows: &[(FlowKey, Counters)]) -> Vec<(String, u64, u64)> {
        flows
            .iter()
            .map(|(k, c)| (k.dst.to_string(), c.tx_bytes, c.rx_bytes))
            .collect()
    }

    #[test]
    fn first_poll_is_a_baseline_then_deltas_per_window() {
        let mut table = FlowTable::new(limits());
        table.poll([reading("1.1.1.1", 5000, 1, 1000, 2000)]);
        assert!(table.flush().is_empty(), "history before the agent started");
        table.poll([reading("1.1.1.1", 5000, 1, 1500, 2600)]);
        table.poll([reading("1.1.1.1", 5000, 1, 1800, 2700)]);
        assert_eq!(totals(&table.flush()), vec![("1.1.1.1".into(), 800, 700)]);
        table.poll([reading("1.1.1.1", 5000, 1, 1900, 2700)]);
        assert_eq!(totals(&table.flush()), vec![("1.1.1.1".into(), 100, 0)]);
        assert!(table.flush().is_empty());
    }

    #[test]
    fn new_entries_after_the_baseline_count_in_full() {
        let mut table = FlowTable::new(limits());
        table.poll([]);
        table.poll([reading("1.1.1.1", 5000, 1, 300, 400)]);
        assert_eq!(packets(&table.flush()), vec![(3, 4)]);
    }

    fn packets(flows: &[(FlowKey, Counters)]) -> Vec<(u64, u64)> {
        flows
            .iter()
            .map(|(_, c)| (c.tx_packets, c.rx_packets))
            .collect()
    }

    #[test]
    fn a_counter_that_goes_back_was_reset() {
        let mut table = FlowTable::without_baseline(limits());
        let stats = table.poll([reading("1.1.1.1", 5000, 1, 1000, 1000)]);
        assert_eq!(stats.resets, 0);
        let stats = table.poll([reading("1.1.1.1", 5000, 1, 200, 1100)]);
        assert_eq!(stats.resets, 1);
        // 1000 + 1000 before, then the whole reading after the reset (200 tx, 1100 rx).
        assert_eq!(totals(&table.flush()), vec![("1.1.1.1".into(), 1200, 2100)]);
    }

    #[test]
    fn connections_of_one_flow_add_up() {
        let mut table = FlowTable::without_baseline(limits());
        table.poll([
            reading("1.1.1.1", 5000, 1, 100, 10),
            reading("1.1.1.1", 5001, 2, 200, 20),
            reading("2.2.2.2", 5002, 3, 1, 1),
        ]);
        assert_eq!(
            totals(&table.flush()),
            vec![("1.1.1.1".into(), 300, 30), ("2.2.2.2".into(), 1, 1)]
        );
    }

    #[test]
    fn gone_and_idle_entries_are_forgotten() {
        let mut table = FlowTable::without_baseline(limits());
        let a = reading("1.1.1.1", 5000, 1, 100, 10);
        let b = reading("2.2.2.2", 5000, 2, 100, 10);
        table.poll([a, b]);
        let stats = table.poll([a]);
        assert_eq!(stats.expired, 1, "b disappeared");
        assert!(!table.remembers(&b.entry));
        table.poll([a]);
        assert!(table.remembers(&a.entry));
        let stats = table.poll([a]);
        assert_eq!(stats.expired, 1, "a idle for 3 polls");
        assert_eq!(table.entries(), 0);
        assert_eq!(table.take_idle(), vec![a.entry], "b was gone, not idle");
        assert!(table.take_idle().is_empty());
        // Seen again after expiry: a new entry, counted in full (it is new traffic).
        table.poll([reading("1.1.1.1", 5000, 1, 150, 10)]);
        assert_eq!(
            totals(&table.flush()),
            vec![
                ("1.1.1.1".into(), 100 + 150, 10 + 10),
                ("2.2.2.2".into(), 100, 10)
            ]
        );
    }

    #[test]
    fn memory_is_bounded_and_overflow_is_counted() {
        let mut table = FlowTable::without_baseline(Limits {
            max_entries: 3,
            max_flows: 2,
            idle_polls: 10,
        });
        let stats = table.poll([
            reading("1.1.1.1", 1, 1, 1, 1),
            reading("1.1.1.2", 1, 2, 1, 1),
            reading("1.1.1.3", 1, 3, 1, 1),
            reading("1.1.1.4", 1, 4, 1, 1),
        ]);
        assert_eq!(
            stats.dropped, 2,
            "one entry over max_entries, one flow over max_flows"
        );
        assert_eq!(table.entries(), 3);
        assert_eq!(table.flush().len(), 2);
    }

    #[test]
    fn idle_polls_follow_the_intervals() {
        let limits = Limits::new(1, 1, Duration::from_secs(5), Duration::from_secs(120));
        assert_eq!(limits.idle_polls, 24);
        assert_eq!(protocol_name(6), "tcp");
        assert_eq!(protocol_name(17), "udp");
        assert_eq!(protocol_name(99), "ip-99");
    }

    #[test]
    fn a_cut_poll_forgets_nothing_it_did_not_reach() {
        let mut table = FlowTable::new(Limits {
            max_entries: 10,
            max_flows: 10,
            idle_polls: u64::MAX,
        });
        let a = |tx| reading("1.1.1.1", 1, 1, tx, 0);
        let b = |tx| reading("2.2.2.2", 1, 2, tx, 0);
        // A baseline cut after `a`: it stays a baseline, so `b` is not counted whole later.
        let cut = table.try_poll([Ok(a(100)), Err("ENOBUFS")]);
        assert_eq!(cut, Err("ENOBUFS"));
        table.poll([a(100), b(500)]);
        assert!(table.flush().is_empty(), "still the baseline");
        // Both move; the dump breaks after `a`: `a` counts, `b` is kept, not forgotten.
        let cut = table.try_poll([Ok(a(300)), Err("EINTR")]);
        assert!(cut.is_err());
        assert!(table.remembers(&b(0).entry));
        assert_eq!(totals(&table.flush()), vec![("1.1.1.1".into(), 200, 0)]);
        // The next complete poll counts only `b`'s new traffic, never its whole counters.
        let stats = table.try_poll([Ok::<_, &str>(a(300)), Ok(b(700))]).unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(totals(&table.flush()), vec![("2.2.2.2".into(), 200, 0)]);
    }
}
