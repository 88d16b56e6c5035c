//! Reading a log over C2SP tlog-tiles (`stackpin audit --tiles URL`): the
//! registry's tiles listener, or any static mirror or CDN of it. Only the
//! spec's paths are used, so the audit takes the same road as any other
//! tlog-tiles client.

use std::time::Duration;

use stackpin_core::tiles::Tile;

use crate::client::Connection;
use crate::exit::{Failure, Outcome};

/// The largest checkpoint read (a note with its cosignatures).
const MAX_CHECKPOINT_BYTES: usize = 1 << 20;
/// The largest entry bundle: 256 entries of at most 65535 bytes, each
/// with its two-byte length.
const MAX_BUNDLE_BYTES: usize = 256 * (65535 + 2);

/// Why a GET failed, and the HTTP status when there was an answer.
type Fetch = (String, Option<reqwest::StatusCode>);

/// Whether a failed GET may pass: no answer, or a server error.
fn passing((_, status): &Fetch) -> bool {
    status.is_none_or(|s| s.is_server_error())
}

/// A tlog-tiles source at a base URL.
pub struct TilesSource {
    base: String,
    http: reqwest::Client,
    bearer: Option<String>,
    retries: u32,
}

impl TilesSource {
    /// The tiles under `url`, reached with the connection's CA, client
    /// certificate, token and timeout.
    ///
    /// # Errors
    /// Invalid for a URL that is not http(s):// or unreadable TLS files.
    pub fn new(url: &str, conn: &Connection) -> Outcome<Self> {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(Failure::invalid(format!(
                "--tiles {url:?}: give an http:// or https:// URL (the base under which \
                 checkpoint and tile/ are served)"
            )));
        }
        let read = |p: &std::path::PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| Failure::invalid(format!("{what} {}: {e}", p.display())))
        };
        let mut builder = reqwest::Client::builder()
            .timeout(conn.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("stackpin/", env!("CARGO_PKG_VERSION")));
        if url.starts_with("https://") {
            let Some(ca) = &conn.ca_cert else {
                return Err(Failure::invalid(
                    "an https:// tiles URL needs --ca-cert (the CLI trusts no system roots)",
                ));
            };
            let ca = reqwest::Certificate::from_pem(&read(ca, "--ca-cert")?)
                .map_err(|e| Failure::invalid(format!("--ca-cert: {e}")))?;
            builder = builder.tls_certs_only([ca]);
        }
        if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
            let mut pem = read(cert, "--client-cert")?;
            pem.push(b'\n');
            pem.extend(read(key, "--client-key")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| Failure::invalid(format!("--client-cert/--client-key: {e}")))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| Failure::invalid(format!("setting up HTTP: {e}")))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
            bearer: conn.token()?,
            retries: conn.retries,
        })
    }

    /// The base URL, for reports.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The checkpoint note at `<base>/checkpoint`.
    ///
    /// # Errors
    /// Unavailable when it cannot be fetched.
    pub async fn checkpoint(&self) -> Outcome<String> {
        let bytes =
            self.get("checkpoint", MAX_CHECKPOINT_BYTES)
                .await
                .map_err(|(why, status)| {
                    let code = match status.map(|s| s.as_u16()) {
                        Some(401 | 403) => crate::exit::AUTH,
                        Some(404) => crate::exit::NOT_FOUND,
                        Some(400..=499) => crate::exit::INVALID,
                        _ => crate::exit::UNAVAILABLE,
                    };
                    Failure::new(code, anyhow::anyhow!("{why}"))
                })?;
        String::from_utf8(bytes)
            .map_err(|_| Failure::verify(format!("{}/checkpoint is not text", self.base)))
    }

    /// The bytes of `tile`, or why they could not be read.
    pub async fn tile(&self, tile: &Tile) -> Result<Vec<u8>, String> {
        let max = if tile.level.is_some() {
            tile.width as usize * 32
        } else {
            MAX_BUNDLE_BYTES
        };
        self.get(&tile.path(), max).await.map_err(|(why, _)| why)
    }

    /// GET `<base>/<path>`, at most `max` bytes, retrying what may pass
    /// (connection errors, 5xx) with backoff.
    async fn get(&self, path: &str, max: usize) -> Result<Vec<u8>, Fetch> {
        let url = format!("{}/{path}", self.base);
        let mut attempt = 0;
        loop {
            match self.get_once(&url, max).await {
                Ok(bytes) => return Ok(bytes),
                Err(failed) if !passing(&failed) || attempt >= self.retries => return Err(failed),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                }
            }
        }
    }

    async fn get_once(&self, url: &str, max: usize) -> Result<Vec<u8>, Fetch> {
        let mut request = self.http.get(url);
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| (format!("{url}: {e}"), None))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let text = text.trim();
            return Err((
                format!(
                    "{url}: HTTP {status}{}{text}",
                    if text.is_empty() { "" } else { ": " }
                ),
                Some(status),
            ));
        }
        let mut out = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| (format!("{url}: {e}"), None))?
        {
            if out.len() + chunk.len() > max {
                return Err((
                    format!("{url}: longer than the {max} bytes it can be"),
                    Some(status),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}
