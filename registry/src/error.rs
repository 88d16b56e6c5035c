//! The registry's one error type.
//!
//! Every failure carries a [`Kind`] telling the caller what to do about it and
//! a message naming the thing that caused it (a digest, a release id, an
//! index). The service layer maps kinds to gRPC status codes in exactly one
//! place (`service::status`).

use std::fmt;

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
    /// No credential, or one the registry does not know.
    Unauthenticated,
    /// A known credential without the role or environment needed.
    PermissionDenied,
    /// Stored bytes no longer match their digest or the log is damaged.
    DataLoss,
    /// A bug or an unexpected state.
    Internal,
}

/// A registry failure: a kind and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    message: String,
}

impl Error {
    /// Builds an error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
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

/// Whether an error (or any error it wraps) is the disk being full.
fn is_storage_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return true;
        }
        current = e.source();
    }
    false
}

impl From<object_store::Error> for Error {
    fn from(err: object_store::Error) -> Self {
        if !matches!(err, object_store::Error::NotFound { .. }) {
            metrics::counter!("stackpin_storage_errors_total").increment(1);
        }
        match err {
            object_store::Error::NotFound { path, .. } => {
                Self::not_found(format!("object {path} not found in storage"))
            }
            other if is_storage_full(&other) => Self::new(
                Kind::NoSpace,
                format!("storage is full; nothing was written (free space and retry): {other}"),
            ),
            other => Self::new(Kind::Unavailable, format!("storage: {other}")),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        if let sled::Error::Io(io) = &err
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return Self::new(
                Kind::NoSpace,
                format!("the index's disk is full (free space and retry): {err}"),
            );
        }
        Self::internal(format!("index: {err}"))
    }
}

/// The registry's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
