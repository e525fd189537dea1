//! Values that belong to the call in progress on this task: a request's
//! [`Deadline`](crate::deadline::Deadline), its criticality, the attempt it
//! arrived as. A layer sets one around its inner `call` and around every
//! `poll` of the inner future, and restores what was there before, so code
//! below reads it while it runs and nothing else ever does.
//!
//! The value lives in a thread-local cell for the length of one `call` or
//! one `poll` (a task runs on one thread while it is polled); setting and
//! restoring it is two cell writes, with no closure for the inner future to
//! travel out of.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use seawall::deadline::{self, Deadline};
//!
//! // `deadline::scope` returns a `local::Scoped` future.
//! let scoped: seawall::local::Scoped<Deadline, _> =
//!     deadline::scope(Deadline::after(Duration::from_secs(1)), async {
//!         deadline::remaining()
//!     });
//! assert_eq!(scoped.await, Some(Duration::from_secs(1)));
//! assert_eq!(deadline::current(), None);
//! # }
//! ```

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;

use pin_project_lite::pin_project;

/// The cell a value of the call in progress lives in.
pub(crate) type Key<T> = LocalKey<Cell<Option<T>>>;

/// The value set in `key` by the innermost scope around this code, if any.
#[inline]
pub(crate) fn get<T: Copy + 'static>(key: &'static Key<T>) -> Option<T> {
    key.try_with(Cell::get).ok().flatten()
}

/// Sets `key` while it lives; restores the value before when dropped (also
/// when the code in between panics). Not `Send`: it restores the value on
/// the thread that set it, so it cannot be held across an `.await`.
#[must_use = "the value is set only while the guard lives"]
pub(crate) struct Guard<T: Copy + 'static> {
    key: &'static Key<T>,
    before: Option<T>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<T: Copy + 'static> Guard<T> {
    #[inline]
    pub(crate) fn set(key: &'static Key<T>, value: T) -> Self {
        let before = key.try_with(|c| c.replace(Some(value))).ok().flatten();
        Guard {
            key,
            before,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl<T: Copy + 'static> Drop for Guard<T> {
    #[inline]
    fn drop(&mut self) {
        let _ = self.key.try_with(|c| c.set(self.before));
    }
}

/// Runs `f` with `value` set in `key`.
#[inline]
pub(crate) fn sync_scope<T: Copy + 'static, R>(
    key: &'static Key<T>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    let _guard = Guard::set(key, value);
    f()
}

pin_project! {
    /// A future that runs with a value of the call in progress set on every
    /// poll: returned by [`deadline::scope`](crate::deadline::scope),
    /// [`criticality::scope`](crate::shed::criticality::scope) (feature
    /// `shed`) and
    /// [`scope_inbound_attempt`](crate::retry::scope_inbound_attempt)
    /// (feature `retry`).
    pub struct Scoped<T, F>
    where
        T: Copy,
        T: 'static,
    {
        key: &'static Key<T>,
        value: T,
        #[pin]
        inner: F,
    }
}

impl<T: Copy + 'static, F> Scoped<T, F> {
    #[inline]
    pub(crate) fn new(key: &'static Key<T>, value: T, inner: F) -> Self {
        Scoped { key, value, inner }
    }

    /// The value set around the inner future.
    pub fn value(&self) -> T {
        self.value
    }
}

impl<T: Copy + 'static, F: Future> Future for Scoped<T, F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _guard = Guard::set(this.key, *this.value);
        this.inner.poll(cx)
    }
}

impl<T: Copy + fmt::Debug + 'static, F> fmt::Debug for Scoped<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static KEY: Cell<Option<u32>> = const { Cell::new(None) };
    }

    #[test]
    fn nested_scopes_restore_what_was_there() {
        assert_eq!(get(&KEY), None);
        sync_scope(&KEY, 1, || {
            assert_eq!(get(&KEY), Some(1));
            sync_scope(&KEY, 2, || assert_eq!(get(&KEY), Some(2)));
            assert_eq!(get(&KEY), Some(1));
        });
        assert_eq!(get(&KEY), None);
    }

    #[test]
    fn a_panic_inside_restores_the_value() {
        let caught = std::panic::catch_unwind(|| sync_scope(&KEY, 7, || panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(get(&KEY), None);
    }

    #[tokio::test]
    async fn a_scoped_future_sets_the_value_only_while_polled() {
        let fut = Scoped::new(&KEY, 3, async {
            let before = get(&KEY);
            tokio::task::yield_now().await;
            (before, get(&KEY))
        });
        assert_eq!(fut.await, (Some(3), Some(3)));
        assert_eq!(get(&KEY), None);
        // A spawned task does not inherit it.
        let seen = sync_scope(&KEY, 4, || tokio::spawn(async { get(&KEY) }));
        assert_eq!(seen.await.unwrap(), None);
    }
}
