//! Serving: the caller binds the listener (tests use 127.0.0.1:0) and passes
//! a shutdown future (production passes a signal).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::registry::Registry;
use crate::service::RegistryService;

/// Serves `registry` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish and flushes the index.
///
/// # Errors
/// When the transport fails or the final flush fails.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(RegistryService::new(registry.clone()).into_server())
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
