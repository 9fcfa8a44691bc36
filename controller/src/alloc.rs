//! Stable TCP and UDP listener port allocation: each (namespace, service, port) keeps its mesh
//! port across rebuilds; a freed port goes back to the pool; a full range is reported per
//! service port. Recovered from the shadow services at start.

use std::collections::{BTreeMap, BTreeSet};

use config_model::{ServiceKey, TrafficType};

use crate::settings::PortRange;

/// Allocations of one range.
#[derive(Clone, Debug)]
struct RangeAllocator {
    range: PortRange,
    by_key: BTreeMap<ServiceKey, u16>,
}

impl RangeAllocator {
    fn new(range: PortRange) -> Self {
        RangeAllocator {
            range,
            by_key: BTreeMap::new(),
        }
    }

    fn seed(&mut self, key: ServiceKey, port: u16) -> bool {
        if !self.range.contains(port) || self.by_key.values().any(|p| *p == port) {
            return false;
        }
        self.by_key.insert(key, port);
        true
    }

    /// Keeps the ports of keys still wanted, frees the others, then gives each new key the
    /// lowest free port. `None` for a key means the range is full.
    fn assign(&mut self, wanted: &[ServiceKey]) -> BTreeMap<ServiceKey, Option<u16>> {
        let wanted_set: BTreeSet<&ServiceKey> = wanted.iter().collect();
        let range = self.range;
        self.by_key
            .retain(|k, p| wanted_set.contains(k) && range.contains(*p));
        let used: BTreeSet<u16> = self.by_key.values().copied().collect();
        let mut free = range.iter().filter(|p| !used.contains(p));
        let mut out = BTreeMap::new();
        for key in wanted {
            let port = match self.by_key.get(key) {
                Some(p) => Some(*p),
                None => {
                    let p = free.next();
                    if let Some(p) = p {
                        self.by_key.insert(key.clone(), p);
                    }
                    p
                }
            };
            out.insert(key.clone(), port);
        }
        out
    }
}

/// TCP and UDP port allocations, kept by the rebuild loop between translations.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    tcp: RangeAllocator,
    udp: RangeAllocator,
}

impl PortAllocator {
    /// An allocator with nothing allocated.
    pub fn new(tcp: PortRange, udp: PortRange) -> Self {
        PortAllocator {
            tcp: RangeAllocator::new(tcp),
            udp: RangeAllocator::new(udp),
        }
    }

    fn range_mut(&mut self, tt: TrafficType) -> Option<&mut RangeAllocator> {
        match tt {
            TrafficType::Tcp => Some(&mut self.tcp),
            TrafficType::Udp => Some(&mut self.udp),
            TrafficType::Http => None,
        }
    }

    /// Records an allocation found in the cluster (a shadow service) before the first rebuild.
    /// Ignored when the port is outside the range or already taken; returns whether it was kept.
    pub fn seed(&mut self, tt: TrafficType, key: ServiceKey, port: u16) -> bool {
        self.range_mut(tt).is_some_and(|r| r.seed(key, port))
    }

    /// The ports for the wanted keys of one traffic type (tcp or udp), in the order given.
    pub fn assign(
        &mut self,
        tt: TrafficType,
        wanted: &[ServiceKey],
    ) -> BTreeMap<ServiceKey, Option<u16>> {
        match self.range_mut(tt) {
            Some(r) => r.assign(wanted),
            None => BTreeMap::new(),
        }
    }

    /// The range of a traffic type.
    pub fn range(&self, tt: TrafficType) -> Option<PortRange> {
        match tt {
            TrafficType::Tcp => Some(self.tcp.range),
            TrafficType::Udp => Some(self.udp.range),
            TrafficType::Http => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, port: u16) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
            port,
        }
    }

    #[test]
    fn stable_reuses_freed_and_reports_exhaustion() {
        let mut a = PortAllocator::new(PortRange::new(100, 102), PortRange::new(200, 200));
        let got = a.assign(TrafficType::Tcp, &[key("a", 1), key("b", 1)]);
        assert_eq!(got[&key("a", 1)], Some(100));
        assert_eq!(got[&key("b", 1)], Some(101));
        // A new service sorted before the others does not move them.
        let got = a.assign(TrafficType::Tcp, &[key("0", 1), key("a", 1), key("b", 1)]);
        assert_eq!(got[&key("0", 1)], Some(102));
        assert_eq!(got[&key("a", 1)], Some(100));
        // Range full: the newcomer gets nothing, the others keep theirs.
        let got = a.assign(
            TrafficType::Tcp,
            &[key("0", 1), key("a", 1), key("b", 1), key("c", 1)],
        );
        assert_eq!(got[&key("c", 1)], None);
        assert_eq!(got[&key("b", 1)], Some(101));
        // "a" goes away: its port is reused by "c".
        let got = a.assign(TrafficType::Tcp, &[key("0", 1), key("b", 1), key("c", 1)]);
        assert_eq!(got[&key("c", 1)], Some(100));
        // UDP is a separate range.
        let got = a.assign(TrafficType::Udp, &[key("a", 1)]);
        assert_eq!(got[&key("a", 1)], Some(200));
    }

    #[test]
    fn seeds_survive_and_bad_seeds_are_ignored() {
        let mut a = PortAllocator::new(PortRange::new(100, 102), PortRange::new(200, 201));
        assert!(a.seed(TrafficType::Tcp, key("b", 1), 102));
        assert!(!a.seed(TrafficType::Tcp, key("c", 1), 102), "taken");
        assert!(!a.seed(TrafficType::Tcp, key("d", 1), 5000), "out of range");
        assert!(!a.seed(TrafficType::Http, key("e", 1), 100));
        let got = a.assign(TrafficType::Tcp, &[key("a", 1), key("b", 1)]);
        assert_eq!(got[&key("b", 1)], Some(102));
        assert_eq!(got[&key("a", 1)], Some(100));
    }
}
