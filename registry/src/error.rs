//! The registry's error type: the core's [`Kind`] and message, plus the
//! conversions from the storage and index crates the core does not know.
//!
//! Every failure carries a [`Kind`] telling the caller what to do about it and
//! a message naming the thing that caused it (a digest, a release id, an
//! index). The service layer maps kinds to gRPC status codes in exactly one
//! place (`service::status`).

use std::fmt;

pub use stackpin_core::error::Kind;

/// A registry failure: a core error, or one from storage or the index
/// converted into the same kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(stackpin_core::Error);

impl Error {
    /// Builds an error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self(stackpin_core::Error::new(kind, message))
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
        self.0.kind()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        self.0.message()
    }

    /// The same error with a precise machine-readable reason.
    #[must_use]
    pub fn with_reason(self, reason: &'static str) -> Self {
        Self(self.0.with_reason(reason))
    }

    /// The machine-readable reason (see [`stackpin_core::Error::reason`]).
    pub fn reason(&self) -> &'static str {
        self.0.reason()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl From<stackpin_core::Error> for Error {
    fn from(err: stackpin_core::Error) -> Self {
        Self(err)
    }
}

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
            // What storage said can name the server's folders and
            // endpoints: it goes to the registry's log (under the request's
            // id), and callers get what failed without it.
            other if is_storage_full(&other) => {
                tracing::error!(error = %other, "storage is full");
                Self::new(
                    Kind::NoSpace,
                    "storage is full; nothing was written (free space and retry)",
                )
            }
            other => {
                tracing::error!(error = %other, "storage failed");
                let what = match &other {
                    object_store::Error::Generic { store, .. } => {
                        format!("the {store} storage backend failed")
                    }
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. } => {
                        "a conditional write to storage was refused".to_owned()
                    }
                    object_store::Error::NotModified { .. } => {
                        "storage answered a read unexpectedly".to_owned()
                    }
                    object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. } => {
                        "storage refused the registry's credentials".to_owned()
                    }
                    _ => "a storage request failed".to_owned(),
                };
                Self::new(
                    Kind::Unavailable,
                    format!("storage: {what} (the registry's log has the details)"),
                )
            }
        }
    }
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        if let sled::Error::Io(io) = &err
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            tracing::error!(error = %err, "the index's disk is full");
            return Self::new(
                Kind::NoSpace,
                "the index's disk is full (free space and retry)",
            );
        }
        tracing::error!(error = %err, "the index failed");
        Self::internal("the index failed (the registry's log has the details)")
    }
}

/// The registry's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
