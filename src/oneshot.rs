//! A service made ready, then called once: the future behind the layers that
//! build a service per call (a key's layer, a fallback's second service).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        NotReady { service: S, request: Option<Req> },
        Called { #[pin] future: S::Future },
        Done,
    }
}

pin_project! {
    /// Polls `service` ready, calls it with `request`, and yields its
    /// answer; `None` if polled again after that.
    pub(crate) struct Oneshot<S: Service<Req>, Req> {
        #[pin]
        state: State<S, Req>,
    }
}

impl<S: Service<Req>, Req> Oneshot<S, Req> {
    pub(crate) fn new(service: S, request: Req) -> Self {
        Oneshot {
            state: State::NotReady {
                service,
                request: Some(request),
            },
        }
    }
}

impl<S: Service<Req>, Req> Future for Oneshot<S, Req> {
    type Output = Option<Result<S::Response, S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::NotReady { service, request } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        state.set(State::Done);
                        return Poll::Ready(Some(Err(e)));
                    }
                    let Some(req) = request.take() else {
                        state.set(State::Done);
                        return Poll::Ready(None);
                    };
                    let future = service.call(req);
                    state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let out = ready!(future.poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(Some(out));
                }
                StateProj::Done => return Poll::Ready(None),
            }
        }
    }
}
