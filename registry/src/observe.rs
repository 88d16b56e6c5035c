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
//! | `stackpin_posture_in_policy` | gauge: 1 when the environment meets its recovery targets | `env`, `class` |
//! | `stackpin_posture_snapshot_age_seconds` | gauge: age of the newest snapshot (absent: none) | `env` |
//! | `stackpin_posture_drill_age_seconds` | gauge: age of the newest passing drill (absent: none) | `env` |
//! | `stackpin_posture_measured_rto_seconds` | gauge: the newest passing drill's restore time | `env` |
//! | `stackpin_posture_position_share` | gauge: share of pins recording a database position | `env` |
//! | `stackpin_posture_pins_without_snapshot` | gauge | `env` |
//!
//! The posture gauges are computed every [`POSTURE_EVERY`], as `stackpin
//! posture` reports them (see `stackpin_core::posture`).
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

/// How often the posture gauges are recomputed.
pub const POSTURE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps the posture gauges current, until the registry stops.
pub async fn posture(registry: std::sync::Arc<crate::registry::Registry>) {
    loop {
        match registry.posture(None, None) {
            Ok(report) => {
                for p in report {
                    let env = p.env.to_string();
                    metrics::gauge!("stackpin_posture_in_policy", "env" => env.clone(), "class" => p.targets.class.as_str())
                        .set(if p.in_policy() { 1.0 } else { 0.0 });
                    if let Some(a) = p.snapshot_age_secs {
                        metrics::gauge!("stackpin_posture_snapshot_age_seconds", "env" => env.clone())
                            .set(a as f64);
                    }
                    if let Some(a) = p.drill_age_secs {
                        metrics::gauge!("stackpin_posture_drill_age_seconds", "env" => env.clone())
                            .set(a as f64);
                    }
                    if let Some(m) = p.measured_rto_millis {
                        metrics::gauge!("stackpin_posture_measured_rto_seconds", "env" => env.clone())
                            .set(m as f64 / 1000.0);
                    }
                    metrics::gauge!("stackpin_posture_position_share", "env" => env.clone())
                        .set(p.position_share());
                    metrics::gauge!("stackpin_posture_pins_without_snapshot", "env" => env)
                        .set(p.pins_without_snapshot_count as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot compute the recovery posture"),
        }
        tokio::time::sleep(POSTURE_EVERY).await;
    }
}

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
