use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::answer::{AnswerError, Named};
use super::future::AnswerErrorsFuture;

/// The service inside [`RejectionResponse`](super::RejectionResponse) and
/// `seawall::grpc::GrpcRejection`: turns the inner service's `Err` into an
/// `Ok` HTTP response built by `A` (`TextAnswer`, `GrpcAnswer`). Its error type
/// is [`Infallible`](std::convert::Infallible).
///
/// **Readiness.** `poll_ready` passes the inner service's readiness through.
/// If the inner service *fails* readiness, the error is kept and `poll_ready`
/// reports ready; the next `call` answers that error as a response without
/// calling the inner service, and the following `poll_ready` asks the inner
/// service again.
pub(crate) struct AnswerErrors<S, A> {
    inner: S,
    ready_error: Option<BoxError>,
    _answer: PhantomData<fn() -> A>,
}

impl<S, A> AnswerErrors<S, A> {
    /// Wraps `inner`.
    pub(crate) const fn new(inner: S) -> Self {
        AnswerErrors {
            inner,
            ready_error: None,
            _answer: PhantomData,
        }
    }

    /// The inner service.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, A> Clone for AnswerErrors<S, A> {
    fn clone(&self) -> Self {
        // A pending readiness error belongs to the clone that saw it.
        AnswerErrors::new(self.inner.clone())
    }
}

impl<S: fmt::Debug, A: Named> fmt::Debug for AnswerErrors<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(A::SERVICE)
            .field("inner", &self.inner)
            .field("ready_error", &self.ready_error.is_some())
            .finish()
    }
}

impl<S, Req, B, A> Service<Req> for AnswerErrors<S, A>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    A: AnswerError<B>,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = AnswerErrorsFuture<S::Future, B, A>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        poll_ready_keeping(&mut self.inner, &mut self.ready_error, cx).map(Ok)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.ready_error.take() {
            Some(err) => AnswerErrorsFuture::ready(A::answer(&*err)),
            None => AnswerErrorsFuture::new(self.inner.call(req)),
        }
    }
}

/// `inner`'s readiness, a failure kept in `kept` (and then ready): the next
/// `call` answers the kept error without calling `inner`, and the following
/// `poll_ready` asks `inner` again. For services whose callers would turn a
/// failed `poll_ready` into something vaguer than the error's own answer.
#[inline]
pub(crate) fn poll_ready_keeping<S, Req>(
    inner: &mut S,
    kept: &mut Option<BoxError>,
    cx: &mut Context<'_>,
) -> Poll<()>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    if kept.is_some() {
        return Poll::Ready(());
    }
    match inner.poll_ready(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(())) => Poll::Ready(()),
        Poll::Ready(Err(err)) => {
            *kept = Some(err.into());
            Poll::Ready(())
        }
    }
}

/// Defines a named layer, service and response future over [`AnswerErrors`]
/// for one answer type, so that compiler messages, type names and docs show
/// what the user wrote (`RejectionResponse<…>`, `GrpcRejection<…>`), never the
/// shared machinery. `body` is what the answer needs of the response body.
macro_rules! named_answer {
    (
        $(#[$layer_meta:meta])*
        layer $layer:ident;
        $(#[$service_meta:meta])*
        service $service:ident;
        $(#[$future_meta:meta])*
        future $future:ident;
        answer $answer:ty, body $bound:path;
    ) => {
        $(#[$layer_meta])*
        #[derive(Clone, Copy, Default)]
        pub struct $layer {
            _private: (),
        }

        impl $layer {
            /// The layer.
            pub const fn new() -> Self {
                $layer { _private: () }
            }
        }

        impl ::std::fmt::Debug for $layer {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(stringify!($layer))
            }
        }

        impl<S> ::tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service::new(inner)
            }
        }

        $(#[$service_meta])*
        ///
        /// **Readiness.** `poll_ready` passes the inner service's readiness
        /// through. If the inner service *fails* readiness, the error is kept
        /// and `poll_ready` reports ready; the next `call` answers that error
        /// without calling the inner service, and the following `poll_ready`
        /// asks the inner service again.
        #[derive(Clone)]
        pub struct $service<S> {
            inner: $crate::http::AnswerErrors<S, $answer>,
        }

        impl<S> $service<S> {
            /// Wraps `inner`.
            pub const fn new(inner: S) -> Self {
                $service {
                    inner: $crate::http::AnswerErrors::new(inner),
                }
            }

            /// The inner service.
            pub fn get_ref(&self) -> &S {
                self.inner.get_ref()
            }

            /// The inner service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                self.inner.get_mut()
            }

            /// Unwraps the inner service.
            pub fn into_inner(self) -> S {
                self.inner.into_inner()
            }
        }

        impl<S: ::std::fmt::Debug> ::std::fmt::Debug for $service<S> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Debug::fmt(&self.inner, f)
            }
        }

        impl<S, Req, B> ::tower_service::Service<Req> for $service<S>
        where
            S: ::tower_service::Service<Req, Response = ::http::Response<B>>,
            S::Error: Into<$crate::BoxError>,
            B: $bound,
        {
            type Response = ::http::Response<B>;
            type Error = ::std::convert::Infallible;
            type Future = $future<S::Future, B>;

            #[inline]
            fn poll_ready(
                &mut self,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Result<(), Self::Error>> {
                self.inner.poll_ready(cx)
            }

            #[inline]
            fn call(&mut self, req: Req) -> Self::Future {
                $future {
                    inner: self.inner.call(req),
                }
            }
        }

        ::pin_project_lite::pin_project! {
            $(#[$future_meta])*
            pub struct $future<F, B> {
                #[pin]
                inner: $crate::http::AnswerErrorsFuture<F, B, $answer>,
            }
        }

        impl<F, B> ::std::fmt::Debug for $future<F, B> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Debug::fmt(&self.inner, f)
            }
        }

        impl<F, B, E> ::std::future::Future for $future<F, B>
        where
            F: ::std::future::Future<Output = Result<::http::Response<B>, E>>,
            E: Into<$crate::BoxError>,
            B: $bound,
        {
            type Output = Result<::http::Response<B>, ::std::convert::Infallible>;

            #[inline]
            fn poll(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Self::Output> {
                self.project().inner.poll(cx)
            }
        }
    };
}
pub(crate) use named_answer;
