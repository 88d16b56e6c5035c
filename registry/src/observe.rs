//! What operators watch: Prometheus metrics and one log line per request.
//!
//! Metrics (served over HTTP on `metrics_listen` when set):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `stackpin_requests_total` | counter | `rpc`, `code` |
//! | `stackpin_request_duration_seconds` | histogram | `rpc` |
//! | `stackpin_published_bytes_total` | counter | |
//! | `stackpin_log_entries` | gauge | |
//! | `stackpin_index_lag_entries` | gauge: entries the index was behind at the last poll | |
//! | `stackpin_storage_errors_total` | counter | |
//! | `stackpin_storage_up` | gauge: 1 when the last storage probe succeeded | |
//! | `stackpin_build_info` | gauge, always 1 | `version` |
//!
//! Without `metrics_listen` no recorder is installed and recording costs
//! nothing. Log lines never include credentials.

use std::net::SocketAddr;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusBuilder;
use tonic::{Request, Response, Status};

/// Latency buckets, in seconds: sub-millisecond reads to multi-second publishes.
const BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Serves metrics on `addr` (a background task of the current runtime).
///
/// # Errors
/// When the recorder cannot be installed or the address is unusable.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("stackpin_request_duration_seconds".into()),
            BUCKETS,
        )?
        .install()?;
    metrics::gauge!("stackpin_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// One request being served: timed, counted and logged when it finishes.
pub struct Observed {
    rpc: &'static str,
    started: Instant,
    request_id: String,
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

impl Observed {
    /// Starts observing `rpc`; the request id comes from `x-request-id`
    /// when the client sent a sane one.
    pub fn begin<T>(rpc: &'static str, request: &Request<T>) -> Self {
        let request_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .map_or_else(new_request_id, str::to_owned);
        Self {
            rpc,
            started: Instant::now(),
            request_id,
        }
    }

    /// The request's id, as its log lines carry it.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Records the outcome.
    pub fn finish<T>(self, result: &Result<Response<T>, Status>) {
        let elapsed = self.started.elapsed();
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        let code_name = format!("{code:?}");
        metrics::counter!("stackpin_requests_total", "rpc" => self.rpc, "code" => code_name.clone())
            .increment(1);
        metrics::histogram!("stackpin_request_duration_seconds", "rpc" => self.rpc)
            .record(elapsed.as_secs_f64());
        let ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(_) => {
                tracing::info!(rpc = self.rpc, code = %code_name, duration_ms = ms, request_id = %self.request_id, "request")
            }
            Err(s) => tracing::info!(
                rpc = self.rpc, code = %code_name, duration_ms = ms, request_id = %self.request_id,
                error = %s.message(), "request"
            ),
        }
    }
}
