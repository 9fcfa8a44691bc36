//! CoreDNS versions: read from a container image reference, and the Corefile syntax family
//! each one needs.

use std::fmt;
use std::str::FromStr;

/// A CoreDNS release, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Patch number (0 when the tag has none).
    pub patch: u32,
}

/// The oldest CoreDNS whose `rewrite` syntax has been checked (docs/dns.md).
pub const MIN_SUPPORTED: Version = Version::new(1, 6, 0);

/// The Corefile syntax a CoreDNS version needs for Maille's server block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Up to 1.6.x: the `kubernetes` plugin still accepts `upstream` (needed before 1.5.2,
    /// ignored from 1.5.2), so it is written for the old resolvers' sake.
    V1_6,
    /// 1.7.0 and later: `upstream` was removed from the `kubernetes` plugin and is a parse error.
    V1_7,
}

impl Version {
    /// A version from its numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Which syntax family this version belongs to.
    pub fn family(self) -> Family {
        if self < Version::new(1, 7, 0) {
            Family::V1_6
        } else {
            Family::V1_7
        }
    }

    /// The version in an image tag such as `v1.11.1`, `1.6.7`, `v1.11.1-eksbuild.4` or
    /// `v1.9.4-hotfix.20240704`. `None` when the reference has no tag (digest only, `latest`).
    pub fn from_image(image: &str) -> Option<Self> {
        let without_digest = image.split('@').next().unwrap_or(image);
        let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
        let (_, tag) = last_segment.split_once(':')?;
        tag.parse().ok()
    }
}

impl FromStr for Version {
    type Err = String;

    /// Parses `[v]MAJOR.MINOR[.PATCH][suffix]`, ignoring a `-suffix` or `+suffix`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a CoreDNS version; expected something like 1.11.1");
        let core = s.strip_prefix('v').unwrap_or(s);
        let core = core.split(['-', '+']).next().unwrap_or(core);
        let mut parts = core.split('.');
        let mut number = |required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| bad())
                }
                None if !required => Ok(0),
                _ => Err(bad()),
            }
        };
        let major = number(true)?;
        let minor = number(true)?;
        let patch = number(false)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Version::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_from_real_image_references() {
        let cases = [
            ("registry.k8s.io/coredns/coredns:v1.11.1", Some((1, 11, 1))),
            ("k8s.gcr.io/coredns:1.6.7", Some((1, 6, 7))),
            ("coredns/coredns:1.7.0", Some((1, 7, 0))),
            (
                "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/coredns:v1.11.1-eksbuild.4",
                Some((1, 11, 1)),
            ),
            (
                "mcr.microsoft.com/oss/kubernetes/coredns:v1.9.4-hotfix.20240704",
                Some((1, 9, 4)),
            ),
            ("registry.local:5000/coredns:v1.10", Some((1, 10, 0))),
            (
                "registry.local:5000/coredns:v1.8.6@sha256:abcd",
                Some((1, 8, 6)),
            ),
            ("registry.local:5000/coredns", None),
            ("coredns/coredns@sha256:abcd", None),
            ("coredns/coredns:latest", None),
            ("coredns/coredns:1", None),
            ("coredns/coredns:1.x.2", None),
        ];
        for (image, want) in cases {
            let got = Version::from_image(image).map(|v| (v.major, v.minor, v.patch));
            assert_eq!(got, want, "{image}");
        }
    }

    #[test]
    fn families_split_at_1_7_0() {
        assert_eq!(Version::new(1, 6, 9).family(), Family::V1_6);
        assert_eq!(Version::new(1, 7, 0).family(), Family::V1_7);
        assert_eq!(Version::new(1, 11, 3).family(), Family::V1_7);
        assert_eq!(Version::new(2, 0, 0).family(), Family::V1_7);
        assert!(Version::new(1, 5, 2) < MIN_SUPPORTED);
        assert!("1.6".parse::<Version>().unwrap() >= MIN_SUPPORTED);
        assert!("1.6.0.1".parse::<Version>().is_err());
    }
}
