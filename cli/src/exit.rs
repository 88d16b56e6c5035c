//! Exit codes and the failure type every command returns.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | unexpected failure (a bug, an I/O error on the local machine) |
//! | 2 | usage error or invalid input (also a publish refused for its signature or digest); nothing was changed |
//! | 3 | not found |
//! | 4 | conflict: write-once (release id bound) or ordering (activation) |
//! | 5 | verification failed: what is stored or served does not check out |
//! | 6 | server unavailable |
//! | 7 | not authenticated, or not allowed |
//! | 8 | out of policy: a recovery target is missed (`posture`), or a drill failed |
//! | 9 | `restore --fail-near-switch`: restored, but the instant is within the margin of a switch |
//! | 130, 143 | interrupted (SIGINT, SIGTERM); no file was left half-written |

use std::fmt;

use stackpin_core::Kind;
use stackpin_core::error::ERROR_DOMAIN;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const INVALID: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const CONFLICT: u8 = 4;
pub const VERIFY: u8 = 5;
pub const UNAVAILABLE: u8 = 6;
pub const AUTH: u8 = 7;
pub const OUT_OF_POLICY: u8 = 8;
pub const NEAR_SWITCH: u8 = 9;

/// The exit-code table, for `--help`.
pub const HELP: &str = "Exit codes:
  0  success
  1  unexpected failure
  2  usage error or invalid input, including a publish refused for its
     signature or digest (nothing was changed)
  3  not found
  4  conflict: release id already bound, or activation out of order
  5  verification failed: what is stored or served (an artifact, a proof,
     a checkpoint, the log) does not check out
  6  server unavailable
  7  not authenticated (no or unknown token) or not allowed (role, environment)
  8  out of policy: `posture` found a recovery target missed, or a drill failed
  9  `restore --fail-near-switch`: restored, but the instant is within the
     margin of a switch (check the database against both releases)
  130, 143  interrupted by SIGINT or SIGTERM; no file was left half-written";

/// A failed command: what to print and which code to exit with.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
    /// The registry's reason code (`RELEASE_BOUND`, …), when it gave one.
    pub reason: Option<String>,
    /// The command printed its result before failing (an audit's report,
    /// a posture out of policy, a failed drill): with `--output json` that
    /// result is the one object printed, and it says why.
    pub after_result: bool,
}

impl Failure {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
            reason: None,
            after_result: false,
        }
    }

    /// Marks a failure that follows the command's printed result.
    #[must_use]
    pub fn after_result(mut self) -> Self {
        self.after_result = true;
        self
    }

    /// The failure as `--output json` prints it on standard output:
    /// `{"error": {"code", "reason", "message", "exit"}}` (docs/json.md).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": name_of(self.code),
                "reason": self.reason,
                "message": format!("{:#}", self.error),
                "exit": self.code,
            }
        })
    }

    /// Invalid input (exit 2).
    pub fn invalid(error: impl fmt::Display) -> Self {
        Self::new(INVALID, anyhow::anyhow!("{error}"))
    }

    /// Verification failed (exit 5).
    pub fn verify(error: impl fmt::Display) -> Self {
        Self::new(VERIFY, anyhow::anyhow!("verification failed: {error}"))
    }
}

/// Exit code for a kind of failure: the one table, used for the registry's
/// answers and for local failures alike.
pub fn code_of_kind(kind: Kind) -> u8 {
    match kind {
        Kind::Invalid | Kind::TooLarge => INVALID,
        Kind::NoSpace => UNAVAILABLE,
        Kind::NotFound => NOT_FOUND,
        Kind::Conflict | Kind::Precondition => CONFLICT,
        Kind::DataLoss => VERIFY,
        Kind::Unavailable | Kind::Busy | Kind::Deadline => UNAVAILABLE,
        Kind::Unauthenticated | Kind::PermissionDenied => AUTH,
        Kind::Internal => FAILURE,
    }
}

/// The kind of failure a status stands for, from the machine-readable
/// reason the registry attaches (`google.rpc.ErrorInfo`), when it does.
fn kind_of(status: &Status) -> Option<Kind> {
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    stackpin_core::state::kind_of_reason(&info.reason)
}

/// The stable name of an exit code, for scripts (`code` of a JSON error).
pub fn name_of(code: u8) -> &'static str {
    match code {
        OK => "ok",
        INVALID => "invalid",
        NOT_FOUND => "not_found",
        CONFLICT => "conflict",
        VERIFY => "verification_failed",
        UNAVAILABLE => "unavailable",
        AUTH => "not_allowed",
        OUT_OF_POLICY => "out_of_policy",
        NEAR_SWITCH => "near_switch",
        130 | 143 => "interrupted",
        _ => "failure",
    }
}

/// Exit code for a gRPC status: by the registry's reason when it gave one,
/// else by the status code (a status made by the transport or a proxy).
pub fn code_of(status: &Status) -> u8 {
    if let Some(kind) = kind_of(status) {
        return code_of_kind(kind);
    }
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => INVALID,
        Code::NotFound => NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => CONFLICT,
        Code::DataLoss => VERIFY,
        // CANCELLED is how the client reports its own deadline passing.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => UNAVAILABLE,
        Code::Unauthenticated | Code::PermissionDenied => AUTH,
        _ => FAILURE,
    }
}

/// Whether `status` is what tonic makes of an HTTP answer that is not
/// gRPC (a web server, a proxy's error page, or a stackpin HTTP listener
/// that names its gRPC port).
fn not_grpc(status: &Status) -> bool {
    let m = status.message();
    m.starts_with("this is stackpin's HTTP listener")
        || m.contains("while receiving response with status")
        || m.contains("mapped from HTTP status code")
        || m.contains("invalid compression flag")
        // An HTTP/1-only server (a plain web server) refuses HTTP/2.
        || m.contains("h2 protocol error: http2 error")
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        if not_grpc(&status) {
            return Self::new(
                INVALID,
                anyhow::anyhow!(
                    "the server named by --server (STACKPIN_SERVER) is not a stackpin gRPC \
                     endpoint ({}); name the registry's gRPC address (its listen setting, \
                     http://127.0.0.1:7070 by default), not its http_listen",
                    status.message()
                ),
            );
        }
        let code = code_of(&status);
        let reason = status
            .get_details_error_info()
            .filter(|i| i.domain == ERROR_DOMAIN)
            .map(|i| i.reason);
        let what = match status.code() {
            Code::AlreadyExists | Code::FailedPrecondition => "conflict",
            Code::NotFound => "not found",
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => "rejected",
            Code::DataLoss => "server reports data loss",
            Code::Unavailable => "server unavailable",
            Code::Unauthenticated => "not authenticated",
            Code::PermissionDenied => "permission denied",
            _ => "server error",
        };
        Self {
            reason,
            ..Self::new(code, anyhow::anyhow!("{what}: {}", status.message()))
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::new(FAILURE, error)
    }
}

impl From<stackpin_core::Error> for Failure {
    fn from(error: stackpin_core::Error) -> Self {
        Self {
            reason: Some(error.reason().to_owned()),
            ..Self::new(code_of_kind(error.kind()), error)
        }
    }
}

/// A command's result.
pub type Outcome<T = ()> = Result<T, Failure>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn with_reason(code: Code, message: &str, reason: &str) -> Status {
        let details =
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
        Status::with_error_details(code, message, details)
    }

    #[test]
    fn an_answer_that_is_not_grpc_is_a_wrong_server_not_a_server_error() {
        for m in [
            "h2 protocol error: http2 error",
            "protocol error: received message with invalid compression flag: 111 (valid flags \
             are 0 and 1) while receiving response with status: 405 Method Not Allowed",
            "grpc-status header missing, mapped from HTTP status code 404",
        ] {
            let f = Failure::from(Status::unknown(m));
            assert_eq!(f.code, INVALID, "{m}");
            assert!(
                f.error.to_string().contains("not a stackpin gRPC endpoint"),
                "{m}"
            );
        }
        assert_eq!(Failure::from(Status::unknown("stream reset")).code, FAILURE);
    }

    #[test]
    fn exit_codes_follow_the_reason_not_the_message() {
        // A full disk is not the request's fault, whatever the text says.
        let full = with_reason(Code::ResourceExhausted, "no room", "STORAGE_FULL");
        assert_eq!(code_of(&full), UNAVAILABLE);
        let big = with_reason(
            Code::ResourceExhausted,
            "storage is full",
            "MESSAGE_TOO_LARGE",
        );
        assert_eq!(code_of(&big), INVALID);
        let bound = with_reason(Code::AlreadyExists, "", "RELEASE_BOUND");
        assert_eq!(code_of(&bound), CONFLICT);
        let order = with_reason(Code::FailedPrecondition, "", "ACTIVATION_ORDER");
        assert_eq!(code_of(&order), CONFLICT);
        // A status with no reason (from the transport) goes by its code.
        assert_eq!(
            code_of(&Status::resource_exhausted("storage is full")),
            INVALID
        );
        assert_eq!(code_of(&Status::unavailable("")), UNAVAILABLE);
    }
}
