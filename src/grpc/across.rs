//! A dependency's answer passed on across protocols: a gRPC dependency's
//! `Status` as an HTTP handler's response, an HTTP dependency's response as
//! a tonic handler's `Status`, "busy" kept as "busy" both ways.

use http::{Response, StatusCode};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::status::{PUSHBACK_HEADER, pushback_ms, pushback_of};

/// The HTTP response an HTTP handler answers with when its gRPC
/// dependency's call failed with `status` (the gRPC client preset's error),
/// so that its own caller can act on it:
///
/// | `status` | response |
/// |---|---|
/// | this process's own refusal ([`error::rejection`](crate::error::rejection) finds one: breaker open, budget spent, out of time) | what [`rejection_response`](crate::http::rejection_response) answers: `503`/`429` with `Retry-After`, or `504` |
/// | `UNAVAILABLE` with `grpc-retry-pushback-ms` (the dependency is busy: a seawall server's refusal) | `503` with `Retry-After` and `retry-after-ms` |
/// | `UNAVAILABLE` without pushback that the server answered (busy, as a gRPC server that is not seawall sheds) | `503` without `Retry-After` (busy for the HTTP presets too) |
/// | `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` (busy for that long: a rate limit's refusal, or a busy HTTP dependency passed on by [`status_for_response`]) | `503` with `Retry-After` and `retry-after-ms` |
/// | `RESOURCE_EXHAUSTED` without one | `429` |
/// | `DEADLINE_EXCEEDED`, `CANCELLED` (the dependency ran out of the time it was sent) | `504` |
/// | any other (`UNAVAILABLE` that no server answered: a connection refused or lost, the error in its source; `INTERNAL`, …) | `502` |
///
/// A busy dependency stays busy for the caller: its `503` with a wait is
/// what the HTTP presets' breakers do not count and their retries wait
/// for, where a `502` is counted as a failure. An `UNAVAILABLE` whose
/// pushback says not to retry (negative, or not a number) makes a `502`.
///
/// ```
/// use std::time::Duration;
/// use seawall::grpc::response_for_status;
/// use tonic::{Code, Status};
///
/// let mut busy = Status::unavailable("overloaded");
/// busy.metadata_mut().insert("grpc-retry-pushback-ms", "120".parse().unwrap());
/// let res: http::Response<String> = response_for_status(&busy);
/// assert_eq!(res.status(), 503);
/// assert_eq!(res.headers()["retry-after"], "1");
/// assert_eq!(res.headers()["retry-after-ms"], "120");
///
/// let late: http::Response<String> = response_for_status(&Status::deadline_exceeded("late"));
/// assert_eq!(late.status(), 504);
/// let broken: http::Response<String> = response_for_status(&Status::internal("boom"));
/// assert_eq!(broken.status(), 502);
/// ```
pub fn response_for_status<B>(status: &Status) -> Response<B>
where
    B: From<&'static str>,
{
    if crate::error::rejection(status).is_some() {
        return crate::http::response::response_for_error(status);
    }
    let wait = pushback_of(status.metadata().as_ref());
    let (code, body, wait) = match (status.code(), wait) {
        // Busy for that long (`RESOURCE_EXHAUSTED` with a wait too: what the
        // caller of this process is told, which did not send too many; this
        // process's dependency is busy for it).
        (Code::Unavailable | Code::ResourceExhausted, Some(Some(wait))) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency busy",
            Some(wait),
        ),
        // Answered by the server (the client's own errors carry their cause).
        (Code::Unavailable, None) if std::error::Error::source(status).is_none() => {
            (StatusCode::SERVICE_UNAVAILABLE, "dependency busy", None)
        }
        (Code::ResourceExhausted, _) => (
            StatusCode::TOO_MANY_REQUESTS,
            "dependency rate limited",
            None,
        ),
        (Code::DeadlineExceeded | Code::Cancelled, _) => {
            (StatusCode::GATEWAY_TIMEOUT, "dependency out of time", None)
        }
        _ => (StatusCode::BAD_GATEWAY, "dependency failed", None),
    };
    crate::http::response::text_response(code, body, wait)
}

/// The `tonic::Status` a tonic handler answers with when its HTTP
/// dependency answered `res` (the HTTP client preset's answer), or `None`
/// for an answer that is no failure (below `400`):
///
/// | `res` | status |
/// |---|---|
/// | `429`, `503` (the dependency is busy: a seawall server's refusal, nginx's `limit_conn`) | `RESOURCE_EXHAUSTED`, with `grpc-retry-pushback-ms` when it has a wait (`retry-after-ms`, or `Retry-After` in seconds above 0) |
/// | `504`, `408` | `DEADLINE_EXCEEDED` |
/// | `501` | `UNIMPLEMENTED` |
/// | `400`, `401`, `403`, `404`, `409` | `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND`, `ABORTED` |
/// | any other `4xx` | `FAILED_PRECONDITION` |
/// | any other `5xx` | `INTERNAL` |
///
/// A busy dependency stays busy for the caller (the gRPC presets' breakers
/// do not count it; [`response_for_status`] one hop up answers its own
/// caller `503` with the wait). Neither a busy dependency nor a failed one
/// becomes `UNAVAILABLE`: the gRPC client preset retries `UNAVAILABLE` on
/// every method, and this handler may have done its work before its
/// dependency answered (a retry would do it twice); a failure becomes
/// `INTERNAL`. A handler that did nothing before the call may answer
/// `Status::unavailable` with the same pushback instead, to have its caller
/// retry. The message names the dependency's status
/// (`"dependency answered 500"`), never its body.
///
/// ```
/// use seawall::grpc::status_for_response;
/// use tonic::Code;
///
/// let busy = http::Response::builder()
///     .status(503)
///     .header("retry-after", "1")
///     .header("retry-after-ms", "120")
///     .body(())
///     .unwrap();
/// let status = status_for_response(&busy).unwrap();
/// assert_eq!(status.code(), Code::ResourceExhausted);
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "120");
///
/// let broken = http::Response::builder().status(500).body(()).unwrap();
/// assert_eq!(status_for_response(&broken).unwrap().code(), Code::Internal);
/// let ok = http::Response::builder().status(200).body(()).unwrap();
/// assert!(status_for_response(&ok).is_none());
/// ```
pub fn status_for_response<B>(res: &Response<B>) -> Option<Status> {
    let code = res.status().as_u16();
    if code < 400 {
        return None;
    }
    // `0` is no wait to pass on (a pushback of nothing would send every
    // caller back at once); a date is none it can pass on.
    let wait = crate::http::response::asked_wait(res.headers())
        .flatten()
        .filter(|w| !w.is_zero());
    let (grpc, wait) = match code {
        429 | 503 => (Code::ResourceExhausted, wait),
        504 | 408 => (Code::DeadlineExceeded, None),
        501 => (Code::Unimplemented, None),
        400 => (Code::InvalidArgument, None),
        401 => (Code::Unauthenticated, None),
        403 => (Code::PermissionDenied, None),
        404 => (Code::NotFound, None),
        409 => (Code::Aborted, None),
        402..=499 => (Code::FailedPrecondition, None),
        _ => (Code::Internal, None),
    };
    let mut status = Status::new(grpc, format!("dependency answered {code}"));
    if let Some(wait) = wait {
        status
            .metadata_mut()
            .insert(PUSHBACK_HEADER, MetadataValue::from(pushback_ms(wait)));
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RETRY_AFTER_MS;

    fn res(code: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(code);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn an_http_answer_becomes_the_status_a_grpc_caller_acts_on() {
        let code = |r: Response<()>| status_for_response(&r).map(|s| s.code());
        let push = |r: Response<()>| {
            status_for_response(&r)
                .and_then(|s| s.metadata().get(PUSHBACK_HEADER).cloned())
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(code(res(200, &[])), None);
        assert_eq!(code(res(304, &[])), None);
        assert_eq!(
            push(res(503, &[("retry-after-ms", "120")])),
            Some("120".into())
        );
        assert_eq!(push(res(503, &[("retry-after", "2")])), Some("2000".into()));
        // `0` ms is no hint: the seconds decide.
        assert_eq!(
            push(res(503, &[("retry-after-ms", "0"), ("retry-after", "1")])),
            Some("1000".into())
        );
        // Busy, with a wait or without: RESOURCE_EXHAUSTED (not retried on
        // every method as UNAVAILABLE is: this handler may have done its
        // work); `Retry-After: 0` is no wait.
        assert_eq!(
            code(res(503, &[("retry-after-ms", "120")])),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(push(res(503, &[("retry-after", "0")])), None);
        assert_eq!(code(res(503, &[])), Some(Code::ResourceExhausted));
        assert_eq!(push(res(503, &[])), None);
        assert_eq!(
            code(res(
                503,
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]
            )),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(code(res(429, &[])), Some(Code::ResourceExhausted));
        assert_eq!(push(res(429, &[])), None);
        assert_eq!(push(res(429, &[("retry-after", "3")])), Some("3000".into()));
        assert_eq!(code(res(504, &[])), Some(Code::DeadlineExceeded));
        assert_eq!(code(res(404, &[])), Some(Code::NotFound));
        assert_eq!(code(res(418, &[])), Some(Code::FailedPrecondition));
        assert_eq!(code(res(500, &[])), Some(Code::Internal));
        assert_eq!(code(res(502, &[])), Some(Code::Internal));
        assert_eq!(code(res(501, &[])), Some(Code::Unimplemented));
        assert_eq!(
            status_for_response(&res(500, &[])).unwrap().message(),
            "dependency answered 500"
        );
    }

    #[test]
    fn a_status_becomes_the_response_an_http_caller_acts_on() {
        let with_push = |mut s: Status, v: &str| {
            s.metadata_mut().insert(PUSHBACK_HEADER, v.parse().unwrap());
            s
        };
        let r = |s: &Status| {
            let res: Response<String> = response_for_status(s);
            (
                res.status().as_u16(),
                res.headers()
                    .get(RETRY_AFTER_MS)
                    .map(|v| v.to_str().unwrap().to_owned()),
            )
        };
        assert_eq!(
            r(&with_push(Status::unavailable("busy"), "1500")),
            (503, Some("1500".into()))
        );
        // A server's bare UNAVAILABLE is busy; one no server answered (its
        // cause in its source, as the client's transport errors carry) is
        // a failure.
        assert_eq!(r(&Status::unavailable("overloaded")), (503, None));
        let mut unreachable = Status::unavailable("connection refused");
        unreachable.set_source(std::sync::Arc::new(std::io::Error::other("refused")));
        assert_eq!(r(&unreachable), (502, None));
        assert_eq!(r(&with_push(Status::unavailable("x"), "-1")), (502, None));
        assert_eq!(r(&Status::resource_exhausted("quota")), (429, None));
        // Busy for a while (a busy HTTP leaf passed on, a rate limit's
        // wait): 503 with it.
        assert_eq!(
            r(&with_push(Status::resource_exhausted("quota"), "300")),
            (503, Some("300".into()))
        );
        assert_eq!(r(&Status::deadline_exceeded("late")), (504, None));
        assert_eq!(r(&Status::cancelled("late")), (504, None));
        assert_eq!(r(&Status::internal("boom")), (502, None));
        assert_eq!(r(&Status::not_found("x")), (502, None));
    }
}
