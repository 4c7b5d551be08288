//! Network grants at work: matching `scheme://host:port` patterns (parsed in
//! `config`), resolving through the operator's static host overrides, and the
//! re-check of every address a granted name resolves to.
//!
//! A destination is allowed when a pattern the provider requested *and* a pattern the
//! operator granted both match it. Its resolved addresses are then checked again:
//! loopback, link-local, cloud metadata and unspecified addresses are refused unless
//! an operator grant names that address literally, so a granted name that
//! points at `127.0.0.1` or `169.254.169.254` gets nowhere. The check happens before
//! any packet is sent; the connection then goes to the checked address only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Denied, Refusals};
use crate::config::{GrantOrigin, NetConfig, UrlPattern};

impl UrlPattern {
    /// Whether `scheme://host:port` matches.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (self.scheme() == "*" || self.scheme().eq_ignore_ascii_case(scheme))
            && self.port().is_none_or(|p| p == port)
            && host_matches(self.host(), host)
    }

    /// Whether every destination `other` matches is matched by `self` too.
    pub fn covers(&self, other: &UrlPattern) -> bool {
        let scheme = self.scheme() == "*" || self.scheme() == other.scheme();
        let port = self.port().is_none() || self.port() == other.port();
        let (mine, theirs) = (self.host(), other.host());
        let host = match mine.strip_prefix("*.") {
            _ if mine == "*" => true,
            Some(suffix) => {
                let bare = theirs.strip_prefix("*.").unwrap_or(theirs);
                bare.ends_with(&format!(".{suffix}"))
                    || (theirs.starts_with("*.") && bare == suffix)
            }
            None => theirs != "*" && !theirs.starts_with("*.") && host_matches(mine, theirs),
        };
        scheme && port && host
    }

    /// The IP address this pattern names literally, if it does.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        self.host().parse().ok()
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let host = host.to_ascii_lowercase();
        return host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
    }
    // Literal addresses compare as addresses, so `::1` and `0:0::1` are the same.
    match (pattern.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a.to_canonical() == b.to_canonical(),
        _ => pattern.eq_ignore_ascii_case(host),
    }
}

/// Addresses no provider reaches unless a grant names them literally: the host
/// itself, link-local networks (cloud metadata lives there), broadcast and multicast
/// (which reach every host on the link), and "any", also when
/// written as an IPv6 address that carries an IPv4 one (see [`carried_ipv4`]).
pub(crate) fn is_sensitive(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                // "This network" (0.0.0.0/8): never a destination on the wire; the local
                // stack answers it.
                || v4.octets()[0] == 0
                || v4.is_link_local()
                || v4.is_broadcast()
                // Multicast (224.0.0.0/4) reaches every member on the link and beyond:
                // mDNS, LLMNR and SSDP answer there, as link-local hosts would.
                || v4.is_multicast()
                // Alibaba's metadata service and Azure's wire server sit outside 169.254/16.
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
                || v4 == Ipv4Addr::new(168, 63, 129, 16)
        }
        IpAddr::V6(v6) => {
            carried_ipv4(v6)
                .into_iter()
                .any(|v4| is_sensitive(IpAddr::V4(v4)))
                || v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                // Multicast (ff00::/8): `ff02::1` is every node on the link, the
                // link-local hosts refused one by one above.
                || v6.is_multicast()
                // AWS's IPv6 metadata endpoint.
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// The IPv4 addresses an IPv6 address carries by a well-known transition scheme; a
/// host (or a relay it uses) that speaks the scheme delivers to them, so each is
/// checked like a destination of its own:
/// - IPv4-compatible `::a.b.c.d` (deprecated, still routed by some stacks);
/// - IPv4-translated `::ffff:0:a.b.c.d` (SIIT, RFC 2765);
/// - NAT64's well-known prefix `64:ff9b::/96`;
/// - 6to4 `2002:AABB:CCDD::/48` (RFC 3056), the IPv4 address in bits 16 to 48;
/// - Teredo `2001:0::/32` (RFC 4380): its server in bits 32 to 64 and its client,
///   each bit inverted, in the last 32;
/// - ISATAP, under any prefix (RFC 5214): an interface id `0:5efe:a.b.c.d` or
///   `200:5efe:a.b.c.d`.
///
/// (IPv4-mapped `::ffff:a.b.c.d` is folded into IPv4 by `to_canonical` already.)
fn carried_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let mut carried = Vec::new();
    let tail_is_v4 = s[..6] == [0; 6]
        || s[..6] == [0, 0, 0, 0, 0xffff, 0]
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if tail_is_v4 {
        carried.push(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        carried.push(v4(s[1], s[2]));
    }
    if (s[0], s[1]) == (0x2001, 0) {
        carried.push(v4(s[2], s[3]));
        carried.push(v4(!s[6], !s[7]));
    }
    if matches!(s[4], 0 | 0x200) && s[5] == 0x5efe {
        carried.push(v4(s[6], s[7]));
    }
    carried
}

/// One environment's network policy: its two keys, the resolver and the connection cap.
#[derive(Debug, Clone)]
pub struct NetPolicy {
    env_id: String,
    requested: Arc<[UrlPattern]>,
    granted: Arc<[UrlPattern]>,
    config: NetConfig,
    connections: Arc<Semaphore>,
    /// Where the operator widens the grant, for refusals that say how.
    origin: Option<GrantOrigin>,
    /// Where refusals are noted for the environment's error.
    refusals: Refusals,
}

impl NetPolicy {
    /// The policy of one environment.
    pub fn new(
        env_id: String,
        requested: impl Into<Arc<[UrlPattern]>>,
        granted: impl Into<Arc<[UrlPattern]>>,
        config: NetConfig,
    ) -> Self {
        let connections = Arc::new(Semaphore::new(config.max_connections));
        Self {
            env_id,
            requested: requested.into(),
            granted: granted.into(),
            config,
            connections,
            origin: None,
            refusals: Refusals::default(),
        }
    }

    /// This policy, with refusals naming where the operator widens it.
    pub fn with_origin(mut self, origin: Option<GrantOrigin>) -> Self {
        self.origin = origin;
        self
    }

    /// This policy, noting its refusals in `refusals`.
    pub fn with_refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = refusals;
        self
    }

    /// `denied` as the operator reads it: with the `tether.toml` entry that would
    /// allow it, when one would. It is noted for the environment's error too.
    pub fn explain(&self, denied: &Denied) -> String {
        let reason = match self.origin.as_ref().and_then(|o| denied.operator_fix(o)) {
            Some(fix) => format!("{denied}: {fix}"),
            None => denied.to_string(),
        };
        self.refusals.note(reason.clone());
        reason
    }

    /// A policy that allows nothing (an instance serving no environment).
    pub fn deny_all() -> Self {
        Self::new("-".into(), [], [], NetConfig::default())
    }

    /// The environment this policy serves.
    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    /// Settings in force.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Checks a destination against both keys.
    pub fn check_destination(&self, scheme: &str, host: &str, port: u16) -> Result<(), Denied> {
        let dest = || crate::untrusted::quoted(&format!("{scheme}://{host}:{port}"));
        if !self.requested.iter().any(|p| p.matches(scheme, host, port)) {
            return Err(Denied::UrlNotRequested(dest()));
        }
        if !self.granted.iter().any(|p| p.matches(scheme, host, port)) {
            return Err(Denied::UrlNotGranted(dest()));
        }
        Ok(())
    }

    /// Whether the operator's grant names `ip` literally for this scheme and port
    /// (the provider's request was already matched by the destination check).
    fn names_literally(&self, scheme: &str, ip: IpAddr, port: u16) -> bool {
        self.granted.iter().any(|p| {
            p.literal_ip()
                .is_some_and(|l| l.to_canonical() == ip.to_canonical())
                && p.matches(scheme, &ip.to_string(), port)
        })
    }

    /// Re-checks one resolved address of an allowed destination.
    pub fn check_address(&self, scheme: &str, addr: SocketAddr) -> Result<(), Denied> {
        if is_sensitive(addr.ip()) && !self.names_literally(scheme, addr.ip(), addr.port()) {
            return Err(Denied::SensitiveAddress(addr.ip()));
        }
        Ok(())
    }

    /// Resolves `host` (operator overrides first, then the system resolver) and
    /// re-checks every address; all must pass, so a name cannot smuggle one in.
    pub async fn resolve(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, NetError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else if let Some(ip) = self.config.hosts.get(&bare.to_ascii_lowercase()) {
            vec![SocketAddr::new(*ip, port)]
        } else {
            let lookup = tokio::net::lookup_host((bare, port));
            tokio::time::timeout(self.config.connect_timeout, lookup)
                .await
                .map_err(|_| NetError::Resolve(bare.to_owned(), "timed out".into()))?
                .map_err(|e| NetError::Resolve(bare.to_owned(), e.to_string()))?
                .collect()
        };
        if addrs.is_empty() {
            return Err(NetError::Resolve(bare.to_owned(), "no addresses".into()));
        }
        for addr in &addrs {
            self.check_address(scheme, *addr)?;
        }
        Ok(addrs)
    }

    /// Takes one of the environment's connection slots, or refuses at the cap.
    pub fn connection_slot(&self) -> Result<OwnedSemaphorePermit, Denied> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Denied::ConnectionLimit(self.config.max_connections))
    }

    /// Whether some address of `scheme` (`tcp`, `udp`) is both requested and granted.
    pub fn grants_scheme(&self, scheme: &str) -> bool {
        let names = |patterns: &[UrlPattern]| patterns.iter().any(|p| p.scheme() == scheme);
        names(&self.requested) && names(&self.granted)
    }

    /// Checks a raw socket connect or bind (`wasi:sockets`) to a literal address: a
    /// `tcp://` or `udp://` pattern on both keys must name it.
    pub fn check_socket(&self, scheme: &str, addr: SocketAddr) -> Result<(), Denied> {
        self.check_destination(scheme, &addr.ip().to_string(), addr.port())?;
        self.check_address(scheme, addr)
    }
}

/// Why an outgoing connection failed before it was made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The broker refused it.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The name did not resolve.
    #[error("resolving {0}: {1}")]
    Resolve(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<UrlPattern> {
        list.iter().map(|p| UrlPattern::parse(p).unwrap()).collect()
    }

    fn policy(requested: &[&str], granted: &[&str], hosts: &[(&str, &str)]) -> NetPolicy {
        let config = NetConfig {
            hosts: hosts
                .iter()
                .map(|(h, ip)| (h.to_string(), ip.parse().unwrap()))
                .collect(),
            max_connections: 2,
            ..NetConfig::default()
        };
        NetPolicy::new("env".into(), pats(requested), pats(granted), config)
    }

    #[test]
    fn patterns_parse_and_match() {
        let p = UrlPattern::parse("https://*.example.com").unwrap();
        assert!(p.matches("https", "api.example.com", 443));
        assert!(!p.matches("https", "example.com", 443));
        assert!(!p.matches("https", "evilexample.com", 443));
        assert!(!p.matches("http", "api.example.com", 443));
        assert!(!p.matches("https", "api.example.com", 8443));
        let any_port = UrlPattern::parse("http://127.0.0.1:*").unwrap();
        assert!(any_port.matches("http", "127.0.0.1", 9999));
        assert_eq!(any_port.literal_ip(), Some(IpAddr::from([127, 0, 0, 1])));
        let v6 = UrlPattern::parse("tcp://[::1]:22").unwrap();
        assert!(v6.matches("tcp", "::1", 22));
        assert_eq!(v6.to_string(), "tcp://[::1]:22");
        assert!(UrlPattern::parse("example.com").is_err());
        assert!(UrlPattern::parse("tcp://example.com").is_err());
        assert!(UrlPattern::parse("http://x/path").is_err());
    }

    #[test]
    fn sensitive_addresses() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "0.0.0.1",
            "0.1.2.3",
            "::7f00:1",
            "::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b::169.254.169.254",
            // IPv4-translated (SIIT), also spelt with the dotted quad.
            "::ffff:0:7f00:1",
            "::ffff:0:169.254.169.254",
            // 6to4 carrying 127.0.0.1, 169.254.169.254 and 0.0.0.0, whatever the rest.
            "2002:7f00:1::",
            "2002:7f00:1:ffff::1",
            "2002:a9fe:a9fe::1",
            "2002::1",
            // Teredo: a loopback server, or a metadata client (bits inverted).
            "2001:0:7f00:1::",
            "2001:0:5db8:d822:0:0:5601:5601",
            "2001::ffff:ffff",
            // Multicast: mDNS, all nodes on the link, an interface-local group.
            "224.0.0.251",
            "239.255.255.250",
            "ff02::1",
            "ff01::fb",
            "ff0e::1",
            // ISATAP interface ids carrying loopback and the metadata address.
            "2001:db8::5efe:7f00:1",
            "2001:db8::200:5efe:169.254.169.254",
        ] {
            assert!(is_sensitive(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "10.0.0.1",
            "2606:4700::1",
            "64:ff9b::5db8:d822",
            "64:ff9b:1::7f00:1",
            // 6to4 and Teredo carrying public addresses, and their neighbours.
            "2002:5db8:d822::1",
            "2001:0:5db8:d822:0:0:a247:2bdd",
            "2001:db8::7f00:1",
            "2003:7f00:1::",
            "::ffff:1:7f00:1",
            "2001:db8::5efe:5db8:d822",
            "2001:db8::100:5efe:7f00:1",
        ] {
            assert!(!is_sensitive(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn both_keys_are_needed() {
        let p = policy(
            &["https://*.example.com"],
            &["https://api.example.com"],
            &[],
        );
        assert_eq!(p.check_destination("https", "api.example.com", 443), Ok(()));
        assert_eq!(
            p.check_destination("https", "www.example.com", 443),
            Err(Denied::UrlNotGranted("https://www.example.com:443".into()))
        );
        assert_eq!(
            p.check_destination("https", "other.org", 443),
            Err(Denied::UrlNotRequested("https://other.org:443".into()))
        );
    }

    #[tokio::test]
    async fn granted_names_pointing_inward_are_refused_before_connecting() {
        let p = policy(
            &["http://*:*"],
            &["http://metadata.test:80", "http://loop.test:*"],
            &[
                ("metadata.test", "169.254.169.254"),
                ("loop.test", "127.0.0.1"),
            ],
        );
        assert!(matches!(
            p.resolve("http", "metadata.test", 80).await,
            Err(NetError::Denied(Denied::SensitiveAddress(ip))) if ip == IpAddr::from([169, 254, 169, 254])
        ));
        assert!(matches!(
            p.resolve("http", "loop.test", 8080).await,
            Err(NetError::Denied(Denied::SensitiveAddress(_)))
        ));
        let literal = policy(&["http://127.0.0.1:*"], &["http://127.0.0.1:*"], &[]);
        assert_eq!(
            literal.resolve("http", "127.0.0.1", 8080).await.unwrap(),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
    }

    #[test]
    fn sockets_need_a_literal_tcp_grant_and_slots_are_capped() {
        let p = policy(&["tcp://*:*"], &["tcp://127.0.0.1:5432"], &[]);
        assert_eq!(
            p.check_socket("tcp", "127.0.0.1:5432".parse().unwrap()),
            Ok(())
        );
        assert!(
            p.check_socket("tcp", "127.0.0.1:22".parse().unwrap())
                .is_err()
        );
        assert!(
            p.check_socket("udp", "127.0.0.1:5432".parse().unwrap())
                .is_err()
        );
        let a = p.connection_slot().unwrap();
        let _b = p.connection_slot().unwrap();
        assert_eq!(p.connection_slot().err(), Some(Denied::ConnectionLimit(2)));
        drop(a);
        assert!(p.connection_slot().is_ok());
    }
}
