//! TLS for both listeners, replaceable while serving.
//!
//! The certificate, its key and the client CA are read into one rustls
//! configuration per listener (gRPC speaks only HTTP/2; the HTTP listener
//! also HTTP/1.1). Each connection is handshaken with the configuration
//! in force when it is accepted, so a reload ([`Tls::replace`]) reaches
//! every new connection at once while open ones keep the session they
//! have. That is what lets cert-manager or an ACME client rotate the
//! certificate of a single node with no restart.
//!
//! The gRPC listener does its handshakes here rather than in tonic (whose
//! configuration is fixed when the server is built): [`handshaken`] turns
//! the guarded connections into TLS streams, each handshake in a task of
//! its own, bounded by the connection's header deadline.

use std::io;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::guard::{Acceptor, Guarded};

/// The TLS configurations in force, shared by the listeners and the reload.
#[derive(Clone, Debug)]
pub struct Tls {
    current: Arc<RwLock<Loaded>>,
}

#[derive(Clone, Debug)]
struct Loaded {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// The serving certificate, for logs: serial and expiry.
    leaf: String,
}

impl Tls {
    /// Reads `cert` (a PEM chain), `key` and, for mutual TLS, `client_ca`.
    ///
    /// # Errors
    /// Naming the setting, when a file cannot be read or parsed, or the
    /// key does not match the certificate.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .with_context(|| format!("setting tls_cert: reading {}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("setting tls_cert: {} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("setting tls_key: reading {}", key.display()))?;
        let roots = match client_ca {
            None => None,
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("setting client_ca: reading {}", ca.display()))?
                {
                    let c =
                        c.with_context(|| format!("setting client_ca: reading {}", ca.display()))?;
                    roots
                        .add(c)
                        .with_context(|| format!("setting client_ca: {}", ca.display()))?;
                }
                Some(Arc::new(roots))
            }
        };
        let config =
            |alpn: &[&[u8]]| server_config(chain.clone(), key.clone_key(), roots.clone(), alpn);
        Ok(Self {
            current: Arc::new(RwLock::new(Loaded {
                grpc: config(&[b"h2"])?,
                http: config(&[b"h2", b"http/1.1"])?,
                leaf: describe(&chain[0]),
            })),
        })
    }

    /// Puts `other`'s configurations in force for every connection
    /// accepted from now on.
    pub fn replace(&self, other: &Tls) {
        let new = other.loaded();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    fn loaded(&self) -> Loaded {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The serving certificate: its serial and when it expires.
    pub fn certificate(&self) -> String {
        self.loaded().leaf
    }

    /// The acceptor for a new gRPC connection.
    pub fn grpc(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.loaded().grpc)
    }

    /// The acceptor for a new HTTP connection.
    pub fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.loaded().http)
    }
}

fn describe(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => format!(
            "serial {}, expires {}",
            c.raw_serial_as_string(),
            c.validity().not_after
        ),
        Err(_) => "an unparsable certificate".to_owned(),
    }
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Option<Arc<rustls::RootCertStore>>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    let builder = match roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .context("setting client_ca")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("setting tls_cert and tls_key (does the key belong to the certificate?)")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Connections handed out by a TLS listener, handshaken.
pub type Handshaken = tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<Guarded>>>;

/// The connections of `acceptor`, each handshaken with the gRPC
/// configuration in force when it was accepted, for tonic's
/// `serve_with_incoming`. A failed or stalled handshake (the connection's
/// header deadline bounds it) closes that connection only. Accepting stops
/// when the stream is dropped.
pub fn handshaken(acceptor: Acceptor, tls: Tls) -> Handshaken {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = acceptor.accept() => a,
                () = tx.closed() => return,
            };
            let conn = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    continue;
                }
            };
            let handshake = tls.grpc();
            let tx = tx.clone();
            tokio::spawn(async move {
                match handshake.accept(conn).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "a TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
