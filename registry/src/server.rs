//! Serving: the caller binds the listener (tests use 127.0.0.1:0) and passes
//! a shutdown future (production passes a signal).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::Authorizer;
use crate::config::Settings;
use crate::registry::Registry;
use crate::service::RegistryService;

/// How the transport is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// TLS of both listeners (replaceable while serving: [`crate::tls`]).
    pub tls: Option<crate::tls::Tls>,
    pub auth: Authorizer,
    pub max_concurrent_streams: u32,
    pub max_message_bytes: usize,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The web view on the HTTP listener; None when it is off.
    pub web: Option<crate::web::Site>,
    /// How long in-flight requests may take to finish after a shutdown
    /// signal before the server stops anyway.
    pub shutdown_grace: Duration,
    /// What each listener holds its connections to (see [`crate::guard`]).
    pub connections: crate::guard::ConnectionLimits,
    /// How long a connection lives before it is asked to close; it is cut
    /// after as long again. The request deadline, so that no answer, read
    /// or not, holds its share of the byte budget for longer.
    pub max_connection_age: Duration,
    /// WatchLog streams open at once, in all and per principal.
    pub watches: crate::guard::WatchLimits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: None,
            auth: Authorizer::default(),
            max_concurrent_streams: crate::defaults::MAX_CONCURRENT_STREAMS,
            max_message_bytes: crate::defaults::MAX_MESSAGE_BYTES,
            metrics_listen: None,
            web: Some(crate::web::Site::default()),
            shutdown_grace: crate::defaults::SHUTDOWN_GRACE,
            connections: crate::guard::ConnectionLimits::default(),
            max_connection_age: crate::defaults::REQUEST_TIMEOUT,
            watches: crate::guard::WatchLimits::default(),
        }
    }
}

impl Options {
    /// The transport options the settings describe (reads TLS files).
    ///
    /// # Errors
    /// When a TLS file cannot be read.
    pub fn from_settings(s: &Settings, auth: Authorizer) -> anyhow::Result<Self> {
        let tls = s.tls()?;
        let web = match s.http_listen {
            None => None,
            Some(addr) => {
                let on = s
                    .web_view
                    .unwrap_or(addr.ip().is_loopback() || auth.enabled());
                if !on && s.web_view.is_none() {
                    tracing::warn!(
                        http_listen = %addr,
                        "the web view is off: http_listen is not a loopback address and \
                         authentication is off (configure tokens, or set web_view = true to \
                         show it to anyone who can reach the address); the tiles are served"
                    );
                }
                on.then(|| crate::web::Site {
                    auth_on: auth.enabled(),
                    https: tls.is_some(),
                    webhooks: std::sync::Arc::default(),
                    reload: std::sync::Arc::default(),
                    share: crate::web::share_of(s.max_inflight_bytes),
                })
            }
        };
        Ok(Self {
            tls,
            web,
            auth,
            max_concurrent_streams: s.max_concurrent_streams,
            max_message_bytes: s.max_message_bytes,
            metrics_listen: s.metrics_listen,
            shutdown_grace: crate::defaults::SHUTDOWN_GRACE,
            connections: crate::guard::ConnectionLimits {
                max_connections: s.max_connections,
                header_timeout: s.header_timeout,
                write_idle: s.stream_idle_timeout,
            },
            max_connection_age: s.request_timeout,
            watches: crate::guard::WatchLimits {
                total: s.max_watch_streams,
                per_principal: s.max_watch_streams_per_principal,
            },
        })
    }
}

/// Serves `registry` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (for at most `shutdown_grace`) and flushes the
/// index. Alongside the registry it serves gRPC health (SERVING only while
/// storage answers and the committer runs) and server reflection, and metrics when asked.
///
/// # Errors
/// When TLS cannot be set up, the transport fails, or the final flush fails.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_all(
        Listeners {
            grpc: listener,
            tiles: None,
        },
        registry,
        options,
        shutdown,
    )
    .await
}

/// The listeners a registry serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    /// C2SP tlog-tiles over HTTP (see [`crate::http`]).
    pub tiles: Option<TcpListener>,
}

/// As [`run`], on every listener of `listeners`.
///
/// # Errors
/// As [`run`].
pub async fn run_all(
    listeners: Listeners,
    registry: Arc<Registry>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = listeners.grpc;
    let addr = listener.local_addr()?;
    if let Some(metrics) = options.metrics_listen {
        crate::observe::install(metrics).context("starting the metrics listener")?;
        tokio::spawn(crate::observe::posture(registry.clone()));
    }
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let writes = {
        let registry = registry.clone();
        move || registry.accepts_writes()
    };
    let health = tokio::spawn(crate::health::watch(
        registry.store(),
        registry.is_read_only(),
        writes,
        reporter,
    ));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(stackpin_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("building reflection")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building reflection")?;

    // The request deadline is the service's own (`request_timeout` in its
    // limits), so that passing it answers DEADLINE_EXCEEDED rather than
    // tonic's CANCELLED.
    // A connection is asked to close (GOAWAY) at its age and cut after as
    // long again: HTTP/2 flow control lets a client that reads nothing
    // hold an answer without stalling the socket, so only the connection's
    // end bounds how long it holds it.
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_connection_age(options.max_connection_age)
        .max_connection_age_grace(options.max_connection_age)
        // A peer that stops answering pings (gone without a FIN) gives its
        // slot back well before the connection's age.
        .http2_keepalive_interval(Some(options.connections.write_idle))
        .http2_keepalive_timeout(Some(options.connections.write_idle));
    // The signal starts the drain; the grace period bounds it.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let service = RegistryService::new(registry.clone(), options.auth.clone())
        .with_watch_limits(options.watches)
        .with_stopping(drain_rx.clone())
        .into_server(options.max_message_bytes);
    let acceptor = crate::guard::Acceptor::new(listener, options.connections);
    // Every request (registry, health, reflection) marks its connection as
    // started, which ends the connection's header deadline.
    let open = acceptor.open();
    let started = tonic::service::InterceptorLayer::new(move |req: tonic::Request<()>| {
        if let Some(peer) = req.remote_addr() {
            open.mark(peer);
        }
        Ok(req)
    });
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {addr} ({scheme})");

    let grace = options.shutdown_grace;
    tokio::spawn(async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    });
    let mut draining = drain_rx.clone();
    if let Some(tiles) = listeners.tiles {
        let http = crate::http::Http {
            registry: registry.clone(),
            auth: options.auth.clone(),
            tls: options.tls.clone(),
            web: options.web.clone(),
            connections: options.connections,
            max_age: options.max_connection_age,
            oci: crate::oci::Oci::default(),
            grpc: Some(addr),
        };
        tokio::spawn(crate::http::serve(tiles, http, drain_rx.clone()));
    }
    let router = builder
        .layer(started)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let stopped = async move {
        let mut rx = drain_rx;
        let _ = rx.wait_for(|d| *d).await;
    };
    let mut serving: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match options.tls.clone() {
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(crate::tls::handshaken(acceptor, tls), stopped),
        ),
        None => Box::pin(router.serve_with_incoming_shutdown(acceptor.into_stream(), stopped)),
    };
    let finished = tokio::select! {
        r = serving.as_mut() => Some(r),
        () = async {
            let _ = draining.wait_for(|d| *d).await;
            tokio::time::sleep(grace).await;
        } => None,
    };
    match finished {
        Some(result) => result?,
        None => tracing::warn!(
            grace_seconds = grace.as_secs(),
            "requests still in flight after the grace period; stopping anyway"
        ),
    }
    health.abort();
    registry.flush().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_on(http_listen: &str, web_view: Option<bool>) -> bool {
        let s = Settings {
            http_listen: Some(http_listen.parse().unwrap()),
            web_view,
            ..Settings::default()
        };
        Options::from_settings(&s, Authorizer::default())
            .unwrap()
            .web
            .is_some()
    }

    #[test]
    fn the_web_view_is_off_beyond_loopback_without_authentication_unless_asked() {
        assert!(web_on("127.0.0.1:8444", None));
        assert!(!web_on("192.0.2.7:8444", None));
        assert!(web_on("192.0.2.7:8444", Some(true)));
        assert!(!web_on("127.0.0.1:8444", Some(false)));
    }
}
