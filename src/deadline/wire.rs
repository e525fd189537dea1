//! Relative timeouts on the wire: the `grpc-timeout` format and integer
//! milliseconds. Pure functions, free of tower and http types.

use std::fmt;
use std::time::Duration;

/// The largest value `grpc-timeout` can carry in one unit: eight digits.
const MAX_GRPC_VALUE: u64 = 99_999_999;

/// The longest integer-milliseconds value accepted by [`parse_timeout_ms`]
/// (18 digits, about 31 million years; anything longer is refused).
const MAX_MS_DIGITS: usize = 18;

/// Why a timeout value on the wire could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseTimeoutError {
    /// The value was empty (or only a unit, with no digits).
    Empty,
    /// More digits than the format allows (8 for `grpc-timeout`, 18 for milliseconds).
    TooLong,
    /// A character other than an ASCII digit where a digit belongs (a sign, a
    /// space, a dot, a non-ASCII byte, …).
    Malformed,
    /// The `grpc-timeout` unit was not one of `H M S m u n`.
    BadUnit,
}

impl ParseTimeoutError {
    /// A short, stable, lower-case label, used as the `reason` of
    /// [`EventKind::InputIgnored`](crate::observe::EventKind::InputIgnored):
    /// `"empty"`, `"too_long"`, `"malformed"` or `"bad_unit"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParseTimeoutError::Empty => "empty",
            ParseTimeoutError::TooLong => "too_long",
            ParseTimeoutError::Malformed => "malformed",
            ParseTimeoutError::BadUnit => "bad_unit",
        }
    }
}

impl fmt::Display for ParseTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            ParseTimeoutError::Empty => "empty timeout value",
            ParseTimeoutError::TooLong => "timeout value has too many digits",
            ParseTimeoutError::Malformed => "timeout value is not made of ASCII digits",
            ParseTimeoutError::BadUnit => "timeout unit is not one of H M S m u n",
        };
        f.pad(msg)
    }
}

impl std::error::Error for ParseTimeoutError {}

/// The one rule for a number in a header (`grpc-timeout`'s digits, the
/// milliseconds header, `Retry-After` in seconds, `grpc-retry-pushback-ms`,
/// the attempt headers): HTTP's optional whitespace around the value (spaces
/// and tabs) is not part of it (RFC 9110, section 5.5), then 1..=`max_digits`
/// ASCII digits and nothing else: no sign, no decimal point, no spaces
/// inside. Never panics.
pub(crate) fn header_number(value: &[u8], max_digits: usize) -> Result<u64, ParseTimeoutError> {
    parse_digits(trim_ows(value), max_digits)
}

/// `value` without HTTP's optional whitespace (spaces, tabs) around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// Reads 1..=`max_digits` ASCII digits (at most 18: no overflow).
fn parse_digits(digits: &[u8], max_digits: usize) -> Result<u64, ParseTimeoutError> {
    if digits.is_empty() {
        return Err(ParseTimeoutError::Empty);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(ParseTimeoutError::Malformed);
    }
    if digits.len() > max_digits {
        return Err(ParseTimeoutError::TooLong);
    }
    // At most 18 digits: fits in a u64 without overflow.
    Ok(digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits followed by one unit,
/// `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds),
/// `u` (microseconds) or `n` (nanoseconds). Nothing else is accepted: no sign,
/// no spaces inside, no decimal point (HTTP's optional whitespace around the
/// value is dropped first). Never panics.
///
/// ```
/// use std::time::Duration;
/// use seawall::deadline::{parse_grpc_timeout, ParseTimeoutError};
///
/// assert_eq!(parse_grpc_timeout(b"1500m"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_grpc_timeout(b"2H"), Ok(Duration::from_secs(7200)));
/// assert_eq!(parse_grpc_timeout(b"123456789n"), Err(ParseTimeoutError::TooLong));
/// assert_eq!(parse_grpc_timeout(b"-5S"), Err(ParseTimeoutError::Malformed));
/// assert_eq!(parse_grpc_timeout(b"10s"), Err(ParseTimeoutError::BadUnit));
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, ParseTimeoutError> {
    let Some((&unit, digits)) = trim_ows(value).split_last() else {
        return Err(ParseTimeoutError::Empty);
    };
    if unit.is_ascii_digit() && !digits.iter().all(u8::is_ascii_digit) {
        return Err(ParseTimeoutError::Malformed);
    }
    if unit.is_ascii_digit() {
        // Digits with no unit at all.
        return Err(ParseTimeoutError::BadUnit);
    }
    let n = parse_digits(digits, 8)?;
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(ParseTimeoutError::BadUnit),
    })
}

/// Parses a timeout in integer milliseconds: 1 to 18 ASCII digits, nothing
/// else (no sign, no spaces inside, no unit; HTTP's optional whitespace
/// around the value is dropped first). Never panics.
///
/// ```
/// use std::time::Duration;
/// use seawall::deadline::{parse_timeout_ms, ParseTimeoutError};
///
/// assert_eq!(parse_timeout_ms(b"250"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_timeout_ms(b"-1"), Err(ParseTimeoutError::Malformed));
/// assert_eq!(parse_timeout_ms(b""), Err(ParseTimeoutError::Empty));
/// ```
pub fn parse_timeout_ms(value: &[u8]) -> Result<Duration, ParseTimeoutError> {
    header_number(value, MAX_MS_DIGITS).map(Duration::from_millis)
}

/// A formatted `grpc-timeout` value, kept on the stack (at most 9 bytes:
/// 8 digits and a unit). Returned by [`format_grpc_timeout`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcTimeout {
    buf: [u8; 9],
    len: u8,
}

impl GrpcTimeout {
    /// The value as text, such as `"1350m"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and an ASCII unit are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0n")
    }

    /// The value as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Display for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcTimeout").field(&self.as_str()).finish()
    }
}

impl AsRef<str> for GrpcTimeout {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Units from finest to coarsest: (suffix, nanoseconds per unit).
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

/// Formats `timeout` as a `grpc-timeout` value.
///
/// The value is taken in the finest unit whose count fits in 8 digits,
/// rounded **down**, so the next hop is never promised more time than is
/// left; it is then written in the coarsest unit that expresses that same
/// value exactly (`1350000u` is written `1350m`). The result parses back to
/// at most `timeout`, and less than one unit below it. Durations longer than
/// 99 999 999 hours are written `99999999H`.
///
/// ```
/// use std::time::Duration;
/// use seawall::deadline::format_grpc_timeout;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(1350)).as_str(), "1350m");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(120)).as_str(), "2M");
/// assert_eq!(format_grpc_timeout(Duration::from_nanos(1_234_567_891)).as_str(), "1234567u");
/// assert_eq!(format_grpc_timeout(Duration::ZERO).as_str(), "0n");
/// ```
pub fn format_grpc_timeout(timeout: Duration) -> GrpcTimeout {
    let nanos = timeout.as_nanos();
    // In 64 bits below 584 years (every timeout a caller sends): a 128-bit
    // division is a call of its own, several per value.
    let (value, idx) = match u64::try_from(nanos) {
        Ok(n) => grpc_units(n),
        Err(_) => grpc_units(nanos),
    };
    let mut digits = [0u8; 20];
    let digits = decimal(value, &mut digits); // <= 99_999_999: 8 digits
    let n = digits.len();
    let mut buf = [0u8; 9];
    buf[..n].copy_from_slice(digits);
    buf[n] = UNITS[idx].0;
    GrpcTimeout {
        buf,
        len: (n + 1) as u8,
    }
}

/// The count and the unit (an index into `UNITS`) of a `grpc-timeout` of
/// `nanos`: the finest unit whose count fits in 8 digits, rounded down, then
/// the coarsest unit expressing the same count exactly.
#[inline]
fn grpc_units<T>(nanos: T) -> (u64, usize)
where
    T: Copy
        + From<u64>
        + TryInto<u64>
        + PartialOrd
        + std::ops::Div<Output = T>
        + std::ops::Rem<Output = T>,
{
    let mut idx = UNITS.len() - 1;
    let mut value = MAX_GRPC_VALUE;
    for (i, &(_, per)) in UNITS.iter().enumerate() {
        let v = nanos / T::from(per);
        if v <= T::from(MAX_GRPC_VALUE) {
            idx = i;
            value = v.try_into().unwrap_or(MAX_GRPC_VALUE);
            break;
        }
    }
    while idx + 1 < UNITS.len() && value != 0 {
        let ratio = UNITS[idx + 1].1 / UNITS[idx].1;
        if value % ratio != 0 {
            break;
        }
        value /= ratio;
        idx += 1;
    }
    (value, idx)
}

/// The length in nanoseconds of the unit a `grpc-timeout` value ends with.
#[cfg(test)]
fn unit_nanos(value: &[u8]) -> u128 {
    let unit = value.last().copied().unwrap_or(b'n');
    UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, n)| u128::from(*n))
        .unwrap_or(1)
}

/// `n` in decimal digits, written at the end of `buf` (no allocation).
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_header_number_drops_the_whitespace_around_it_and_nothing_else() {
        use ParseTimeoutError::*;
        for (value, want) in [
            (&b"120"[..], Ok(120)),
            (b" 120\t", Ok(120)),
            (b"0", Ok(0)),
            (b"", Err(Empty)),
            (b" \t ", Err(Empty)),
            (b"1 2", Err(Malformed)),
            (b"+1", Err(Malformed)),
            (b"-1", Err(Malformed)),
            (b"1.5", Err(Malformed)),
            (b"\xd9\xa1", Err(Malformed)),
            (b"12345678901", Err(TooLong)),
        ] {
            assert_eq!(header_number(value, 10), want, "{value:?}");
        }
        assert_eq!(
            parse_grpc_timeout(b" 100m "),
            Ok(Duration::from_millis(100))
        );
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout(b"1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"3M"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"7S"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_grpc_timeout(b"15m"), Ok(Duration::from_millis(15)));
        assert_eq!(parse_grpc_timeout(b"99u"), Ok(Duration::from_micros(99)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Ok(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"0m"), Ok(Duration::ZERO));
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn refuses_everything_else() {
        use ParseTimeoutError::*;
        for (input, err) in [
            (&b""[..], Empty),
            (b"m", Empty),
            (b"100", BadUnit),
            (b"100x", BadUnit),
            (b"100 m", Malformed),
            (b"1 00m", Malformed),
            (b"+100m", Malformed),
            (b"-100m", Malformed),
            (b"1.5S", Malformed),
            (b"123456789m", TooLong),
            ("１００m".as_bytes(), Malformed),
            (b"100m\xff", Malformed),
            (b"100\xff", BadUnit),
            (b"10-0", Malformed),
        ] {
            assert_eq!(parse_grpc_timeout(input), Err(err), "{input:?}");
        }
        assert_eq!(parse_timeout_ms(b"1e3"), Err(Malformed));
        assert_eq!(parse_timeout_ms(b"0x10"), Err(Malformed));
        assert_eq!(parse_timeout_ms(b"1234567890123456789"), Err(TooLong));
        assert_eq!(
            parse_timeout_ms(b"123456789012345678"),
            Ok(Duration::from_millis(123_456_789_012_345_678))
        );
    }

    #[test]
    fn formats_finest_fitting_unit_rounded_down_then_shortest_exact() {
        let f = |d: Duration| format_grpc_timeout(d).as_str().to_owned();
        assert_eq!(f(Duration::from_nanos(1)), "1n");
        assert_eq!(f(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(f(Duration::from_nanos(100_000_001)), "100m");
        assert_eq!(f(Duration::from_nanos(100_001_000)), "100001u");
        assert_eq!(f(Duration::from_nanos(100_000_000)), "100m");
        assert_eq!(f(Duration::from_millis(1350)), "1350m");
        assert_eq!(f(Duration::from_millis(1000)), "1S");
        assert_eq!(f(Duration::from_secs(90)), "90S");
        assert_eq!(f(Duration::from_secs(3600)), "1H");
        assert_eq!(f(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(f(Duration::MAX), "99999999H");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_grpc_timeout(&bytes);
            let _ = parse_timeout_ms(&bytes);
        }

        #[test]
        fn parsed_values_are_bounded(digits in "[0-9]{1,8}", unit in "[HMSmun]") {
            let text = format!("{digits}{unit}");
            let d = parse_grpc_timeout(text.as_bytes()).unwrap();
            prop_assert!(d <= Duration::from_secs(99_999_999 * 3600));
        }

        #[test]
        fn format_then_parse_never_grows_and_loses_less_than_a_unit(
            nanos in 0u64..=u64::MAX,
            secs in 0u64..(99_999_999 * 3600),
            pick in any::<bool>(),
        ) {
            let d = if pick { Duration::from_nanos(nanos) } else { Duration::new(secs, (nanos % 1_000_000_000) as u32) };
            let text = format_grpc_timeout(d);
            prop_assert!(text.as_bytes().len() <= 9);
            let back = parse_grpc_timeout(text.as_bytes()).unwrap();
            prop_assert!(back <= d, "{d:?} -> {text} -> {back:?}");
            prop_assert!((d - back).as_nanos() < unit_nanos(text.as_bytes()), "{d:?} -> {text} -> {back:?}");
        }
    }
}
