//! Who is on the other end of a request: CIDR lists from config, and the client address
//! behind trusted proxies.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is a trusted proxy
//! (`server.trusted_proxies`), and then only as far as the chain stays trusted: the
//! client is the right-most hop that is not itself a trusted proxy. Anything to its left
//! was written by the client and is ignored.

use std::net::IpAddr;

/// An address block such as `196.201.214.0/24` or `2001:db8::/32`. A bare address is a
/// block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR block")]
pub struct CidrError(pub String);

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_owned());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a config list of CIDR blocks; the error names the first bad entry.
pub fn parse_cidrs(list: &[String]) -> Result<Vec<Cidr>, CidrError> {
    list.iter().map(|s| Cidr::parse(s)).collect()
}

/// Whether any block in `list` contains `ip`.
pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// The client's address: the TCP `peer`, or, when the peer is a trusted proxy, the
/// right-most address in `x_forwarded_for` that is not a trusted proxy. A malformed hop
/// ends the walk at the last trusted address seen, so a client cannot smuggle an address
/// past a proxy by writing garbage.
pub fn client_ip(peer: IpAddr, x_forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !any_contains(trusted, peer) {
        return peer;
    }
    let Some(xff) = x_forwarded_for else {
        return peer;
    };
    let mut current = peer;
    for hop in xff.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return current;
        };
        let ip = ip.to_canonical();
        if !any_contains(trusted, ip) {
            return ip;
        }
        current = ip;
    }
    current
}

/// [`client_ip`] for an actix request: the peer address and every `X-Forwarded-For`
/// header (joined in order). `None` only when the peer address is unknown.
pub fn request_client_ip(req: &actix_web::HttpRequest, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let mut joined = String::new();
    for v in req.headers().get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(s);
        }
    }
    let xff = (!joined.is_empty()).then_some(joined.as_str());
    Some(client_ip(peer, xff, trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("196.201.214.0/24").unwrap();
        assert!(c.contains(ip("196.201.214.200")));
        assert!(!c.contains(ip("196.201.215.1")));
        assert!(c.contains(ip("::ffff:196.201.214.7")));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(!Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let trusted = parse_cidrs(&["10.0.0.0/8".into()]).unwrap();
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_ip(ip("1.2.3.4"), Some("5.6.7.8"), &trusted),
            ip("1.2.3.4")
        );
        // Trusted peer: the right-most untrusted hop counts, not what the client wrote.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("6.6.6.6, 5.6.7.8, 10.0.0.9"), &trusted),
            ip("5.6.7.8")
        );
        // Trusted peer without a header.
        assert_eq!(client_ip(ip("10.0.0.5"), None, &trusted), ip("10.0.0.5"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("5.6.7.8, junk"), &trusted),
            ip("10.0.0.5")
        );
        // No trusted proxies at all: always the peer.
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("5.6.7.8"), &[]),
            ip("10.0.0.5")
        );
    }
}
