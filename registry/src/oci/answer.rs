//! Writing an OCI answer: the spec's error bodies and headers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Answer, CHALLENGE};
use crate::error::{Error, Kind};

/// A refusal the spec names.
pub(super) enum Oops {
    Api(StatusCode, &'static str, String),
    Failed(Error),
}

impl Oops {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Api(status, code, message.into())
    }
}

impl From<Error> for Oops {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

pub(super) fn body(status: StatusCode, bytes: Bytes, content_type: &'static str) -> Answer {
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(super) fn insert(r: &mut Answer, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

pub(super) fn version(r: &mut Answer) {
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
}

/// The digest headers of a manifest or blob; the length, when given, is
/// also what a HEAD answers (its body is left out).
pub(super) fn content_headers(r: &mut Answer, digest: &str, len: Option<u64>) {
    insert(
        r,
        header::HeaderName::from_static("docker-content-digest"),
        digest,
    );
    insert(r, header::ETAG, &format!("\"{digest}\""));
    if let Some(len) = len {
        insert(r, header::CONTENT_LENGTH, &len.to_string());
    }
}

/// An error body of the distribution spec.
pub(super) fn refused(status: StatusCode, code: &str, message: &str) -> Answer {
    let value = serde_json::json!({
        "errors": [{ "code": code, "message": message }]
    });
    let mut r = body(status, Bytes::from(value.to_string()), "application/json");
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    r
}

/// A registry error as the spec's error body.
pub(super) fn error(e: &Error) -> Answer {
    let (status, code) = match e.kind() {
        Kind::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        Kind::PermissionDenied => (StatusCode::FORBIDDEN, "DENIED"),
        Kind::NotFound => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        Kind::Busy | Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Kind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
        _ => (crate::http_status::of(e.kind()), "UNKNOWN"),
    };
    refused(status, code, e.message())
}
