//! Serving: the caller binds the listener (tests use 127.0.0.1:0) and passes
//! a shutdown future (production passes a signal).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::Authorizer;
use crate::config::Settings;
use crate::registry::Registry;
use crate::service::RegistryService;

/// How the transport is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub tls: Option<ServerTlsConfig>,
    pub auth: Authorizer,
    pub request_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_message_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            auth: Authorizer::default(),
            request_timeout: Duration::from_secs(120),
            max_concurrent_streams: 256,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Options {
    /// The transport options the settings describe (reads TLS files).
    ///
    /// # Errors
    /// When a TLS file cannot be read.
    pub fn from_settings(s: &Settings, auth: Authorizer) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path, key: &str| {
            std::fs::read(p).with_context(|| format!("setting {key}: reading {}", p.display()))
        };
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(read(cert, "tls_cert")?, read(key, "tls_key")?);
                let mut tls = ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &s.client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client_ca")?));
                }
                Some(tls)
            }
            _ => None,
        };
        Ok(Self {
            tls,
            auth,
            request_timeout: s.request_timeout,
            max_concurrent_streams: s.max_concurrent_streams,
            max_message_bytes: s.max_message_bytes,
        })
    }
}

/// Serves `registry` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish and flushes the index.
///
/// # Errors
/// When TLS cannot be set up, the transport fails, or the final flush fails.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder()
        .timeout(options.request_timeout)
        .max_concurrent_streams(options.max_concurrent_streams);
    if let Some(tls) = options.tls.clone() {
        builder = builder.tls_config(tls).context("setting up TLS")?;
    }
    let service = RegistryService::new(registry.clone(), options.auth.clone())
        .into_server(options.max_message_bytes);
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {addr} ({scheme})");
    builder
        .add_service(service)
        // TCP_NODELAY: small answers (a resolve, a pin) must not wait for
        // Nagle's algorithm and the peer's delayed ACK (~40 ms each).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    registry.flush().await?;
    tracing::info!("stopped");
    Ok(())
}
