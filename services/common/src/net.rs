//! Networks in CIDR notation, the client address behind trusted proxies, and the bounds of every
//! service's HTTP server.

use std::net::IpAddr;

/// Streams one HTTP/2 connection may carry at once (`SETTINGS_MAX_CONCURRENT_STREAMS`). Clients
/// speak HTTP/1.1 or, like a proxy in front of the notifier, cleartext HTTP/2 with prior
/// knowledge; poem leaves the HTTP/2 figure unbounded, so one connection could open streams
/// without end. A proxy that needs more opens another connection.
pub const HTTP2_STREAMS_PER_CONNECTION: u32 = 1000;

/// poem's HTTP server on `acceptor`, with the bounds every service's server keeps.
pub fn http_server<A: poem::listener::Acceptor + 'static>(acceptor: A) -> poem::Server<std::convert::Infallible, A> {
    poem::Server::new_with_acceptor(acceptor).http2_max_concurrent_streams(HTTP2_STREAMS_PER_CONNECTION)
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| format!("{text}: not an IP address"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix {
            Some(prefix) => prefix.parse().map_err(|_| format!("{text}: bad prefix length"))?,
            None => bits,
        };
        if prefix > bits {
            return Err(format!("{text}: prefix longer than {bits}"));
        }
        Ok(Network { address, prefix })
    }
}

impl Network {
    /// An IPv4 network (for tables of constants).
    pub const fn v4(octets: [u8; 4], prefix: u8) -> Network {
        Network {
            address: IpAddr::V4(std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
            prefix,
        }
    }

    /// An IPv6 network (for tables of constants).
    pub const fn v6(segments: [u16; 8], prefix: u8) -> Network {
        let [a, b, c, d, e, f, g, h] = segments;
        Network {
            address: IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// Whether `address` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(candidate)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(candidate) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(candidate)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(candidate) & mask
            }
            _ => false,
        }
    }
}

/// Parses a comma-separated list of networks.
pub fn parse_networks(text: &str) -> Result<Vec<Network>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::parse)
        .collect()
}

/// The client's address: the peer, unless the peer is a trusted proxy; then `X-Forwarded-For`
/// read from the right, skipping trusted proxies, and the first untrusted hop is the client.
/// The leftmost entries are whatever the client wrote and are never believed. If every hop is
/// trusted, the leftmost one is the client; an unreadable entry ends the walk at the last
/// trusted hop.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Network]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|network| network.contains(address));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(forwarded_for) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in forwarded_for.rsplit(',').map(str::trim) {
        let Ok(address) = hop.parse::<IpAddr>() else {
            return client;
        };
        client = address;
        if !is_trusted(address) {
            return address;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let network: Network = "10.0.0.0/8".parse().unwrap();
        assert!(network.contains(ip("10.255.0.1")));
        assert!(network.contains(ip("::ffff:10.0.0.1")));
        assert!(!network.contains(ip("11.0.0.1")));
        let host: Network = "::1".parse().unwrap();
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
        assert!("0.0.0.0/0".parse::<Network>().unwrap().contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_never_the_leftmost() {
        let trusted = parse_networks("127.0.0.1/32, 10.0.0.0/8").unwrap();
        // A client spoofing the leftmost entry; our proxy appended the real address.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("6.6.6.6, 203.0.113.9"), &trusted),
            ip("203.0.113.9")
        );
        // Two of our proxies in a row.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("1.1.1.1, 203.0.113.9, 10.1.1.1"), &trusted),
            ip("203.0.113.9")
        );
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            client_address(ip("198.51.100.7"), Some("203.0.113.9"), &trusted),
            ip("198.51.100.7")
        );
        // No proxies trusted (the default): the peer.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("203.0.113.9"), &[]),
            ip("127.0.0.1")
        );
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("203.0.113.9, junk"), &trusted),
            ip("127.0.0.1")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("10.0.0.2, 10.0.0.3"), &trusted),
            ip("10.0.0.2")
        );
    }
}
