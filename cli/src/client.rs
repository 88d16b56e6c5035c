//! Connecting to the registry: the URL, TLS (https:// URLs, optionally with
//! a client certificate) and the bearer token every request carries.

use std::path::PathBuf;

use stackpin_proto::v1::registry_client::RegistryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::exit::{Failure, INVALID, Outcome, UNAVAILABLE};

/// Largest message the client accepts (artifacts arrive in 1 MiB chunks).
const MAX_MESSAGE: usize = stackpin_core::defaults::MAX_MESSAGE_BYTES;

/// How to reach the registry (global flags).
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// The registry's URL (https:// for TLS).
    #[arg(
        long = "server",
        global = true,
        help_heading = HEADING,
        env = "STACKPIN_SERVER",
        default_value = stackpin_core::defaults::SERVER_URL
    )]
    pub url: String,
    /// A file holding the bearer token (or set STACKPIN_TOKEN).
    #[arg(long, global = true, env = "STACKPIN_TOKEN_FILE", help_heading = HEADING)]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself; prefer --token-file, which keeps it out of
    /// process listings.
    #[arg(
        long = "token",
        global = true,
        env = "STACKPIN_TOKEN",
        hide = true,
        help_heading = HEADING
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the server with, for https:// URLs
    /// (required for https://: the CLI trusts no system roots).
    #[arg(long, global = true, env = "STACKPIN_CA_CERT", help_heading = HEADING)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_CLIENT_CERT",
        requires = "client_key",
        help_heading = HEADING
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_CLIENT_KEY",
        requires = "client_cert",
        help_heading = HEADING
    )]
    pub client_key: Option<PathBuf>,
    /// Deadline of each call to the registry (e.g. 30s, 5m).
    #[arg(
        long,
        global = true,
        env = "STACKPIN_TIMEOUT",
        default_value = "120s",
        value_parser = parse_timeout,
        help_heading = HEADING
    )]
    pub timeout: std::time::Duration,
    /// How often a call that failed for a passing reason (registry
    /// unavailable or busy, deadline passed) is tried again, with backoff.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_RETRIES",
        default_value_t = 3,
        help_heading = HEADING
    )]
    pub retries: u32,
    /// The request id of a write (an idempotency key: the registry records
    /// it once however often the call is retried, and refuses it for a
    /// different request). Default: a fresh random id, reused by this
    /// command's own retries. Pass your own to make retries across separate
    /// runs safe, e.g. the CI job's id: it is scoped per write
    /// (`ID:publish:RELEASE`, `ID:pin:ENV`, …), so one job id serves the
    /// job's publish and each of its pins.
    #[arg(long, global = true, env = "STACKPIN_REQUEST_ID", help_heading = HEADING)]
    pub request_id: Option<String>,
    /// Largest artifact `fetch`, `restore` and `audit` download (bytes, or
    /// with KiB, MiB, GiB): an artifact the registry announces as larger is
    /// refused before anything is read, so a hostile server cannot make the
    /// CLI fill memory.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_MAX_DOWNLOAD",
        default_value = "1GiB",
        value_parser = crate::parse_size,
        help_heading = HEADING
    )]
    pub max_download: u64,
    /// Refuse (exit 5) to show anything read from a log whose key is not
    /// known (no --log-key, STACKPIN_LOG_VKEY, policy, or key remembered
    /// for the server by `stackpin trust add`), instead of showing it
    /// marked unverified.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_REQUIRE_VERIFIED",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue,
        help_heading = HEADING
    )]
    pub require_verified: bool,
}

/// The `--help` heading the connection options are listed under.
const HEADING: &str = "Connection options";

fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = stackpin_core::time::parse_duration(text)?;
    if d.is_zero() {
        return Err("must be positive".to_owned());
    }
    Ok(d)
}

impl Connection {
    /// The request id this run's writes carry: `--request-id`, or one made
    /// once per run (so every retry of the write sends the same one).
    ///
    /// # Errors
    /// Invalid for a malformed `--request-id`.
    pub fn request_id(&self) -> Outcome<String> {
        static MADE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match &self.request_id {
            Some(id) => stackpin_core::ids::parse_request_id(id)
                .map_err(|e| Failure::invalid(format!("--request-id: {e}"))),
            None => Ok(MADE.get_or_init(new_request_id).clone()),
        }
    }

    /// The request id of one write: `--request-id ID` scoped to the write,
    /// `ID:<command>:<target>` (`ci-4711:publish:rel-9`,
    /// `ci-4711:pin:prod`), so one CI job id serves the job's publish and
    /// each of its pins, and a retry of the job records each once. A scoped
    /// id longer than 64 characters, or naming a target with other
    /// characters, ends in a hash of its full form instead. Without
    /// `--request-id`: this run's random id, reused by its own retries.
    ///
    /// # Errors
    /// Invalid for a malformed `--request-id`.
    pub fn request_id_for(&self, command: &str, target: &str) -> Outcome<String> {
        let base = self.request_id()?;
        if self.request_id.is_none() {
            return Ok(base);
        }
        let scoped = format!("{base}:{command}:{target}");
        if stackpin_core::ids::parse_request_id(&scoped).is_ok() {
            return Ok(scoped);
        }
        let digest = stackpin_core::digest::Digest::of(scoped.as_bytes()).to_string();
        let hash = digest.trim_start_matches("sha256:");
        let head: String = format!("{base}:{command}").chars().take(64 - 25).collect();
        Ok(format!("{head}:{}", &hash[..24]))
    }

    /// `message` as a request carrying `id` as its `x-request-id`, the id
    /// the registry's request log prints.
    pub fn request<T>(id: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = id.parse() {
            request.metadata_mut().insert("x-request-id", value);
        }
        request
    }

    /// Runs `call` until it succeeds, fails for good, or has been retried
    /// `--retries` times; waits 250 ms, 500 ms, 1 s, … (with jitter)
    /// between attempts and says so on stderr.
    ///
    /// # Errors
    /// The last attempt's status.
    pub async fn retrying<T, F, Fut>(&self, what: &str, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.retrying_said(what, true, call).await
    }

    /// As [`Self::retrying`]; with `each` false, the retries are announced
    /// once, before the first.
    async fn retrying_said<T, F, Fut>(
        &self,
        what: &str,
        each: bool,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(status) if attempt < self.retries && retryable(&status) && !each => {
                    if attempt == 0 {
                        eprintln!(
                            "{what}: {}; trying {} more time(s)",
                            status.message(),
                            self.retries
                        );
                    }
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250 << attempt.min(6)))
                        .await;
                }
                Err(status) if attempt < self.retries && retryable(&status) => {
                    let base = 250u64 << attempt.min(6);
                    let jitter = u64::from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos()),
                    ) % (base / 2 + 1);
                    let wait = std::time::Duration::from_millis(base + jitter);
                    attempt += 1;
                    eprintln!(
                        "{what}: {} ({:?}); retry {attempt} of {} in {} ms",
                        status.message(),
                        status.code(),
                        self.retries,
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

/// Whether a call that failed with `status` may succeed when tried again,
/// and a watch resumed from its cursor: the one rule for both. Writes are
/// retried under one request id, so a retry never records twice.
pub fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        // The registry unreachable or restarting; a deadline passed (the
        // registry's, or ours: tonic reports its own timeout as CANCELLED
        // "Timeout expired", so the code alone says enough and the message
        // is not read); the call cut off with its connection (a stream's
        // broken body surfaces as UNKNOWN).
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => true,
        // Only the registry's "busy" passes by itself; RESOURCE_EXHAUSTED
        // also says too large or out of space, which a retry does not mend.
        Code::ResourceExhausted => {
            use tonic_types::StatusExt as _;
            status
                .get_details_error_info()
                .is_some_and(|info| info.reason == stackpin_core::Kind::Busy.reason())
        }
        _ => false,
    }
}

/// A random request id in the UUID v4 form.
fn new_request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = nanos.to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected client.
pub type Client = RegistryClient<InterceptedService<Channel, Bearer>>;

fn read(path: &PathBuf, what: &str) -> Outcome<Vec<u8>> {
    std::fs::read(path).map_err(|e| Failure::invalid(format!("{what} {}: {e}", path.display())))
}

impl Connection {
    fn bearer(&self) -> Outcome<Bearer> {
        match self.token()? {
            None => Ok(Bearer(None)),
            Some(t) => {
                let value = format!("Bearer {t}").parse().map_err(|_| {
                    Failure::invalid("the token contains characters a header cannot carry")
                })?;
                Ok(Bearer(Some(value)))
            }
        }
    }

    /// The bearer token, from --token-file or STACKPIN_TOKEN.
    ///
    /// # Errors
    /// Invalid when the token file cannot be read or is not text.
    pub fn token(&self) -> Outcome<Option<String>> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => Some(
                String::from_utf8(read(path, "--token-file")?)
                    .map_err(|_| Failure::invalid("--token-file is not text"))?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(t)) => Some(t.trim().to_owned()),
            (None, None) => None,
        };
        Ok(token.filter(|t| !t.is_empty()))
    }
}

/// Connects to the registry.
pub async fn connect(conn: &Connection) -> Outcome<Client> {
    let server = conn.url.as_str();
    let https = server.starts_with("https://");
    if !https && !server.starts_with("http://") {
        return Err(Failure::new(
            INVALID,
            anyhow::anyhow!("server {server:?} must be a URL such as http://127.0.0.1:7070"),
        ));
    }
    let mut endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| {
        Failure::new(
            INVALID,
            anyhow::anyhow!("server {server:?} is not a valid URL: {e}"),
        )
    })?;
    if https {
        let ca = conn.ca_cert.as_ref().ok_or_else(|| {
            Failure::invalid(
                "https:// needs --ca-cert: the CA that signed the registry's certificate",
            )
        })?;
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?));
        if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::invalid(format!("TLS settings: {}", chain(&e))))?;
    } else if conn.ca_cert.is_some() || conn.client_cert.is_some() {
        return Err(Failure::invalid(
            "--ca-cert and --client-cert need an https:// server URL",
        ));
    }
    let bearer = conn.bearer()?;
    let endpoint = endpoint
        .connect_timeout(conn.timeout.min(std::time::Duration::from_secs(5)))
        .timeout(conn.timeout)
        .tcp_nodelay(true);
    // A registry that is restarting is worth waiting for a moment.
    let channel = conn
        .retrying_said(&format!("connecting to {server}"), false, || async {
            endpoint
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(chain(&e)))
        })
        .await
        .map_err(|status| {
            Failure::new(
                UNAVAILABLE,
                anyhow::anyhow!(
                    "cannot reach the registry at {server} ({}; {} attempt(s)): is it running, \
                     and is --server (STACKPIN_SERVER) its gRPC address?",
                    status.message(),
                    conn.retries + 1
                ),
            )
        })?;
    Ok(RegistryClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// An error and all its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Layers often repeat the one below ("tcp connect error: tcp
        // connect error: …"): each text once.
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::retryable;

    fn with_reason(code: Code, kind: stackpin_core::Kind) -> Status {
        let details = ErrorDetails::with_error_info(
            kind.reason(),
            stackpin_core::error::ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        Status::with_error_details(code, "refused", details)
    }

    #[test]
    fn calls_and_watches_retry_what_passes_by_itself() {
        assert!(retryable(&Status::unavailable("connection refused")));
        assert!(retryable(&Status::deadline_exceeded("deadline")));
        // tonic's own timeout, and a call cut off with its connection.
        assert!(retryable(&Status::cancelled("Timeout expired")));
        assert!(retryable(&Status::cancelled("operation was canceled")));
        assert!(retryable(&Status::unknown(
            "error reading a body from connection"
        )));
        assert!(retryable(&with_reason(
            Code::ResourceExhausted,
            stackpin_core::Kind::Busy
        )));
    }

    #[test]
    fn refusals_a_retry_cannot_mend_are_not_retried() {
        assert!(!retryable(&with_reason(
            Code::ResourceExhausted,
            stackpin_core::Kind::TooLarge
        )));
        assert!(!retryable(&Status::resource_exhausted("no details")));
        assert!(!retryable(&Status::invalid_argument("bad")));
        assert!(!retryable(&Status::not_found("none")));
        assert!(!retryable(&Status::failed_precondition("conflict")));
        assert!(!retryable(&Status::internal("bug")));
    }
}
