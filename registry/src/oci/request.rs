//! Reading an OCI request: its route, digest, range, query and
//! credentials.

use hyper::StatusCode;
use hyper::header::{self, HeaderMap};

use super::answer::Oops;
use crate::auth::{Action, Authorizer, Principal};
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};

/// The pairs of a query string.
pub(super) fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) enum Route<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    Tags,
    Referrers(&'a str),
}

/// Splits `<name>/manifests/<ref>`, `<name>/blobs/<digest>`,
/// `<name>/tags/list` and `<name>/referrers/<digest>`.
pub(super) fn route(rest: &str) -> Option<(&str, Route<'_>)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, Route::Tags));
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Some((name, Route::Referrers(digest)));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some((name, Route::Manifest(reference)));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some((name, Route::Blob(digest)));
    }
    None
}

pub(super) fn parse_digest(text: &str) -> std::result::Result<Digest, Oops> {
    text.strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|h| Digest::from_hex(h).ok())
        .ok_or_else(|| {
            Oops::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!(
                    "{} is not a digest this registry serves (sha256: and 64 lowercase hex digits)",
                    stackpin_core::error::shown(text)
                ),
            )
        })
}

/// One range `bytes=a-b`, `bytes=a-` or `bytes=-n` of a `size`-byte blob,
/// as (first, last) byte.
pub(super) fn parse_range(text: &str, size: u64) -> std::result::Result<(u64, u64), Oops> {
    let bad = || {
        Oops::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UNKNOWN",
            format!(
                "range {} is not one byte range within {size} bytes",
                stackpin_core::error::shown(text)
            ),
        )
    };
    let spec = text.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, false) => (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?),
        (false, true) => (num(a).ok_or_else(bad)?, size.saturating_sub(1)),
        (true, false) => {
            let n = num(b).ok_or_else(bad)?;
            if n == 0 {
                return Err(bad());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (true, true) => return Err(bad()),
    };
    if size == 0 || start > end || start >= size {
        return Err(bad());
    }
    Ok((start, end.min(size - 1)))
}

/// Whether `If-None-Match` names `digest`'s ETag.
pub(super) fn matches(headers: &HeaderMap, digest: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim().trim_start_matches("W/");
            t == "*" || t.trim_matches('"') == digest
        })
}

/// Who the caller is, by its token (from `Authorization: Bearer` or the
/// password of `Authorization: Basic`; the user name is ignored) or its
/// client certificate.
pub(super) fn authorize(
    auth: &Authorizer,
    cn: Option<&str>,
    headers: &HeaderMap,
) -> Result<Principal> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.to_str());
    let token = match header {
        None => None,
        Some(Err(_)) => return Err(unauthenticated("the authorization header is not text")),
        Some(Ok(v)) => Some(token_of(v)?),
    };
    auth.authorize(token.as_deref(), cn, Action::Read)
}

pub(super) fn token_of(value: &str) -> Result<String> {
    if let Some(basic) = value.strip_prefix("Basic ") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthenticated("the Basic credentials are not base64 of user:token"))?;
        let (_, token) = decoded
            .split_once(':')
            .ok_or_else(|| unauthenticated("the Basic credentials are not user:token"))?;
        return Ok(token.to_owned());
    }
    crate::auth::bearer(Some(value)).map(str::to_owned)
}

pub(super) fn unauthenticated(why: &str) -> Error {
    Error::new(Kind::Unauthenticated, why)
}
