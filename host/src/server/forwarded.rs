//! The address a request came from when it came through a proxy the operator trusts
//! (`[server] trusted_proxies`): behind a proxy every connection's peer is the proxy,
//! so the failed-authentication throttle would count every user as one address (one
//! guesser locking all of them out) and the audit log would name the proxy for every
//! change. A trusted proxy's `X-Forwarded-For` names the client instead.
//!
//! Only the right end of that header is believed: each proxy appends the address it
//! was connected from, so the entries a client wrote itself are to the left of the
//! first proxy's. Walking from the right, the client is the first address that is not
//! a trusted proxy; a malformed entry stops the walk at the proxy that passed it on.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Entries of `X-Forwarded-For` looked at, from the right: far more proxies than any
/// chain has, and a bound on the work a header of thousands of entries costs.
const MAX_HOPS: usize = 32;

/// The proxies whose `X-Forwarded-For` is believed; none by default.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the proxies at `nets`.
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&addr))
    }

    /// The client behind `peer`, the connection's own peer: `peer` itself unless it is
    /// a trusted proxy that says, in `X-Forwarded-For`, whom it was connected from.
    pub(crate) fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if self.nets.is_empty() || !self.trusts(client) {
            return client;
        }
        // Every header line in order, each a comma-separated list: one list in all.
        let mut entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|line| {
                let text = line.to_str().unwrap_or("\u{0}");
                text.rsplit(',').map(str::trim)
            })
            .take(MAX_HOPS);
        while self.trusts(client) {
            let Some(entry) = entries.next() else { break };
            match entry.parse::<IpAddr>() {
                Ok(addr) => client = addr.to_canonical(),
                // Not an address: nothing to its left can be told from a forgery.
                Err(_) => break,
            }
        }
        client
    }
}

/// Parses `[server] trusted_proxies` entries: an address (`10.0.0.5`, `::1`) or a
/// network (`10.0.0.0/8`).
pub(crate) fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is neither an address nor a network like 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| parse_net(n).unwrap()).collect())
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        // A client's own entries to the left are never believed.
        let h = headers(&["6.6.6.6, 203.0.113.7, 10.1.2.3"]);
        assert_eq!(p.client_of(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // Several header lines read as one list, in order.
        let h = headers(&["6.6.6.6", "203.0.113.7", "10.1.2.3"]);
        assert_eq!(p.client_of(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // A peer that is no trusted proxy speaks for itself, whatever it sends.
        assert_eq!(p.client_of(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // No header: the proxy itself.
        assert_eq!(
            p.client_of(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Every entry a trusted proxy: the left-most.
        let h = headers(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(p.client_of(ip("127.0.0.1"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_proxy_that_passed_it() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        for bad in [
            "6.6.6.6, 203.0.113.7:80, 10.1.2.3",
            "6.6.6.6, , 10.1.2.3",
            "x, 10.1.2.3",
        ] {
            assert_eq!(
                p.client_of(ip("127.0.0.1"), &headers(&[bad])),
                ip("10.1.2.3"),
                "{bad}"
            );
        }
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(p.client_of(ip("127.0.0.1"), &h), ip("127.0.0.1"));
    }

    #[test]
    fn no_trusted_proxies_believes_no_header() {
        let h = headers(&["203.0.113.7"]);
        let p = TrustedProxies::default();
        assert_eq!(p.client_of(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        // An IPv4 peer seen on an IPv6 socket is matched as IPv4.
        let p = proxies(&["127.0.0.1"]);
        assert_eq!(p.client_of(ip("::ffff:127.0.0.1"), &h), ip("203.0.113.7"));
        assert_eq!(
            p.client_of(ip("127.0.0.1"), &headers(&["::ffff:203.0.113.7"])),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn only_so_many_hops_are_walked() {
        let p = proxies(&["10.0.0.0/8"]);
        let chain = (0..100)
            .map(|i| format!("10.0.0.{}", i % 250))
            .collect::<Vec<_>>();
        let h = headers(&[&format!("203.0.113.7, {}", chain.join(", "))]);
        assert_eq!(p.client_of(ip("10.0.0.1"), &h), ip("10.0.0.68"));
    }

    #[test]
    fn entries_parse_as_addresses_or_networks() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("proxy.local").is_err());
    }
}
