//! IP address → domain, learnt from DNS answers, each entry living a fixed TTL (2 minutes by
//! default) from the last answer that named it. Bounded: when full, expired entries go first,
//! then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The domain names recently answered for each address.
#[derive(Debug)]
pub struct DomainMap {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<IpAddr, (String, Instant)>,
}

impl DomainMap {
    /// An empty map whose entries live `ttl` and that holds at most `max_entries`.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
        }
    }

    /// Remembers that `domain` resolved to `ip` at `now` (refreshing the entry).
    pub fn learn(&mut self, ip: IpAddr, domain: &str, now: Instant) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.max_entries {
            self.expire(now);
            if self.entries.len() >= self.max_entries
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(ip, _)| *ip)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries
            .insert(ip, (domain.to_string(), now + self.ttl));
    }

    /// The domain `ip` was last answered for, if that was less than the TTL before `now`.
    pub fn lookup(&self, ip: &IpAddr, now: Instant) -> Option<&str> {
        self.entries
            .get(ip)
            .filter(|(_, until)| *until > now)
            .map(|(domain, _)| domain.as_str())
    }

    /// Drops every entry past its TTL.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, (_, until)| *until > now);
    }

    /// Entries held (expired ones included until the next `expire`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_their_ttl_and_refresh() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(120);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let mut map = DomainMap::new(ttl, 10);
        map.learn(ip, "api.example.com", t0);
        assert_eq!(
            map.lookup(&ip, t0 + Duration::from_secs(119)),
            Some("api.example.com")
        );
        assert_eq!(map.lookup(&ip, t0 + ttl), None);
        map.learn(ip, "cdn.example.net", t0 + Duration::from_secs(100));
        assert_eq!(
            map.lookup(&ip, t0 + Duration::from_secs(200)),
            Some("cdn.example.net")
        );
        map.expire(t0 + Duration::from_secs(300));
        assert!(map.is_empty());
    }

    #[test]
    fn full_maps_drop_expired_then_oldest() {
        let t0 = Instant::now();
        let mut map = DomainMap::new(Duration::from_secs(10), 2);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        map.learn(ip(1), "one", t0);
        map.learn(ip(2), "two", t0 + Duration::from_secs(5));
        map.learn(ip(3), "three", t0 + Duration::from_secs(6));
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.lookup(&ip(1), t0 + Duration::from_secs(6)),
            None,
            "oldest went"
        );
        map.learn(ip(4), "four", t0 + Duration::from_secs(15));
        assert_eq!(map.len(), 2, "two expired, so only three and four remain");
        assert_eq!(
            map.lookup(&ip(3), t0 + Duration::from_secs(15)),
            Some("three")
        );
        assert_eq!(
            map.lookup(&ip(4), t0 + Duration::from_secs(15)),
            Some("four")
        );
    }
}
