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
        env = "STACKPIN_SERVER",
        default_value = stackpin_core::defaults::SERVER_URL
    )]
    pub url: String,
    /// A file holding the bearer token (or set STACKPIN_TOKEN).
    #[arg(long, global = true, env = "STACKPIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself; prefer --token-file, which keeps it out of
    /// process listings.
    #[arg(long = "token", global = true, env = "STACKPIN_TOKEN", hide = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the server with, for https:// URLs
    /// (required for https://: the CLI trusts no system roots).
    #[arg(long, global = true, env = "STACKPIN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "STACKPIN_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
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
        match token.filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(t) => {
                let value = format!("Bearer {t}").parse().map_err(|_| {
                    Failure::invalid("the token contains characters a header cannot carry")
                })?;
                Ok(Bearer(Some(value)))
            }
        }
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
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            Failure::new(
                UNAVAILABLE,
                anyhow::anyhow!("cannot reach the registry at {server}: {}", chain(&e)),
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
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}
