//! Macros the modules share (declared first in `lib.rs`, so every module
//! sees them).

/// One crate-internal item that only the stacks use (module `stack`, built
/// with features `deadline`, `retry`, `circuit-breaker` and `shed`): a
/// build without them does not report it as dead code.
macro_rules! stacks_only {
    ($($item:tt)*) => {
        #[cfg_attr(
            not(all(
                feature = "deadline",
                feature = "retry",
                feature = "circuit-breaker",
                feature = "shed"
            )),
            allow(dead_code)
        )]
        $($item)*
    };
}

/// `poll_ready`, `call`, `Clone` and `Debug` of a named wrapper type
/// (`$wrapper { inner: $inner }`: a stack's service, a preset's, a balanced
/// channel), forwarded to what is inside. A named type, not an alias, so that
/// signatures and type mismatches say its name.
#[allow(unused_macros)]
macro_rules! wrapper_service {
    ($wrapper:ident<$($p:ident),+>, $inner:ty, where $($bounds:tt)*) => {
        impl<$($p),+, Req> ::tower_service::Service<Req> for $wrapper<$($p),+>
        where
            $($bounds)*
            $inner: ::tower_service::Service<Req>,
        {
            type Response = <$inner as ::tower_service::Service<Req>>::Response;
            type Error = <$inner as ::tower_service::Service<Req>>::Error;
            type Future = <$inner as ::tower_service::Service<Req>>::Future;

            #[inline]
            fn poll_ready(
                &mut self,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Result<(), Self::Error>> {
                self.inner.poll_ready(cx)
            }

            #[inline]
            fn call(&mut self, req: Req) -> Self::Future {
                self.inner.call(req)
            }
        }

        impl<$($p),+> Clone for $wrapper<$($p),+>
        where
            $($bounds)*
            $inner: Clone,
        {
            fn clone(&self) -> Self {
                $wrapper {
                    inner: self.inner.clone(),
                }
            }
        }

        impl<$($p),+> ::std::fmt::Debug for $wrapper<$($p),+>
        where
            $($bounds)*
            $inner: ::std::fmt::Debug,
        {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_tuple(stringify!($wrapper)).field(&self.inner).finish()
            }
        }
    };
}
