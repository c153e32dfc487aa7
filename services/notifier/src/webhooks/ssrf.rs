//! SSRF protection for webhook targets: only http(s), and by default no target that resolves to
//! a loopback, private, link-local (cloud metadata), multicast or otherwise reserved address.
//! The check runs on the addresses the connection is actually made to (a DNS resolver that
//! drops forbidden answers), so a name that rebinds to a private address fails too. Networks in
//! the allowlist (`WEBHOOK_ALLOWED_NETWORKS`, e.g. `127.0.0.0/8` in tests) are let through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text}: expected address/prefix"))?;
        let address: IpAddr = address.parse().map_err(|_| format!("{text}: not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{text}: bad prefix length"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(format!("{text}: prefix longer than {bits}"));
        }
        Ok(Network { address, prefix })
    }
}

impl Network {
    /// Whether `address` lies in this network.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(candidate)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(network) & mask == u32::from(candidate) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(candidate)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(network) & mask == u128::from(candidate) & mask
            }
            _ => false,
        }
    }
}

fn forbidden_v4(address: Ipv4Addr) -> bool {
    let [first, second, ..] = address.octets();
    address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_multicast()
        || address.is_broadcast()
        || address.is_unspecified()
        || first == 0
        || first >= 240
        || (first == 100 && (64..128).contains(&second))
        || (first == 198 && (18..20).contains(&second))
        || (first == 192 && second == 0 && address.octets()[2] == 0)
}

fn forbidden_v6(address: Ipv6Addr) -> bool {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return forbidden_v4(mapped);
    }
    let first = address.segments()[0];
    address.is_loopback()
        || address.is_unspecified()
        || address.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// Which targets may be called.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allowed: Vec<Network>,
}

impl TargetPolicy {
    /// Forbidden ranges are refused except for `allowed` networks.
    pub fn new(allowed: Vec<Network>) -> Self {
        TargetPolicy { allowed }
    }

    /// Whether a connection to `address` is permitted.
    pub fn permits(&self, address: IpAddr) -> bool {
        if self.allowed.iter().any(|network| network.contains(address)) {
            return true;
        }
        match address {
            IpAddr::V4(v4) => !forbidden_v4(v4),
            IpAddr::V6(v6) => !forbidden_v6(v6),
        }
    }

    /// Checks a URL before any request: scheme, and a literal IP host (names are checked by
    /// [`GuardedResolver`] when connecting).
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not allowed", url.scheme()));
        }
        match url.host() {
            Some(url::Host::Ipv4(address)) if !self.permits(IpAddr::V4(address)) => {
                Err(format!("target {address} is a forbidden address"))
            }
            Some(url::Host::Ipv6(address)) if !self.permits(IpAddr::V6(address)) => {
                Err(format!("target {address} is a forbidden address"))
            }
            None => Err("the URL has no host".into()),
            _ => Ok(()),
        }
    }
}

/// A resolver that only returns permitted addresses and fails when none is left.
pub struct GuardedResolver {
    policy: TargetPolicy,
}

impl GuardedResolver {
    /// Guards name resolution with `policy`.
    pub fn new(policy: TargetPolicy) -> Arc<Self> {
        Arc::new(GuardedResolver { policy })
    }
}

/// The error of a refused name.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0} resolves only to forbidden addresses")]
pub struct Refused(pub String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| policy.permits(address.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        !TargetPolicy::default().permits(text.parse().unwrap())
    }

    #[test]
    fn private_loopback_link_local_metadata_and_multicast_are_refused() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
            "ff02::1",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
        for address in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"] {
            assert!(!refused(address), "{address} is public");
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_its_networks() {
        let policy = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
    }

    #[test]
    fn urls_with_forbidden_literal_hosts_or_schemes_are_refused_before_any_request() {
        let policy = TargetPolicy::default();
        assert!(
            policy
                .check_url(&"http://169.254.169.254/latest".parse().unwrap())
                .is_err()
        );
        assert!(policy.check_url(&"http://[::1]:8080/".parse().unwrap()).is_err());
        assert!(policy.check_url(&"file:///etc/passwd".parse().unwrap()).is_err());
        assert!(
            policy
                .check_url(&"https://hooks.example.com/x".parse().unwrap())
                .is_ok()
        );
    }
}
