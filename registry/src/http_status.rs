//! The HTTP status of an error kind: the one place HTTP answers are
//! mapped (gRPC's is `service::status`). A leaf module, so that the HTTP
//! listener and the web view both read it and neither imports the other.

use hyper::StatusCode;

use crate::error::Kind;

/// The HTTP status an error of `kind` is answered with.
pub fn of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Precondition => StatusCode::PRECONDITION_FAILED,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::PermissionDenied => StatusCode::FORBIDDEN,
        Kind::Unavailable | Kind::Busy | Kind::NoSpace => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Deadline => StatusCode::GATEWAY_TIMEOUT,
        Kind::DataLoss | Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
