//! Translation settings that come from flags: port ranges, namespaces, default mode.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use config_model::TrafficType;

/// An inclusive range of listener ports, written `5000-5009` (or a single port `5000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port, inclusive.
    pub end: u16,
}

impl PortRange {
    /// A range from `start` to `end` inclusive; `start <= end`.
    pub fn new(start: u16, end: u16) -> Self {
        assert!(start <= end, "port range {start}-{end} is reversed");
        PortRange { start, end }
    }

    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    /// Never true: a range holds at least one port. Here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    /// The i-th port of the range, if the range has that many.
    pub fn nth(&self, i: usize) -> Option<u16> {
        (i < self.len()).then(|| self.start + i as u16)
    }

    /// Every port of the range, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A port range that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port range {value:?}: {reason}")]
pub struct PortRangeError {
    /// The text given.
    pub value: String,
    /// What was expected.
    pub reason: &'static str,
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PortRangeError {
            value: s.to_string(),
            reason,
        };
        let (a, b) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
        let start: u16 = a
            .trim()
            .parse()
            .map_err(|_| err("expected FIRST-LAST with ports from 1 to 65535, e.g. 10000-10024"))?;
        let end: u16 = b
            .trim()
            .parse()
            .map_err(|_| err("expected FIRST-LAST with ports from 1 to 65535, e.g. 10000-10024"))?;
        if start == 0 {
            return Err(err("port 0 is not a port"));
        }
        if start > end {
            return Err(err("the first port is above the last"));
        }
        Ok(PortRange { start, end })
    }
}

/// Which Services of the meshed namespaces get a shadow service and a place in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MeshServices {
    /// Every Service, except those annotated `maille.io/mesh: "false"`.
    #[default]
    All,
    /// Only the Services annotated `maille.io/mesh: "true"`.
    Annotated,
}

/// Everything translation needs besides the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Traffic type of services without a traffic-type annotation.
    pub default_mode: TrafficType,
    /// ACL mode: traffic needs an SMI TrafficTarget that allows it.
    pub acl: bool,
    /// The mesh's own namespace, always left out (it holds the shadow services).
    pub mesh_namespace: String,
    /// When not empty, only these namespaces are meshed.
    pub watch_namespaces: BTreeSet<String>,
    /// Namespaces never meshed.
    pub ignore_namespaces: BTreeSet<String>,
    /// Which Services of those namespaces are meshed.
    pub mesh_services: MeshServices,
    /// Proxy HTTP listener ports: the i-th port of a service is reached on the i-th of these.
    pub http_ports: PortRange,
    /// Proxy TCP listener ports, one per (namespace, service, port).
    pub tcp_ports: PortRange,
    /// Proxy UDP listener ports, one per (namespace, service, port).
    pub udp_ports: PortRange,
    /// Mutual TLS between nodes: the mode, and how node proxies are found.
    pub mesh: crate::mesh::MeshSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_mode: TrafficType::Http,
            acl: false,
            mesh_namespace: "maille".into(),
            watch_namespaces: BTreeSet::new(),
            ignore_namespaces: BTreeSet::new(),
            mesh_services: MeshServices::All,
            http_ports: PortRange::new(5000, 5009),
            tcp_ports: PortRange::new(10000, 10024),
            udp_ports: PortRange::new(15000, 15024),
            mesh: crate::mesh::MeshSettings::default(),
        }
    }
}

impl Settings {
    /// Whether services of this namespace are meshed at all.
    pub fn namespace_meshed(&self, namespace: &str) -> bool {
        namespace != self.mesh_namespace
            && namespace != "kube-system"
            && !self.ignore_namespaces.contains(namespace)
            && (self.watch_namespaces.is_empty() || self.watch_namespaces.contains(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_refuses_bad_ones() {
        assert_eq!("10000-10024".parse(), Ok(PortRange::new(10000, 10024)));
        assert_eq!("5000".parse(), Ok(PortRange::new(5000, 5000)));
        assert_eq!(PortRange::new(10000, 10024).len(), 25);
        let e = "20-10".parse::<PortRange>().unwrap_err();
        assert!(e.to_string().contains("\"20-10\""), "{e}");
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
        assert!("1-70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn always_ignored_and_listed_namespaces() {
        let mut s = Settings::default();
        assert!(s.namespace_meshed("shop"));
        assert!(!s.namespace_meshed("maille"));
        assert!(!s.namespace_meshed("kube-system"));
        s.ignore_namespaces.insert("legacy".into());
        assert!(!s.namespace_meshed("legacy"));
        s.watch_namespaces.insert("shop".into());
        assert!(s.namespace_meshed("shop"));
        assert!(!s.namespace_meshed("other"));
    }
}
