//! gRPC health (`grpc.health.v1`): SERVING only while storage answers and
//! the committer (the one task that writes) runs.
//!
//! A probe writes a small object (`health/probe`) every half second with a
//! one-second deadline, so a replica reports NOT_SERVING within two seconds
//! of its storage becoming unreachable or unwritable, and SERVING again by
//! itself once a probe succeeds. A committer that has stopped never comes
//! back, and every write would fail: the replica reports NOT_SERVING from
//! then on, so a load balancer or orchestrator takes it out and restarts it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions};
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::time::Timestamp;

/// How often storage is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe may take before storage counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

async fn probe(store: &Arc<dyn ObjectStore>, read_only: bool) -> bool {
    if read_only {
        // A read-only registry writes nothing: storage answering a read of
        // the stored checkpoint is what it needs.
        let path = Path::from(stackpin_core::layout::CHECKPOINT);
        let head = store.head(&path);
        return matches!(tokio::time::timeout(PROBE_TIMEOUT, head).await, Ok(Ok(_)));
    }
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
/// for the registry service; `writes` says whether the committer still runs.
pub async fn watch(
    store: Arc<dyn ObjectStore>,
    read_only: bool,
    writes: impl Fn() -> bool + Send,
    reporter: HealthReporter,
) {
    let name = <crate::service::Server as NamedService>::NAME;
    let mut last = None;
    let mut told_committer = false;
    loop {
        let writing = writes();
        if !writing && !told_committer {
            tracing::error!("the committer has stopped: every write would fail; NOT_SERVING");
            told_committer = true;
        }
        let up = writing && probe(&store, read_only).await;
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
            } else if writing {
                tracing::warn!("storage does not answer: NOT_SERVING");
            }
            last = Some(up);
        }
        metrics::gauge!("stackpin_storage_up").set(if up { 1.0 } else { 0.0 });
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use object_store::memory::InMemory;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::server::HealthService;

    async fn status(service: &HealthService) -> i32 {
        let req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        service.check(req).await.unwrap().into_inner().status
    }

    #[tokio::test]
    async fn a_stopped_committer_is_not_serving_although_storage_answers() {
        let reporter = HealthReporter::new();
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let service = HealthService::from_health_reporter(reporter.clone());
        let writing = Arc::new(AtomicBool::new(true));
        let flag = writing.clone();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let task = tokio::spawn(watch(
            store,
            false,
            move || flag.load(Ordering::Relaxed),
            reporter,
        ));
        let serving = ServingStatus::Serving as i32;
        let not_serving = ServingStatus::NotServing as i32;
        let until = |want: i32| {
            let service = &service;
            async move {
                for _ in 0..100 {
                    if status(service).await == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        assert!(
            until(serving).await,
            "storage answers and the committer runs: SERVING"
        );
        writing.store(false, Ordering::Relaxed);
        assert!(
            until(not_serving).await,
            "the committer stopped: NOT_SERVING"
        );
        task.abort();
    }
}
