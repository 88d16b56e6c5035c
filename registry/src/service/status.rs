//! The one mapping from error kinds to gRPC status codes. Every status
//! also carries a `google.rpc.ErrorInfo` whose `reason` says precisely what
//! went wrong (`ACTIVATION_ORDER`, `RELEASE_BOUND`, `STORAGE_FULL`, ...), so
//! clients decide by the reason and never by the message text.

use stackpin_core::error::ERROR_DOMAIN;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::error::{Error, Kind};

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match err.kind() {
            Kind::Invalid => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::Conflict => Code::AlreadyExists,
            Kind::Precondition => Code::FailedPrecondition,
            Kind::TooLarge | Kind::NoSpace | Kind::Busy => Code::ResourceExhausted,
            Kind::Deadline => Code::DeadlineExceeded,
            Kind::Unavailable => Code::Unavailable,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::PermissionDenied => Code::PermissionDenied,
            Kind::DataLoss => Code::DataLoss,
            Kind::Internal => Code::Internal,
        };
        if matches!(
            err.kind(),
            Kind::Internal | Kind::DataLoss | Kind::Unavailable
        ) {
            tracing::error!(kind = ?err.kind(), error = %err, "request failed");
        }
        let details = ErrorDetails::with_error_info(
            err.reason(),
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        Status::with_error_details(code, err.message(), details)
    }
}
