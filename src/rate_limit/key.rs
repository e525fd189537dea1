use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::ConfigError;

/// The longest key, in bytes, a [`Key`] holds. Longer inputs are not usable as
/// keys (the request follows the layer's fallback rule), so a client cannot
/// make the limiter store large keys.
pub const MAX_KEY_LEN: usize = 64;

/// A rate-limit key: up to [`MAX_KEY_LEN`] bytes held inline (no heap
/// allocation), tagged with what it came from (an IP address, a header value,
/// a number) so that equal bytes from different sources never share a bucket.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use seawall::rate_limit::Key;
///
/// let k = Key::from_bytes(b"tenant-42").unwrap();
/// assert_eq!(k.as_bytes(), b"tenant-42");
/// assert!(Key::from_bytes(&[b'x'; 65]).is_none());
/// assert_ne!(Key::from_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), Key::from_bytes(&[127, 0, 0, 1]).unwrap());
/// ```
#[derive(Clone, Copy)]
pub struct Key {
    tag: u8,
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

const TAG_GLOBAL: u8 = 0;
const TAG_BYTES: u8 = 1;
const TAG_V4: u8 = 4;
const TAG_V6: u8 = 6;
const TAG_U64: u8 = 8;

impl Key {
    /// The one key of a global limit.
    pub const GLOBAL: Key = Key {
        tag: TAG_GLOBAL,
        len: 0,
        bytes: [0; MAX_KEY_LEN],
    };

    fn with(tag: u8, src: &[u8]) -> Key {
        let mut bytes = [0; MAX_KEY_LEN];
        bytes[..src.len()].copy_from_slice(src);
        Key {
            tag,
            len: src.len() as u8,
            bytes,
        }
    }

    /// A key made of `bytes` (an API key, a tenant id, …); `None` when longer
    /// than [`MAX_KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        (bytes.len() <= MAX_KEY_LEN).then(|| Key::with(TAG_BYTES, bytes))
    }

    /// A key for an IP address. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn from_ip(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(v4) => Key::with(TAG_V4, &v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::with(TAG_V4, &v4.octets()),
                None => Key::with(TAG_V6, &v6.octets()),
            },
        }
    }

    /// A key for the network of `ip`: the address with all but its first
    /// `v4_prefix` bits (IPv4, IPv4-mapped IPv6 included) or `v6_prefix`
    /// bits (IPv6) cleared, so that every address of one network shares a
    /// key. Prefixes beyond the address length keep it whole.
    ///
    /// ```
    /// use seawall::rate_limit::Key;
    ///
    /// let a = Key::from_network("2001:db8:1:2:aaaa::1".parse().unwrap(), 32, 64);
    /// let b = Key::from_network("2001:db8:1:2:ffff::9".parse().unwrap(), 32, 64);
    /// assert_eq!(a, b);
    /// assert_eq!(a.ip(), Some("2001:db8:1:2::".parse().unwrap()));
    /// ```
    pub fn from_network(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Key {
        let v4 = |v4: Ipv4Addr| {
            let bits = u32::from(v4) & mask32(v4_prefix);
            Key::with(TAG_V4, &bits.to_be_bytes())
        };
        match ip {
            IpAddr::V4(a) => v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => v4(m),
                None => {
                    let bits = u128::from(a) & mask128(v6_prefix);
                    Key::with(TAG_V6, &bits.to_be_bytes())
                }
            },
        }
    }

    /// A key for a number (a user id, a shard).
    pub fn from_u64(n: u64) -> Key {
        Key::with(TAG_U64, &n.to_be_bytes())
    }

    /// The key's bytes (without its source tag).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The IP address, for keys made by [`Key::from_ip`].
    pub fn ip(&self) -> Option<IpAddr> {
        match self.tag {
            TAG_V4 => {
                let b: [u8; 4] = self.bytes[..4].try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            }
            TAG_V6 => {
                let b: [u8; 16] = self.bytes[..16].try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        }
    }

    /// A one-byte tag telling the key's source apart (used in Redis key names).
    #[cfg(feature = "redis")]
    pub(crate) fn tag_char(&self) -> u8 {
        match self.tag {
            TAG_GLOBAL => b'g',
            TAG_BYTES => b'b',
            TAG_V4 => b'4',
            TAG_V6 => b'6',
            _ => b'n',
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.tag == other.tag && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// Whole words: the tag and length, then the bytes' words (the last
    /// one with the zeros past the end: every key is made with its unused
    /// bytes zero), each taken by a word-wise hasher in one step.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.tag) | (u64::from(self.len) << 8));
        let words = usize::from(self.len).div_ceil(8);
        for word in self.bytes.chunks_exact(8).take(words) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            state.write_u64(u64::from_le_bytes(w));
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.ip() {
            return write!(f, "Key({ip})");
        }
        match self.tag {
            TAG_GLOBAL => f.write_str("Key(global)"),
            TAG_U64 => {
                let b: [u8; 8] = self.bytes[..8].try_into().unwrap_or([0; 8]);
                write!(f, "Key({})", u64::from_be_bytes(b))
            }
            _ => write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

/// The key as a label: an address (`192.0.2.7`, `2001:db8::/64`'s address),
/// a number, `global`, or its bytes as text (invalid UTF-8 replaced), for
/// instance names such as `format!("db.breaker.{key}")`.
///
/// ```
/// use seawall::rate_limit::Key;
/// assert_eq!(Key::from_u64(7).to_string(), "7");
/// assert_eq!(Key::from_bytes(b"acme").unwrap().to_string(), "acme");
/// assert_eq!(Key::GLOBAL.to_string(), "global");
/// ```
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.ip() {
            return write!(f, "{ip}");
        }
        match self.tag {
            TAG_GLOBAL => f.write_str("global"),
            TAG_U64 => {
                let b: [u8; 8] = self.bytes[..8].try_into().unwrap_or([0; 8]);
                write!(f, "{}", u64::from_be_bytes(b))
            }
            _ => f.write_str(&String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

/// Why a request had no usable key. Reported as
/// [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored) and the
/// request then follows the layer's [`Fallback`](crate::rate_limit::Fallback) rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingKey {
    /// Which input was looked at (`"x-api-key"`, `"peer_addr"`, `"x-forwarded-for"`, …).
    pub input: &'static str,
    /// Why it was not usable (`"absent"`, `"too_large"`, `"malformed"`, …).
    pub reason: &'static str,
}

impl MissingKey {
    /// Creates the reason.
    pub const fn new(input: &'static str, reason: &'static str) -> Self {
        MissingKey { input, reason }
    }
}

/// Finds the rate-limit key of a request.
///
/// Implemented by the built-in extractors ([`Global`], [`PeerAddr`], and with
/// feature `http` [`HeaderKey`](crate::rate_limit::HeaderKey) and
/// [`ClientIp`](crate::rate_limit::ClientIp)) and by closures
/// `Fn(&Req) -> Option<Key>`. It runs on every request: it must be cheap and
/// must not allocate.
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The key of `req`, or why there is none.
    fn extract(&self, req: &Req) -> Result<Key, MissingKey>;

    /// How many cells `req` costs (default 1; 0 is free). Set it with
    /// [`RateLimitLayerBuilder::cost`](super::RateLimitLayerBuilder::cost).
    #[inline]
    fn cost(&self, _req: &Req) -> u32 {
        1
    }
}

/// A key extractor with a cost per request: what
/// [`RateLimitLayerBuilder::cost`](super::RateLimitLayerBuilder::cost)
/// makes of the key extractor `X` and the cost function `F`.
#[derive(Debug, Clone)]
pub struct Weighted<X, F> {
    pub(crate) key: X,
    pub(crate) cost: F,
}

impl<Req, X, F> KeyExtractor<Req> for Weighted<X, F>
where
    X: KeyExtractor<Req>,
    F: Fn(&Req) -> u32 + Send + Sync + 'static,
{
    #[inline]
    fn extract(&self, req: &Req) -> Result<Key, MissingKey> {
        self.key.extract(req)
    }

    #[inline]
    fn cost(&self, req: &Req) -> u32 {
        (self.cost)(req)
    }
}

/// The cost of a request in cells, as an `http::Request` extension: set it
/// in a layer (or a `map_request`) outside the rate limit, and read it with
/// `.cost(seawall::rate_limit::cost_from_extension)`. A request without one
/// costs 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost(pub u32);

/// The [`Cost`] extension of `req`, or 1: a cost function for
/// [`RateLimitLayerBuilder::cost`](super::RateLimitLayerBuilder::cost).
#[cfg(feature = "http")]
pub fn cost_from_extension<B>(req: &http::Request<B>) -> u32 {
    req.extensions().get::<Cost>().map_or(1, |c| c.0)
}

impl<Req, F> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<Key> + Send + Sync + 'static,
{
    #[inline]
    fn extract(&self, req: &Req) -> Result<Key, MissingKey> {
        self(req).ok_or(MissingKey::new("key", "absent"))
    }
}

/// One limit shared by every request (the default of [`RateLimitLayer`](crate::rate_limit::RateLimitLayer)).
///
/// A global limit uses one bucket (unkeyed): one atomic
/// compare-and-swap per request, no map.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    #[inline]
    fn extract(&self, _req: &Req) -> Result<Key, MissingKey> {
        Ok(Key::GLOBAL)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), such as
/// the networks of trusted proxies.
///
/// ```
/// use seawall::rate_limit::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// // A bare address is a /32 (or /128).
/// assert!("192.0.2.1".parse::<Cidr>().unwrap().contains("192.0.2.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; an error if the prefix is longer than the
    /// address. An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the
    /// IPv4 network it maps (`10.0.0.0/8`), as addresses are compared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, ConfigError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(ConfigError::new(
                "rate_limit",
                format!("trusted proxy network {addr}/{prefix}: the prefix must be at most {max}"),
            ));
        }
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses are
    /// compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Cidr, ConfigError> {
        let bad = || {
            ConfigError::new(
                "rate_limit",
                format!("trusted proxy network {s:?} is not an address or address/prefix"),
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let written: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => Some(p.trim().parse::<u8>().map_err(|_| bad())?),
            None => None,
        };
        // An IPv4-mapped network with an IPv6 prefix (`::ffff:10.0.0.0/104`)
        // is mapped by `Cidr::new`; with a short one (`::ffff:10.0.0.0/8`)
        // the prefix is the IPv4 address's.
        if let (IpAddr::V6(v6), Some(p)) = (written, prefix) {
            if v6.to_ipv4_mapped().is_some() && p > 32 {
                return Cidr::new(written, p);
            }
        }
        let addr = canonical(written);
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix)
    }
}

/// The peer (socket) address of the connection, read from the request's
/// extensions (feature `http`) — for `http::Request`, the first of:
///
/// - a [`std::net::SocketAddr`] extension,
/// - a [`std::net::IpAddr`] extension,
/// - (feature `axum`) axum's `ConnectInfo<SocketAddr>`, which axum records
///   when served with
///   `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`
///   (without it no request has a peer address, and every one follows the
///   layer's [`Fallback`](crate::rate_limit::Fallback): one shared limit),
///
/// or, with [`PeerAddr::with`], any function of the extensions.
///
/// Behind a reverse proxy every request comes from the proxy: use
/// [`ClientIp`](crate::rate_limit::ClientIp) there.
#[derive(Clone, Copy)]
pub struct PeerAddr {
    #[cfg(feature = "http")]
    read: Option<fn(&http::Extensions) -> Option<IpAddr>>,
    prefixes: Prefixes,
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerAddr").finish_non_exhaustive()
    }
}

impl Default for PeerAddr {
    fn default() -> Self {
        PeerAddr::new()
    }
}

impl PeerAddr {
    /// Reads a `SocketAddr` or `IpAddr` extension, and with feature `axum`
    /// axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    pub const fn new() -> Self {
        PeerAddr {
            #[cfg(feature = "http")]
            read: None,
            prefixes: Prefixes::DEFAULT,
        }
    }

    /// Reads the peer address with `read` (for a connection-info type of
    /// your server that [`new`](Self::new) does not know).
    #[cfg(feature = "http")]
    pub const fn with(read: fn(&http::Extensions) -> Option<IpAddr>) -> Self {
        PeerAddr {
            read: Some(read),
            prefixes: Prefixes::DEFAULT,
        }
    }

    /// Keys by network: IPv4 addresses by their first `v4` bits (default
    /// 32, one key per address), IPv6 ones by their first `v6` (default 64:
    /// one key per /64, the block one subscriber or one host gets, as CDNs
    /// and proxies key rate limits; a single address of it would let one
    /// client take 2⁶⁴ keys).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `1 ≤ v4 ≤ 32` and `1 ≤ v6 ≤ 128`.
    pub fn prefixes(mut self, v4: u8, v6: u8) -> Result<Self, ConfigError> {
        self.prefixes = Prefixes::new(v4, v6)?;
        Ok(self)
    }

    /// The key of `ip`: its network under this extractor's prefixes.
    pub fn key_of(&self, ip: IpAddr) -> Key {
        self.prefixes.key_of(ip)
    }

    #[cfg(feature = "http")]
    pub(crate) fn peer(&self, ext: &http::Extensions) -> Option<IpAddr> {
        if let Some(read) = self.read {
            return read(ext);
        }
        let plain = ext
            .get::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|| ext.get::<IpAddr>().copied());
        #[cfg(feature = "axum")]
        let plain = plain.or_else(|| {
            ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip())
        });
        plain
    }
}

/// The peer address of a plain [`std::net::SocketAddr`] "request" (for
/// services keyed by connection, e.g. a `tower::Service<SocketAddr>` acceptor).
impl KeyExtractor<std::net::SocketAddr> for PeerAddr {
    fn extract(&self, req: &std::net::SocketAddr) -> Result<Key, MissingKey> {
        Ok(self.key_of(req.ip()))
    }
}

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for PeerAddr {
    fn extract(&self, req: &http::Request<B>) -> Result<Key, MissingKey> {
        self.peer(req.extensions())
            .map(|ip| self.key_of(ip))
            .ok_or(MissingKey::new("peer_addr", "absent"))
    }
}

/// How client addresses are grouped into keys: by their first `v4` bits
/// (IPv4) or `v6` bits (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefixes {
    v4: u8,
    v6: u8,
}

impl Prefixes {
    /// IPv4 addresses whole, IPv6 ones by their /64.
    pub(crate) const DEFAULT: Prefixes = Prefixes { v4: 32, v6: 64 };
    /// The wider networks of the keyed limit's overflow table.
    pub(crate) const OVERFLOW: Prefixes = Prefixes { v4: 24, v6: 48 };

    /// Validated: `1 ≤ v4 ≤ 32`, `1 ≤ v6 ≤ 128`.
    pub(crate) fn new(v4: u8, v6: u8) -> Result<Prefixes, ConfigError> {
        if !(1..=32).contains(&v4) || !(1..=128).contains(&v6) {
            return Err(ConfigError::new(
                "key",
                format!(
                    "prefixes must be in 1..=32 (IPv4) and 1..=128 (IPv6), got /{v4} and /{v6}"
                ),
            ));
        }
        Ok(Prefixes { v4, v6 })
    }

    /// The key of `ip`'s network.
    pub(crate) fn key_of(self, ip: IpAddr) -> Key {
        Key::from_network(ip, self.v4, self.v6)
    }
}

/// The first `prefix` bits set (all 32 from 32 on).
fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// The first `prefix` bits set (all 128 from 128 on).
fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn h(k: &Key) -> u64 {
        let mut s = DefaultHasher::new();
        k.hash(&mut s);
        s.finish()
    }

    #[test]
    fn keys_compare_by_tag_and_bytes() {
        let a = Key::from_bytes(b"abc").unwrap();
        let b = Key::from_bytes(b"abc").unwrap();
        assert_eq!(a, b);
        assert_eq!(h(&a), h(&b));
        assert_ne!(a, Key::from_bytes(b"abd").unwrap());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(Key::from_ip(mapped), Key::from_ip(v4));
        assert_eq!(Key::from_ip(v4).ip(), Some(v4));
        assert!(Key::from_bytes(&[0; MAX_KEY_LEN]).is_some());
        assert!(Key::from_bytes(&[0; MAX_KEY_LEN + 1]).is_none());
    }

    /// The hash takes whole words: keys that differ only in their length
    /// (a trailing zero byte), in their last byte of a word, or in their
    /// tag, hash apart; every length up to the longest is hashed.
    #[test]
    fn keys_hash_apart_by_length_tag_and_every_byte() {
        let mut seen = std::collections::HashSet::new();
        for len in 0..=MAX_KEY_LEN {
            let zeros = Key::from_bytes(&vec![0; len]).unwrap();
            assert!(seen.insert(h(&zeros)), "{len} zero bytes");
            let mut bytes = vec![7u8; len];
            if let Some(last) = bytes.last_mut() {
                *last = 8;
                assert!(seen.insert(h(&Key::from_bytes(&bytes).unwrap())), "{len}");
            }
        }
        let v4: IpAddr = "1.2.3.4".parse().unwrap();
        assert_ne!(
            h(&Key::from_ip(v4)),
            h(&Key::from_bytes(&[1, 2, 3, 4]).unwrap())
        );
        assert_ne!(
            h(&Key::from_u64(5)),
            h(&Key::from_bytes(&5u64.to_le_bytes()).unwrap())
        );
    }

    #[test]
    fn cidr_matching() {
        let n: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(n.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!n.contains("2001:db9::5".parse().unwrap()));
        assert!(!n.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("::ffff:10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("x/8".parse::<Cidr>().is_err());
        // An IPv4-mapped network trusts the IPv4 addresses it maps, written
        // either way.
        for mapped in [
            Cidr::new("::ffff:10.0.0.0".parse().unwrap(), 104).unwrap(),
            "::ffff:10.0.0.0/104".parse().unwrap(),
            "::ffff:10.0.0.0/8".parse().unwrap(),
        ] {
            assert!(mapped.contains("10.1.2.3".parse().unwrap()));
            assert!(mapped.contains("::ffff:10.1.2.3".parse().unwrap()));
            assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        }
    }
}
