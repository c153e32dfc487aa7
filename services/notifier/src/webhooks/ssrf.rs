//! SSRF protection for webhook targets: only http(s), and by default no target that resolves to
//! a loopback, private, link-local (cloud metadata), multicast, documentation, benchmarking or
//! otherwise reserved address, nor to an IPv6 address that embeds or tunnels to an IPv4 address
//! (IPv4-compatible, IPv4-translated, NAT64, 6to4, Teredo), whose real destination this guard
//! cannot see. The check runs on the addresses the connection is actually made to (a DNS
//! resolver that drops forbidden answers), so a name that rebinds to a private address fails
//! too. Networks in the allowlist (`WEBHOOK_ALLOWED_NETWORKS`, e.g. `127.0.0.0/8` in tests) are
//! let through. [`guarded_client`] builds the one HTTP client deliveries use: the guarded
//! resolver, no proxy from the environment (a proxy would resolve names itself, past the guard)
//! and no redirects (a receiver could point them anywhere).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub use common::net::Network;

/// The networks refused unless allowlisted, each with the reason a refusal gives. An IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`) is judged by its IPv4 address; every other IPv6 address that
/// carries an IPv4 address is refused whole, since where it really leads is decided elsewhere.
const FORBIDDEN_NETWORKS: [(Network, &str); 31] = [
    (Network::v4([0, 0, 0, 0], 8), "this network"),
    (Network::v4([10, 0, 0, 0], 8), "private"),
    (Network::v4([100, 64, 0, 0], 10), "shared address space"),
    (Network::v4([127, 0, 0, 0], 8), "loopback"),
    (Network::v4([169, 254, 0, 0], 16), "link-local, cloud metadata"),
    (Network::v4([172, 16, 0, 0], 12), "private"),
    (Network::v4([192, 0, 0, 0], 24), "ietf protocol assignments"),
    (Network::v4([192, 0, 2, 0], 24), "documentation"),
    (Network::v4([192, 88, 99, 0], 24), "6to4 relay anycast"),
    (Network::v4([192, 168, 0, 0], 16), "private"),
    (Network::v4([198, 18, 0, 0], 15), "benchmarking"),
    (Network::v4([198, 51, 100, 0], 24), "documentation"),
    (Network::v4([203, 0, 113, 0], 24), "documentation"),
    (Network::v4([224, 0, 0, 0], 4), "multicast"),
    (Network::v4([240, 0, 0, 0], 4), "reserved or broadcast"),
    (Network::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (Network::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (Network::v6([0, 0, 0, 0, 0, 0, 0, 0], 96), "ipv4-compatible"),
    (Network::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), "ipv4-translated"),
    (Network::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), "nat64"),
    (Network::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use nat64"),
    (Network::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (Network::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "teredo"),
    (Network::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "benchmarking"),
    (Network::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (Network::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), "6to4"),
    (Network::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (Network::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local"),
    (Network::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (Network::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (Network::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Why `address` is forbidden, ignoring any allowlist; `None` for a public address.
fn forbidden_reason(address: IpAddr) -> Option<&'static str> {
    let judged_address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    };
    FORBIDDEN_NETWORKS
        .iter()
        .find(|(network, _)| network.contains(judged_address))
        .map(|(_, reason)| *reason)
}

/// Which targets may be called.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allowed: Vec<Network>,
}

impl TargetPolicy {
    /// Forbidden ranges are refused except for `allowed` networks. An allowed IPv4 network also
    /// opens the IPv4-mapped form of its addresses (`::ffff:a.b.c.d` is the same destination).
    pub fn new(allowed: Vec<Network>) -> Self {
        TargetPolicy { allowed }
    }

    /// Whether a connection to `address` is permitted.
    pub fn permits(&self, address: IpAddr) -> bool {
        self.refusal_reason(address).is_none()
    }

    /// Why a connection to `address` is refused (e.g. `"loopback"`), or `None` when permitted.
    pub fn refusal_reason(&self, address: IpAddr) -> Option<&'static str> {
        if self.allowed.iter().any(|network| network.contains(address)) {
            return None;
        }
        forbidden_reason(address)
    }

    /// Checks a URL before any request: scheme, and a literal IP host (names are checked by
    /// [`GuardedResolver`] when connecting). The URL parser has already turned the other
    /// spellings of an IPv4 address (`2130706433`, `0x7f.1`, `0177.0.0.1`, ...) into the address.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not allowed", url.scheme()));
        }
        let literal_address = match url.host() {
            None => return Err("the URL has no host".into()),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(address)) => IpAddr::V4(address),
            Some(url::Host::Ipv6(address)) => IpAddr::V6(address),
        };
        match self.refusal_reason(literal_address) {
            Some(reason) => Err(format!("target {literal_address} is a forbidden address ({reason})")),
            None => Ok(()),
        }
    }
}

/// How the guarded resolver turns a host name into addresses, before the policy filters them.
#[derive(Debug, Clone, Default)]
pub enum Lookup {
    /// The operating system's resolver (`tokio::net::lookup_host`): what deliveries use.
    #[default]
    System,
    /// A fixed table, for tests: a name not in it does not resolve. Names match without regard
    /// to case or a trailing dot, as in DNS (`LOCALHOST.` is `localhost`).
    Fixed(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Lookup {
    /// A [`Lookup::Fixed`] table of `(name, addresses)` entries.
    pub fn fixed<NameText: AsRef<str>>(entries: impl IntoIterator<Item = (NameText, Vec<IpAddr>)>) -> Lookup {
        let table = entries
            .into_iter()
            .map(|(name, addresses)| (canonical_name(name.as_ref()), addresses))
            .collect();
        Lookup::Fixed(Arc::new(table))
    }

    /// Every address `host` resolves to, forbidden ones included.
    pub async fn addresses_of(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match self {
            Lookup::System => {
                let socket_addresses = tokio::net::lookup_host((host, 0)).await?;
                Ok(socket_addresses.map(|socket_address| socket_address.ip()).collect())
            }
            Lookup::Fixed(table) => table.get(&canonical_name(host)).cloned().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} is not in the fixed lookup table"),
                )
            }),
        }
    }
}

/// A name as DNS compares it: lowercase, without the trailing dot of a fully qualified name.
fn canonical_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A resolver that only returns permitted addresses and fails with [`Refused`] when none is left.
pub struct GuardedResolver {
    policy: TargetPolicy,
    lookup: Lookup,
}

impl GuardedResolver {
    /// Guards the system resolver with `policy`.
    pub fn new(policy: TargetPolicy) -> Arc<Self> {
        GuardedResolver::with_lookup(policy, Lookup::System)
    }

    /// Guards `lookup` with `policy`.
    pub fn with_lookup(policy: TargetPolicy, lookup: Lookup) -> Arc<Self> {
        Arc::new(GuardedResolver { policy, lookup })
    }
}

/// The error of a refused name.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0} resolves only to forbidden addresses")]
pub struct Refused(pub String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved = lookup.addresses_of(&host).await?;
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| policy.permits(*address))
                .map(|address| SocketAddr::new(address, 0))
                .collect();
            if permitted.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The `User-Agent` of webhook deliveries.
pub const WEBHOOK_USER_AGENT: &str = "download-service-webhooks/1";

/// The HTTP client webhook deliveries use: names resolved by `lookup` through a
/// [`GuardedResolver`] for `policy`, no proxy (not even `HTTP_PROXY`/`HTTPS_PROXY` from the
/// environment: a proxy would resolve and connect past the guard), no redirects (the response
/// to a redirect is the outcome), `timeout` for connecting and for the whole request. Literal IP
/// hosts bypass the resolver: check each URL with [`TargetPolicy::check_url`] before sending.
pub fn guarded_client(
    policy: TargetPolicy,
    timeout: Duration,
    lookup: Lookup,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(GuardedResolver::with_lookup(policy, lookup))
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(WEBHOOK_USER_AGENT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        !TargetPolicy::default().permits(text.parse().unwrap())
    }

    fn addresses(texts: &[&str]) -> Vec<IpAddr> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
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
            "198.18.0.1",
            "192.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "ff02::1",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
    }

    #[test]
    fn ipv6_addresses_that_embed_or_tunnel_to_ipv4_and_site_local_ones_are_refused() {
        for address in [
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:5",
            "64:ff9b:1:ffff::1",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:7f00:1",
            "fec0::1",
            "feff:ffff::1",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
    }

    #[test]
    fn documentation_benchmarking_and_discard_ranges_are_refused() {
        for address in [
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.19.255.255",
            "192.88.99.1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "100::1",
        ] {
            assert!(refused(address), "{address} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_permitted_including_their_neighbours_of_refused_ranges() {
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "198.20.0.1",
            "172.32.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2003::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(address), "{address} is public");
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_its_networks() {
        let policy = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "fd00::/64".parse().unwrap()]);
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(policy.permits("fd00::1".parse().unwrap()));
        assert!(!policy.permits("fd00:0:0:1::1".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
        assert!(!policy.permits("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
    }

    #[test]
    fn urls_with_forbidden_literal_hosts_or_schemes_are_refused_before_any_request() {
        let policy = TargetPolicy::default();
        let refusal = policy
            .check_url(&"http://169.254.169.254/latest".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            refusal,
            "target 169.254.169.254 is a forbidden address (link-local, cloud metadata)"
        );
        assert!(policy.check_url(&"http://[::1]:8080/".parse().unwrap()).is_err());
        assert!(policy.check_url(&"http://[64:ff9b::a00:1]/".parse().unwrap()).is_err());
        assert!(policy.check_url(&"file:///etc/passwd".parse().unwrap()).is_err());
        assert!(
            policy
                .check_url(&"https://hooks.example.com/x".parse().unwrap())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_answers_and_refuses_a_name_left_with_none() {
        let lookup = Lookup::fixed([
            (
                "mixed.test",
                addresses(&["127.0.0.1", "93.184.216.34", "::ffff:10.0.0.1"]),
            ),
            ("rebind.test", addresses(&["127.0.0.1", "64:ff9b::7f00:1"])),
        ]);
        let resolver = GuardedResolver::with_lookup(TargetPolicy::default(), lookup);

        let mixed = resolver.resolve("mixed.test".parse().unwrap()).await.unwrap();
        let mixed_addresses: Vec<IpAddr> = mixed.map(|socket_address| socket_address.ip()).collect();
        assert_eq!(mixed_addresses, addresses(&["93.184.216.34"]));

        let Err(rebind) = resolver.resolve("REBIND.test.".parse().unwrap()).await else {
            panic!("rebind.test resolves only to forbidden addresses");
        };
        assert!(rebind.downcast_ref::<Refused>().is_some(), "{rebind}");

        let Err(unknown) = resolver.resolve("unknown.test".parse().unwrap()).await else {
            panic!("unknown.test is not in the table");
        };
        assert!(unknown.downcast_ref::<Refused>().is_none(), "{unknown}");
    }
}
