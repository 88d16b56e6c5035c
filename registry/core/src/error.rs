//! The one error type of the log's values and rules.
//!
//! Every failure carries a [`Kind`] telling the caller what to do about it and
//! a message naming the thing that caused it (a digest, a release id, an
//! index). The registry's service layer maps kinds to gRPC status codes in
//! exactly one place; the CLI maps them to exit codes in exactly one place.

use std::fmt;

/// The `domain` of the `google.rpc.ErrorInfo` the registry attaches to
/// every error status: its `reason` is [`Error::reason`].
pub const ERROR_DOMAIN: &str = "stackpin.v1";

/// Reasons more precise than a [`Kind`] that are not rules of the log (those
/// are in `state::reason`): what a start or a read found damaged.
pub mod reason {
    /// The registry's index disagrees with the log: a cache to rebuild,
    /// never a sign that storage is damaged.
    pub const INDEX_DAMAGED: &str = "INDEX_DAMAGED";
    /// A stored checkpoint is not one this log's key signed.
    pub const CHECKPOINT_UNVERIFIED: &str = "CHECKPOINT_UNVERIFIED";
    /// Entries in storage disagree with a checkpoint the log key signed.
    pub const LOG_CONTRADICTS_CHECKPOINT: &str = "LOG_CONTRADICTS_CHECKPOINT";
    /// A log with entries and no signed checkpoint to check them against.
    pub const UNSIGNED_LOG: &str = "UNSIGNED_LOG";
    /// A publish envelope attests something other than a publish.
    pub const PREDICATE_TYPE: &str = "PREDICATE_TYPE";
    /// A write sent to a registry that serves a log read-only.
    pub const READ_ONLY: &str = "READ_ONLY";
    /// A write sent to an old primary whose log was promoted elsewhere.
    pub const PROMOTED: &str = "PROMOTED";
}

/// The most of an input an error message repeats, in bytes.
pub const SHOWN_BYTES: usize = 64;

/// `text` for an error message: quoted, and cut to [`SHOWN_BYTES`] (at a
/// character boundary, marked with its full length) so that an error about
/// a 20 kB name is not itself 20 kB (gRPC clients refuse oversized
/// metadata, and would report that instead).
pub fn shown(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        return format!("{text:?}");
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

/// What the caller can do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed; retrying it unchanged cannot succeed.
    Invalid,
    /// The named thing does not exist.
    NotFound,
    /// A write-once rule forbids the write (a release id already bound).
    Conflict,
    /// The request is well-formed but out of order with the current state.
    Precondition,
    /// The request exceeds a configured limit.
    TooLarge,
    /// Storage has no space left; reads still work, writes resume when
    /// space is freed.
    NoSpace,
    /// Storage could not be reached; retrying later may succeed.
    Unavailable,
    /// The registry is at a limit of its own (bytes in flight); retrying
    /// shortly may succeed.
    Busy,
    /// The request or its stream ran past its deadline or stayed silent
    /// too long.
    Deadline,
    /// No credential, or one the registry does not know.
    Unauthenticated,
    /// A known credential without the role or environment needed.
    PermissionDenied,
    /// Stored bytes no longer match their digest or the log is damaged.
    DataLoss,
    /// A bug or an unexpected state.
    Internal,
}

impl Kind {
    /// The reason an error of this kind carries when nothing more precise
    /// is known.
    pub fn reason(self) -> &'static str {
        match self {
            Kind::Invalid => "INVALID_ARGUMENT",
            Kind::NotFound => "NOT_FOUND",
            Kind::Conflict => "CONFLICT",
            Kind::Precondition => "PRECONDITION",
            Kind::TooLarge => "MESSAGE_TOO_LARGE",
            Kind::NoSpace => "STORAGE_FULL",
            Kind::Unavailable => "UNAVAILABLE",
            Kind::Busy => "BUSY",
            Kind::Deadline => "DEADLINE_EXCEEDED",
            Kind::Unauthenticated => "UNAUTHENTICATED",
            Kind::PermissionDenied => "PERMISSION_DENIED",
            Kind::DataLoss => "DATA_LOSS",
            Kind::Internal => "INTERNAL",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 13] = [
        Kind::Invalid,
        Kind::NotFound,
        Kind::Conflict,
        Kind::Precondition,
        Kind::TooLarge,
        Kind::NoSpace,
        Kind::Unavailable,
        Kind::Busy,
        Kind::Deadline,
        Kind::Unauthenticated,
        Kind::PermissionDenied,
        Kind::DataLoss,
        Kind::Internal,
    ];
}

/// A failure: a kind, a human-readable message, and optionally a
/// machine-readable reason more precise than the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    message: String,
    reason: Option<&'static str>,
}

impl Error {
    /// Builds an error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            reason: None,
        }
    }

    /// The same error with a precise machine-readable reason (for example
    /// `ACTIVATION_ORDER`).
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The machine-readable reason: the precise one when set, else the
    /// kind's.
    pub fn reason(&self) -> &'static str {
        self.reason.unwrap_or(self.kind.reason())
    }

    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, message)
    }

    /// Something named does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }

    /// A write-once conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, message)
    }

    /// An out-of-order request.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Kind::Precondition, message)
    }

    /// An unexpected internal state.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The result type of core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod shown_tests {
    use super::*;

    #[test]
    fn long_inputs_are_cut_in_messages() {
        assert_eq!(shown("prod"), "\"prod\"");
        let long = "é".repeat(10_000);
        let cut = shown(&long);
        assert!(cut.len() < 100 && cut.ends_with("… (20000 bytes)"), "{cut}");
        // As the service's name parsing reports a 20 kB environment name.
        let err = "a"
            .repeat(20_000)
            .parse::<crate::ids::EnvName>()
            .unwrap_err();
        assert!(err.message().len() < 300, "{}", err.message());
        assert!(err.message().contains("(20000 bytes)"), "{}", err.message());
    }
}
