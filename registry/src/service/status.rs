//! The one mapping from error kinds to gRPC status codes.

use tonic::{Code, Status};

use crate::error::{Error, Kind};

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match err.kind() {
            Kind::Invalid => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::Conflict => Code::AlreadyExists,
            Kind::Precondition => Code::FailedPrecondition,
            Kind::TooLarge | Kind::NoSpace => Code::ResourceExhausted,
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
        Status::new(code, err.message())
    }
}
