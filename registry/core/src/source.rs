//! Where an artifact's source lives, as its publisher signed it: the
//! optional `source` of a publish statement's predicate (`stackpin publish
//! --source URL`). Shown as `org.opencontainers.image.source` by the OCI
//! API; read only from the signed envelope the log holds, and shown only
//! when it is a plain URL of the kinds below, so nothing a publisher writes
//! there reaches a person as markup, control characters or a script URL.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Error, Result};

/// The longest source URL accepted.
pub const MAX_SOURCE: usize = 512;
/// The schemes a source URL may have.
const SCHEMES: [&str; 4] = ["https://", "http://", "ssh://", "git://"];

/// Checks a source URL: one of the schemes above, a host, at most
/// [`MAX_SOURCE`] bytes of printable ASCII with no spaces, quotes or
/// angle brackets.
///
/// # Errors
/// Invalid, saying what is wrong.
pub fn check(url: &str) -> Result<()> {
    if url.len() > MAX_SOURCE {
        return Err(Error::invalid(format!(
            "the source URL is {} bytes; at most {MAX_SOURCE}",
            url.len()
        )));
    }
    if let Some(c) = url
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`'))
    {
        return Err(Error::invalid(format!(
            "the source URL holds {c:?}; only printable ASCII with no spaces, quotes or angle \
             brackets"
        )));
    }
    let rest = SCHEMES
        .iter()
        .find_map(|s| url.strip_prefix(s))
        .ok_or_else(|| {
            Error::invalid(format!(
                "the source URL must start with one of {}",
                SCHEMES.join(", ")
            ))
        })?;
    if rest.split(['/', '?', '#']).next().is_none_or(str::is_empty) {
        return Err(Error::invalid("the source URL names no host"));
    }
    Ok(())
}

/// The source URL a logged publish envelope's statement carries, when it
/// carries one that passes [`check`].
pub fn of_envelope(envelope: &serde_json::Value) -> Option<String> {
    let payload = STANDARD.decode(envelope.get("payload")?.as_str()?).ok()?;
    let statement: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    let url = statement.get("predicate")?.get("source")?.as_str()?;
    check(url).ok()?;
    Some(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_urls_with_a_host_pass() {
        for good in [
            "https://git.example.com/objectos/app",
            "http://10.0.0.1:3000/app.git",
            "ssh://git@example.com/app.git",
            "git://example.com/app",
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "file:///etc/passwd",
            "https://example.com/a b",
            "https://example.com/\u{202e}",
            "https://example.com/\"><script>",
            &format!("https://example.com/{}", "a".repeat(MAX_SOURCE)),
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_source_is_read_from_the_signed_statement_only_when_it_passes() {
        let envelope = |predicate: serde_json::Value| {
            let statement = serde_json::json!({ "predicate": predicate });
            serde_json::json!({ "payload": STANDARD.encode(statement.to_string()) })
        };
        assert_eq!(
            of_envelope(&envelope(
                serde_json::json!({"source": "https://example.com/app"})
            )),
            Some("https://example.com/app".to_owned())
        );
        assert_eq!(
            of_envelope(&envelope(serde_json::json!({"source": "javascript:x"}))),
            None
        );
        assert_eq!(of_envelope(&envelope(serde_json::json!({}))), None);
        assert_eq!(of_envelope(&serde_json::json!({"payload": "%%"})), None);
    }
}
