use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{FORWARDED, HeaderName};

use super::key::{Cidr, Key, KeyExtractor, MissingKey, PeerAddr, Prefixes};

/// The value of a request header as the key: an API key, a tenant id.
///
/// The value's bytes are the key, whatever they are. An absent or empty
/// header, or a value longer than
/// [`MAX_KEY_LEN`](crate::rate_limit::MAX_KEY_LEN), gives no key (the
/// request follows the layer's [`Fallback`](crate::rate_limit::Fallback)).
/// When the header appears several times the first value counts.
///
/// The key is only as trustworthy as the header: a client that chooses its
/// own `x-tenant` gets a fresh bucket (or bulkhead) with every new value.
/// Key by a header your own edge sets or authenticates (an API gateway's
/// tenant id, a verified API key); for anonymous clients key by
/// [`ClientIp`].
///
/// ```
/// use http::HeaderName;
/// use seawall::rate_limit::{HeaderKey, Key, KeyExtractor};
///
/// let by_tenant = HeaderKey::new(HeaderName::from_static("x-tenant"));
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(by_tenant.extract(&req), Ok(Key::from_bytes(b"acme").unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys requests by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl<B> KeyExtractor<http::Request<B>> for HeaderKey {
    fn extract(&self, req: &http::Request<B>) -> Result<Key, MissingKey> {
        let v = req
            .headers()
            .get(&self.name)
            .ok_or(MissingKey::new("header", "absent"))?;
        if v.is_empty() {
            return Err(MissingKey::new("header", "empty"));
        }
        Key::from_bytes(v.as_bytes()).ok_or(MissingKey::new("header", "too_large"))
    }
}

/// Which header a [`ClientIp`] reads the proxy chain from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address behind trusted reverse proxies: the **rightmost**
/// address of the forwarding chain that is not a trusted proxy.
///
/// Each proxy appends the address it received the request from. Everything
/// left of the entry appended by your nearest trusted proxy was written by the
/// client and can be forged; so this extractor starts from the connection's
/// peer address ([`PeerAddr`]) and walks the chain from the right, skipping
/// addresses inside the configured trusted networks, and keys the request by
/// the first address that is not trusted. A client that prepends addresses to
/// `X-Forwarded-For` does not change its key. (Taking the leftmost entry, as
/// some limiters do, lets any client choose its own bucket.)
///
/// - A peer that is not a trusted proxy is the client itself: the headers are
///   ignored.
/// - When every address is trusted, the leftmost one is the key.
/// - An entry that cannot be parsed (`unknown`, an obfuscated identifier, junk)
///   where the client address should be, or a chain longer than
///   [`ClientIp::max_hops`] (default 16) gives no key: the request follows the
///   layer's [`Fallback`](crate::rate_limit::Fallback).
///
/// With no trusted networks configured the peer address is the key. Keys
/// are networks, not single addresses: an IPv6 client's /64 by default
/// ([`prefixes`](ClientIp::prefixes)).
///
/// ```
/// use std::net::SocketAddr;
/// use seawall::rate_limit::{ClientIp, Key, KeyExtractor};
///
/// let client_ip = ClientIp::new().trust("10.0.0.0/8").unwrap();
/// let mut req = http::Request::builder()
///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert("10.0.0.1:443".parse::<SocketAddr>().unwrap());
/// // 10.0.0.1 (peer) and 10.0.0.2 are trusted; 203.0.113.7 is the client;
/// // 6.6.6.6 was written by the client and is ignored.
/// assert_eq!(client_ip.extract(&req), Ok(Key::from_ip("203.0.113.7".parse().unwrap())));
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[Cidr]>,
    header: ForwardedHeader,
    peer: PeerAddr,
    max_hops: usize,
    prefixes: Prefixes,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp::new()
    }
}

impl ClientIp {
    /// Keys by the peer address until trusted proxies are configured.
    pub fn new() -> Self {
        ClientIp {
            trusted: Arc::from(Vec::new()),
            header: ForwardedHeader::XForwardedFor,
            peer: PeerAddr::new(),
            max_hops: 16,
            prefixes: Prefixes::DEFAULT,
        }
    }

    /// Keys clients by network: an IPv4 client by its first `v4` bits
    /// (default 32: each address), an IPv6 client by its first `v6`
    /// (default 64: each /64, the block one subscriber or host gets; keyed
    /// by whole addresses, one /64 could spray 2⁶⁴ keys and fill the key
    /// map).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::error::ConfigError) unless `1 ≤ v4 ≤ 32`
    /// and `1 ≤ v6 ≤ 128`.
    pub fn prefixes(mut self, v4: u8, v6: u8) -> Result<Self, crate::error::ConfigError> {
        self.prefixes = Prefixes::new(v4, v6)?;
        Ok(self)
    }

    /// Trusts the proxy network `cidr` (`"10.0.0.0/8"`, `"::1"`).
    pub fn trust(self, cidr: &str) -> Result<Self, crate::error::ConfigError> {
        let net: Cidr = cidr.parse()?;
        Ok(self.trust_networks([net]))
    }

    /// Trusts the proxy networks `nets`.
    pub fn trust_networks(mut self, nets: impl IntoIterator<Item = Cidr>) -> Self {
        let mut v: Vec<Cidr> = self.trusted.iter().copied().collect();
        v.extend(nets);
        self.trusted = Arc::from(v);
        self
    }

    /// Reads the chain from `header` (default `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Reads the peer address with `peer` (default [`PeerAddr::new`]).
    pub fn peer(mut self, peer: PeerAddr) -> Self {
        self.peer = peer;
        self
    }

    /// The longest chain walked (default 16, at least 1).
    pub fn max_hops(mut self, hops: usize) -> Self {
        self.max_hops = hops.max(1);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    fn input(&self) -> &'static str {
        match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }

    /// The client address of a request with peer `peer` and `headers`.
    pub(crate) fn client(
        &self,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> Result<IpAddr, MissingKey> {
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => &FORWARDED,
        };
        let input = self.input();
        let mut last = peer;
        let mut hops = 0usize;
        // Later header lines were appended by later proxies: walk them last first.
        // A line is read by its parts, last first, and a part only as it is
        // reached: proxies append the address they saw to the line the client
        // wrote, and a byte the client put before it must not hide it.
        for value in headers.get_all(name).iter().rev() {
            for part in value.as_bytes().rsplit(|&b| b == b',') {
                let part = std::str::from_utf8(part)
                    .map_err(|_| MissingKey::new(input, "malformed"))?
                    .trim();
                if part.is_empty() {
                    continue;
                }
                hops += 1;
                if hops > self.max_hops {
                    return Err(MissingKey::new(input, "too_many_hops"));
                }
                let ip = match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(part),
                    ForwardedHeader::Forwarded => forwarded_for(part),
                }
                .ok_or(MissingKey::new(input, "malformed"))?;
                if !self.is_trusted(ip) {
                    return Ok(ip);
                }
                last = ip;
            }
        }
        Ok(last)
    }
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok()
}

/// The `for=` node of one RFC 7239 `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("for") {
            parse_node(v)
        } else {
            None
        }
    })
}

impl<B> KeyExtractor<http::Request<B>> for ClientIp {
    fn extract(&self, req: &http::Request<B>) -> Result<Key, MissingKey> {
        let peer = self
            .peer
            .peer(req.extensions())
            .ok_or(MissingKey::new("peer_addr", "absent"))?;
        self.client(peer, req.headers())
            .map(|ip| self.prefixes.key_of(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &str, values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn rightmost_untrusted_wins() {
        let c = ClientIp::new().trust("10.0.0.0/8").unwrap();
        let h = headers("x-forwarded-for", &["1.1.1.1, 2.2.2.2", "10.0.0.9"]);
        assert_eq!(c.client(ip("10.0.0.1"), &h), Ok(ip("2.2.2.2")));
        // untrusted peer: headers ignored
        assert_eq!(c.client(ip("7.7.7.7"), &h), Ok(ip("7.7.7.7")));
        // all trusted: leftmost
        let h = headers("x-forwarded-for", &["10.1.1.1, 10.0.0.9"]);
        assert_eq!(c.client(ip("10.0.0.1"), &h), Ok(ip("10.1.1.1")));
        // malformed client slot
        let h = headers("x-forwarded-for", &["1.1.1.1, unknown, 10.0.0.9"]);
        assert_eq!(
            c.client(ip("10.0.0.1"), &h),
            Err(MissingKey::new("x-forwarded-for", "malformed"))
        );
    }

    /// A client that writes a byte that is not text into its own
    /// `X-Forwarded-For` line keeps its key: its proxy appended the address
    /// it saw to that line, and that part is read first.
    #[test]
    fn a_byte_the_client_wrote_does_not_hide_the_address_its_proxy_added() {
        let c = ClientIp::new().trust("10.0.0.0/8").unwrap();
        let mut h = http::HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"\xff, 203.0.113.7").unwrap(),
        );
        assert_eq!(c.client(ip("10.0.0.1"), &h), Ok(ip("203.0.113.7")));
        // Reached through trusted proxies only, the byte is the client's slot.
        let mut h = http::HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"\xff, 10.0.0.7").unwrap(),
        );
        assert_eq!(
            c.client(ip("10.0.0.1"), &h),
            Err(MissingKey::new("x-forwarded-for", "malformed"))
        );
    }

    #[test]
    fn forwarded_header() {
        let c = ClientIp::new()
            .trust("10.0.0.0/8")
            .unwrap()
            .header(ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &["for=1.1.1.1, for=\"[2001:db8::17]:4711\";proto=https, for=10.0.0.3"],
        );
        assert_eq!(c.client(ip("10.0.0.1"), &h), Ok(ip("2001:db8::17")));
        let h = headers("forwarded", &["for=\"203.0.113.9:80\";by=10.0.0.1"]);
        assert_eq!(c.client(ip("10.0.0.1"), &h), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn hop_limit() {
        let c = ClientIp::new().trust("10.0.0.0/8").unwrap().max_hops(2);
        let h = headers("x-forwarded-for", &["1.1.1.1, 10.0.0.3, 10.0.0.4"]);
        assert_eq!(
            c.client(ip("10.0.0.1"), &h),
            Err(MissingKey::new("x-forwarded-for", "too_many_hops"))
        );
    }
}
