//! Header values that a layer writes on every request, without a heap
//! allocation each.
//!
//! `http` keeps a header value that is not `'static` in a `Bytes` of its
//! own: made from a slice, every value is one allocation (and one free when
//! the request is dropped). The values seawall writes per request (the time
//! left, a few digits) are instead cut from a buffer of this thread's
//! ([`ARENA_BYTES`]), which each value shares by reference count: a new
//! buffer, two allocations (its bytes and its count), every [`ARENA_BYTES`]
//! bytes of values, about a hundred requests. A buffer is freed when the
//! last value cut from it is dropped, so a value kept alive keeps at most
//! [`ARENA_BYTES`] with it. The values are marked sensitive, so that
//! HTTP/2's header compression never keeps them in its table (where each
//! would keep its buffer for the connection's life).

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderValue;

/// The size of one thread's buffer of header values.
pub(crate) const ARENA_BYTES: usize = 1024;

/// Values longer than this are made the usual way (seawall writes none).
const LONGEST: usize = 64;

thread_local! {
    static ARENA: RefCell<Option<BytesMut>> = const { RefCell::new(None) };
}

/// `bytes` as a header value, cut from this thread's buffer; `None` when
/// they are not a valid header value.
pub(crate) fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    if bytes.len() > LONGEST {
        return HeaderValue::from_bytes(bytes).ok();
    }
    let cut = ARENA.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        let arena = match &mut *slot {
            Some(arena) if arena.capacity() >= bytes.len() => arena,
            // A fresh buffer; the one before is freed with its last value.
            slot => slot.insert(BytesMut::with_capacity(ARENA_BYTES)),
        };
        arena.extend_from_slice(bytes);
        Some(arena.split_to(bytes.len()).freeze())
    });
    let mut value = match cut {
        Ok(Some(shared)) => HeaderValue::from_maybe_shared(shared).ok()?,
        // This thread's storage is being torn down.
        _ => HeaderValue::from_bytes(bytes).ok()?,
    };
    // Never indexed by HTTP/2's header compression: a value that changes
    // with every request is no use in its table, where it would evict the
    // ones that repeat, and keep its buffer alive with the connection.
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_from_one_buffer_until_it_is_full() {
        let first = header_value(b"12345678").unwrap();
        let mut kept = vec![first.clone()];
        for i in 0..(ARENA_BYTES / 8) * 3 {
            let digits = format!("{:08}", i % 100_000_000);
            let v = header_value(digits.as_bytes()).unwrap();
            assert_eq!(v.as_bytes(), digits.as_bytes());
            kept.push(v);
        }
        // Values cut earlier are untouched by the ones after them.
        assert_eq!(first.as_bytes(), b"12345678");
        assert!(first.is_sensitive(), "never indexed by HPACK");
        assert_eq!(kept[1].as_bytes(), b"00000000");
        assert_eq!(
            kept.last().unwrap().as_bytes(),
            format!("{:08}", (ARENA_BYTES / 8) * 3 - 1).as_bytes()
        );
        // Values next to each other in one buffer share its memory.
        let gap = kept[2].as_bytes().as_ptr() as usize - kept[1].as_bytes().as_ptr() as usize;
        assert_eq!(gap, 8);
    }

    #[test]
    fn invalid_and_long_values_are_refused_or_made_apart() {
        assert!(header_value(b"12\n3").is_none());
        let long = [b'7'; LONGEST + 1];
        assert_eq!(header_value(&long).unwrap().as_bytes(), &long[..]);
        // The buffer still serves the next value.
        assert_eq!(header_value(b"250").unwrap().as_bytes(), b"250");
    }
}
