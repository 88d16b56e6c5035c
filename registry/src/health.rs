//! gRPC health (`grpc.health.v1`): SERVING only while storage answers.
//!
//! A probe writes a small object (`health/probe`) every half second with a
//! one-second deadline, so a replica reports NOT_SERVING within two seconds
//! of its storage becoming unreachable or unwritable, and SERVING again by
//! itself once a probe succeeds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions};
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::time::Timestamp;

/// How often storage is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe may take before storage counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

async fn probe(store: &Arc<dyn ObjectStore>) -> bool {
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        ..PutOptions::default()
    };
    let body = Bytes::from(Timestamp::now().to_string());
    let path = Path::from("health/probe");
    let put = store.put_opts(&path, body.into(), opts);
    matches!(tokio::time::timeout(PROBE_TIMEOUT, put).await, Ok(Ok(_)))
}

/// Probes storage forever, reporting health for the whole server ("") and
/// for the registry service.
pub async fn watch(store: Arc<dyn ObjectStore>, reporter: HealthReporter) {
    let name = <crate::service::Server as NamedService>::NAME;
    let mut last = None;
    loop {
        let up = probe(&store).await;
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(up) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(name, status).await;
            if up {
                tracing::info!("storage answers: SERVING");
            } else {
                tracing::warn!("storage does not answer: NOT_SERVING");
            }
            last = Some(up);
        }
        metrics::gauge!("stackpin_storage_up").set(if up { 1.0 } else { 0.0 });
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
