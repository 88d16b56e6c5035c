//! Names users choose: release ids, environment names and pin reasons.
//!
//! Each is constructed only by parsing, so code holding a [`ReleaseId`] or an
//! [`EnvName`] never needs to re-check it. None of them ever becomes part of a
//! storage path; they appear only inside log entries and index keys.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Longest release id or environment name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest pin reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

fn check_name(what: &str, text: &str) -> Result<(), Error> {
    let bytes = text.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !text.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} {} is not valid: use 1 to {MAX_NAME_LEN} characters from \
             [A-Za-z0-9._-], starting with a letter or digit, without \"..\"",
            crate::error::shown(text)
        )))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self, Error> {
                check_name($what, text)?;
                Ok(Self(text.to_owned()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name a release pipeline gives an artifact, e.g. `objectstack-2026-05-24`.
    ReleaseId,
    "release id"
);
name_type!(
    /// An environment an artifact goes live in, e.g. `prod` or `eu-staging`.
    EnvName,
    "environment name"
);

/// Why a pin was made: free text, bounded, without control characters (so it
/// can be printed to a terminal or a log line safely).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reason(String);

impl Reason {
    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Reason {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_REASON_LEN {
            return Err(Error::invalid(format!(
                "reason is {} bytes long; at most {MAX_REASON_LEN} are allowed",
                text.len()
            )));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(Error::invalid(format!(
                "reason contains the control character {c:?}; use plain text on one line"
            )));
        }
        Ok(Self(text.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest request id a client may send.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A client's request id (an idempotency key such as a UUID): 1 to 64 of
/// `A-Z a-z 0-9 . _ : -`, so it is safe in a log line, a header and a
/// storage key. The same id sent again with the same request returns the
/// first result; with another request it is refused.
///
/// # Errors
/// Invalid for anything else.
pub fn parse_request_id(text: &str) -> Result<String, Error> {
    let valid = (1..=MAX_REQUEST_ID_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(Error::invalid(format!(
            "request id {} is not 1 to {MAX_REQUEST_ID_LEN} of A-Z a-z 0-9 . _ : - (a UUID is \
             fine)",
            crate::error::shown(text)
        )))
    }
}

/// Longest container image reference.
pub const MAX_IMAGE_LEN: usize = 512;

/// A container image named by digest (`ghcr.io/objectos/objectos@sha256:…`,
/// a tag before the `@` allowed): the ObjectOS runtime a release ran with.
/// A tag alone is refused: a tag moves, so it is not a version.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef(String);

impl ImageRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let shown = crate::error::shown(text);
        let Some((name, digest)) = text.rsplit_once('@') else {
            return Err(Error::invalid(format!(
                "image {shown} names no digest: a tag is not a version, since it can move; \
                 give the image by digest, NAME@sha256:<64 hex> (`docker buildx imagetools \
                 inspect` or `crane digest` prints it)"
            )));
        };
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        let digest_ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let name_ok = !name.is_empty()
            && text.len() <= MAX_IMAGE_LEN
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
            && !name.contains("//")
            && !name.ends_with('/');
        if !digest_ok || !name_ok {
            return Err(Error::invalid(format!(
                "image {shown} is not NAME@sha256:<64 lower-case hex> with a lower-case \
                 registry/repository name (at most {MAX_IMAGE_LEN} characters)"
            )));
        }
        Ok(Self(text.to_owned()))
    }
}

impl TryFrom<String> for ImageRef {
    type Error = Error;

    fn try_from(text: String) -> Result<Self, Error> {
        text.parse()
    }
}

impl From<ImageRef> for String {
    fn from(i: ImageRef) -> Self {
        i.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_by_digest_and_a_tag_alone_is_refused() {
        let d = "a".repeat(64);
        for good in [
            format!("ghcr.io/objectos/objectos@sha256:{d}"),
            format!("ghcr.io/objectos/objectos:1.4.2@sha256:{d}"),
            format!("localhost:5000/objectos@sha256:{d}"),
        ] {
            assert_eq!(good.parse::<ImageRef>().unwrap().to_string(), good);
        }
        let e = "ghcr.io/objectos/objectos:1.4.2"
            .parse::<ImageRef>()
            .unwrap_err();
        assert!(e.message().contains("a tag is not a version"), "{e}");
        for bad in [
            format!("ghcr.io/objectos/objectos@sha256:{}", "A".repeat(64)),
            "ghcr.io/objectos/objectos@sha256:abc".to_owned(),
            format!("GHCR.io/objectos@sha256:{d}"),
            format!("@sha256:{d}"),
            format!("a//b@sha256:{d}"),
            format!("a b@sha256:{d}"),
            format!("{}@sha256:{d}", "a".repeat(600)),
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
        // As the log stores it, and refused there too.
        let json = format!("\"ghcr.io/o@sha256:{d}\"");
        assert!(serde_json::from_str::<ImageRef>(&json).is_ok());
        assert!(serde_json::from_str::<ImageRef>("\"ghcr.io/o:latest\"").is_err());
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        parse_request_id("0b7e6f1c-3f5d-4c7e-9a51-2d8f0e6b9c41").unwrap();
        parse_request_id("ci:run-42.pin_prod").unwrap();
        for bad in ["", "a b", "x\n", "../q", &"a".repeat(65)] {
            assert!(parse_request_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["prod", "objectstack-2026-05-24", "v1.2.3", "A_b-9", "x"] {
            assert_eq!(ok.parse::<ReleaseId>().unwrap().as_str(), ok);
            assert_eq!(ok.parse::<EnvName>().unwrap().as_str(), ok);
        }
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(longest.parse::<ReleaseId>().is_ok());
    }

    #[test]
    fn rejects_names_that_could_reach_a_path_or_a_terminal() {
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "../etc",
            "a/b",
            "a..b",
            ".hidden",
            "-flag",
            "a b",
            "a\nb",
            "é",
            "a\\b",
            too_long.as_str(),
        ] {
            let err = bad.parse::<ReleaseId>().unwrap_err();
            assert_eq!(err.kind(), crate::error::Kind::Invalid, "{bad:?}");
            assert!(bad.parse::<EnvName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reasons_are_bounded_and_printable() {
        assert!(
            "rollback after incident 42 — see ticket"
                .parse::<Reason>()
                .is_ok()
        );
        assert!("a\u{1b}[31mred".parse::<Reason>().is_err());
        assert!("two\nlines".parse::<Reason>().is_err());
        assert!("x".repeat(MAX_REASON_LEN + 1).parse::<Reason>().is_err());
    }
}
