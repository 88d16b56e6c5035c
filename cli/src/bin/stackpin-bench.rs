//! `stackpin-bench`: drive a running registry with load and report what it
//! sustained. A tool of its own, so the `stackpin` that pipelines and
//! operators install carries no load generator.
//!
//! Long because it is the whole load generator in one file: its workloads,
//! workers, setup and report are read together, change together for a new
//! measurement, and are used by nothing else.
//!
//! N worker tasks share one gRPC channel (HTTP/2 multiplexes their calls) and
//! each keeps one request in flight, so N is the number of concurrent
//! requests. Everything a request needs that is not being measured (payload
//! bytes, their digest, the DSSE signature, the random instant) is prepared
//! before the clock starts; the latency of a request is the wall time of the
//! RPC alone, taken with a monotonic clock in the client. Over loopback that
//! is the server's handling time plus a small, roughly constant transport
//! cost. Percentiles are over successful requests only (a fast refusal is not
//! a fast answer); failures are counted by gRPC code, plus `SizeMismatch` and
//! `DigestMismatch` for answers that do not check out.
//!
//! Throughput is successful requests divided by the measured window: from
//! the end of the warmup until the last worker finished (requests in flight
//! at the deadline are allowed to complete and are counted).
//!
//! With `--server-pid` the registry's CPU time over the window (utime + stime
//! from /proc/PID/stat, assuming the usual 100 clock ticks per second, as std
//! offers no sysconf) and its memory at the end (VmRSS, and VmHWM, the peak
//! over the process's whole life) are reported. The client's own CPU time is
//! reported too: the CLI runs on a single-threaded runtime, so the load
//! generator uses one core, and a client CPU time close to the duration means
//! the client, not the server, was the bottleneck.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, ReleaseId};
use stackpin_core::signing;
use stackpin_core::time::Timestamp;
use stackpin_core::time::parse_duration;
use stackpin_proto::v1 as pb;
use tokio::time::Instant;

use stackpin_cli::exit::{Failure, Outcome};
use stackpin_cli::view::{Format, wire_time};

use stackpin_cli::client::Client;

/// Size of the chunks artifacts are sent in.
const CHUNK: usize = 1024 * 1024;
/// Largest --size accepted.
const MAX_SIZE: u64 = 1 << 30;
/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;
/// How often progress is printed to a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Pins written to an empty environment before a resolve run.
const SETUP_PINS: i64 = 10;
/// History pages read to find an environment's first pin.
const HISTORY_PAGES: usize = 50;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Publish a fresh signed artifact of --size bytes.
    Publish,
    /// Pin one artifact to --env (server clock).
    Pin,
    /// Resolve --env at a random instant between its first and last pins.
    Resolve,
    /// Download one artifact of --size bytes in full.
    Fetch,
}

#[derive(clap::Args)]
struct Args {
    #[arg(value_enum)]
    workload: Workload,
    /// Requests in flight at once (one worker task each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// How long to measure, after the warmup (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many measured requests, if that comes before --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Pace the workers to about this many requests per second in all
    /// (a steady load, e.g. for a mirror's lag) [default: as fast as they
    /// go].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: Option<u32>,
    /// Artifact size for publish and fetch: bytes, or with KiB, MiB or GiB.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    size: u64,
    /// Environment for pin and resolve.
    #[arg(long, default_value = "bench", value_parser = stackpin_cli::parse::<EnvName>)]
    env: EnvName,
    /// Spread pins over this many environments, <env>-0, <env>-1, ... (pin only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    envs: u32,
    /// Publisher key (PKCS#8 PEM): required for publish, and to publish the
    /// artifact other workloads use unless --release-id is given.
    #[arg(long, required_if_eq("workload", "publish"))]
    key: Option<PathBuf>,
    /// Pin, resolve or fetch this published artifact instead of publishing one.
    #[arg(long, value_parser = stackpin_cli::parse::<ReleaseId>)]
    release_id: Option<ReleaseId>,
    /// The registry's process id, to report its CPU time and memory (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Run load for this long before measuring.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Behave as a stalled client (publish and fetch): after the header
    /// and the first chunk, send or read nothing more for this long, then
    /// give up. Measures what stalled streams cost the server; such
    /// requests count as failures.
    #[arg(long, value_parser = parse_duration)]
    stall: Option<Duration>,
}

/// `--stall`, for the workers.
static STALL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Parses 4096, 4KiB, 512KiB, 8MiB or 1GiB.
fn parse_size(text: &str) -> Result<u64, String> {
    stackpin_cli::parse_size(text).and_then(|n| {
        (n <= MAX_SIZE)
            .then_some(n)
            .ok_or_else(|| format!("{text:?} is more than 1GiB"))
    })
}

impl Workload {
    fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// Artifacts `{"pad":"xxx…","bench":"<release id>"}` of exactly `size` bytes.
/// Only the tail differs between them, so the padding is made and hashed once
/// and each artifact costs one short hash and one signature.
struct Payloads {
    nonce: String,
    size: u64,
    body: Vec<Bytes>,
    prefix_hash: Sha256,
}

impl Payloads {
    fn new(size: u64, nonce: &str) -> Outcome<Self> {
        let (nonce, body, prefix_hash) = (nonce.to_owned(), Vec::new(), Sha256::new());
        let mut this = Self {
            nonce,
            size,
            body,
            prefix_hash,
        };
        let fixed = r#"{"pad":""#.len() + this.tail(0).len();
        let pad = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_sub(fixed));
        let pad =
            pad.ok_or_else(|| Failure::invalid(format!("--size must be at least {fixed} bytes")))?;
        let mut body = Vec::with_capacity(fixed + pad);
        body.extend_from_slice(br#"{"pad":""#);
        body.resize(body.len() + pad, b'x');
        this.prefix_hash.update(&body);
        let body = Bytes::from(body);
        let chunk = |start: usize| body.slice(start..(start + CHUNK).min(body.len()));
        this.body = (0..body.len()).step_by(CHUNK).map(chunk).collect();
        Ok(this)
    }

    /// Counters have 10 digits, so every release id and tail has one length.
    fn release_id(&self, n: u64) -> String {
        format!("bench-{}-{n:010}", self.nonce)
    }

    fn tail(&self, n: u64) -> String {
        format!(r#"","bench":"{}"}}"#, self.release_id(n))
    }

    /// The signed request stream of the n-th artifact, and its digest.
    fn request(&self, n: u64, key: &SigningKey) -> Outcome<(Vec<pb::PublishRequest>, Digest)> {
        use pb::publish_request::Part;
        let release_id: ReleaseId = self.release_id(n).parse()?;
        let tail = Bytes::from(self.tail(n));
        let hash = self.prefix_hash.clone().chain_update(&tail).finalize();
        let digest = Digest::from_bytes(hash.into());
        let statement = signing::publish_statement(&release_id, &digest);
        let header = Part::Header(pb::PublishHeader {
            release_id: release_id.to_string(),
            media_type: "application/json".to_owned(),
            envelope: signing::sign_envelope(&statement, key).into(),
            size: self.size,
            request_id: String::new(),
        });
        let chunks = self.body.iter().cloned().chain([tail]).map(Part::Chunk);
        let parts = std::iter::once(header).chain(chunks);
        Ok((
            parts
                .map(|p| pb::PublishRequest { part: Some(p) })
                .collect(),
            digest,
        ))
    }
}

/// A failed request: a gRPC code name (or a failed client-side check) and
/// the message.
struct Miss(String, String);

impl From<tonic::Status> for Miss {
    fn from(status: tonic::Status) -> Self {
        Self(format!("{:?}", status.code()), status.message().to_owned())
    }
}

fn by_release(release_id: &str) -> Option<pb::ArtifactRef> {
    let r = pb::artifact_ref::Ref::ReleaseId(release_id.to_owned());
    Some(pb::ArtifactRef { r#ref: Some(r) })
}

fn pin_request(env: &str, release_id: &str, at: Option<Timestamp>, why: &str) -> pb::PinRequest {
    pb::PinRequest {
        db_position: None,
        env: env.to_owned(),
        artifact: by_release(release_id),
        activated_at: at.map(wire_time),
        reason: why.to_owned(),
        request_id: String::new(),
        runtime_image: String::new(),
        known_env_only: false,
    }
}

/// Times one call: (microseconds, outcome).
async fn timed(call: impl Future<Output = Result<(), Miss>>) -> (u64, Result<(), Miss>) {
    let start = Instant::now();
    let result = call.await;
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    (micros, result)
}

/// What the workers repeat, with everything set up beforehand.
enum Job {
    Publish(Box<Payloads>, Box<SigningKey>),
    /// Environments (worker i pins to the (i mod n)-th) and the release id.
    Pin(Vec<String>, String),
    /// The environment and its first and last activations, in microseconds.
    Resolve(String, (i64, i64)),
    /// The release id and its size.
    Fetch(String, u64),
}

impl Job {
    /// Prepares and makes one request (the n-th artifact, for publish);
    /// only the RPC is timed.
    async fn once(&self, client: &mut Client, worker: usize, n: u64, rng: &mut u64) -> Timed {
        match self {
            Job::Publish(payloads, key) => {
                let (parts, digest) = match payloads.request(n, key) {
                    Ok(prepared) => prepared,
                    Err(f) => return (0, Err(Miss("ClientError".into(), f.error.to_string()))),
                };
                if let Some(stall) = STALL.get() {
                    // Header and one chunk, then silence.
                    let first: Vec<_> = parts.into_iter().take(2).collect();
                    let stream = futures::StreamExt::chain(
                        futures::stream::iter(first),
                        futures::stream::pending(),
                    );
                    return timed(async {
                        match tokio::time::timeout(*stall, client.publish(stream)).await {
                            Ok(Err(status)) => Err(Miss::from(status)),
                            Ok(Ok(_)) => Err(Miss("Stalled".into(), "answered".into())),
                            Err(_) => Err(Miss("Stalled".into(), "held to the end".into())),
                        }
                    })
                    .await;
                }
                timed(async {
                    let response = client.publish(futures::stream::iter(parts)).await?;
                    match response.into_inner().artifact {
                        Some(a) if a.digest == digest.to_string() => Ok(()),
                        _ => Err(Miss("DigestMismatch".into(), "another digest".into())),
                    }
                })
                .await
            }
            Job::Pin(envs, release_id) => {
                let request = pin_request(&envs[worker % envs.len()], release_id, None, "bench");
                timed(async { client.pin(request).await.map(drop).map_err(Miss::from) }).await
            }
            Job::Resolve(env, (first_micros, last_micros)) => {
                // Instants from the first pin to a minute past the last one,
                // so every pin of the history is about equally likely.
                let span = last_micros
                    .saturating_add(60_000_000)
                    .saturating_sub(*first_micros);
                let offset = xorshift(rng) % u64::try_from(span).unwrap_or(0).saturating_add(1);
                let at = first_micros.saturating_add(i64::try_from(offset).unwrap_or(0));
                let at = Timestamp::from_micros(at).unwrap_or_else(|_| Timestamp::now());
                let (env, at) = (env.clone(), Some(wire_time(at)));
                let request = pb::ResolveRequest {
                    position: None,
                    env,
                    at,
                    margin: None,
                    fresh: false,
                };
                timed(async { client.resolve(request).await.map(drop).map_err(Miss::from) }).await
            }
            Job::Fetch(release_id, size) => {
                let request = pb::GetArtifactRequest {
                    artifact: by_release(release_id),
                };
                if let Some(stall) = STALL.get() {
                    return timed(async {
                        let mut stream = client.get_artifact(request).await?.into_inner();
                        stream.message().await?;
                        stream.message().await?;
                        // Read nothing more: the server must hold or cut it.
                        tokio::time::sleep(*stall).await;
                        Err(Miss("Stalled".into(), "held to the end".into()))
                    })
                    .await;
                }
                timed(async {
                    let mut stream = client.get_artifact(request).await?.into_inner();
                    let mut got = 0;
                    while let Some(message) = stream.message().await? {
                        if let Some(pb::get_artifact_response::Part::Chunk(c)) = message.part {
                            got += c.len() as u64;
                        }
                    }
                    let short = format!("got {got} of {size} bytes");
                    (got == *size)
                        .then_some(())
                        .ok_or(Miss("SizeMismatch".into(), short))
                })
                .await
            }
        }
    }
}

type Timed = (u64, Result<(), Miss>);

/// xorshift64: enough randomness to spread resolve instants.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// State shared by the workers.
struct Shared {
    job: Job,
    measure_from: Instant,
    deadline: Instant,
    limit: Option<u64>,
    /// Artifact counter for release ids (publish); 0 is the setup artifact.
    counter: AtomicU64,
    /// Measured requests started (for --requests).
    started: AtomicU64,
    /// How long each worker waits between starting requests (--rate).
    pace: Option<Duration>,
    ok: AtomicU64,
    failed: AtomicU64,
}

#[derive(Serialize)]
struct ErrorCount {
    count: u64,
    example: String,
}

/// Measurements: latencies of successful requests in microseconds, and
/// failures by code.
#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    errors: BTreeMap<String, ErrorCount>,
}

impl Tally {
    fn add_error(&mut self, code: String, count: u64, example: String) {
        let entry = self.errors.entry(code);
        entry.or_insert(ErrorCount { count: 0, example }).count += count;
    }
}

async fn worker(shared: Arc<Shared>, mut client: Client, index: usize, seed: u64) -> Tally {
    let mut rng = (seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut tally = Tally::default();
    let mut next = Instant::now();
    loop {
        if let Some(pace) = shared.pace {
            tokio::time::sleep_until(next).await;
            next += pace;
        }
        let now = Instant::now();
        let measured = now >= shared.measure_from;
        let enough = |limit| shared.started.fetch_add(1, Relaxed) >= limit;
        if now >= shared.deadline || (measured && shared.limit.is_some_and(enough)) {
            break;
        }
        let n = match shared.job {
            Job::Publish(..) => shared.counter.fetch_add(1, Relaxed),
            _ => 0,
        };
        match shared.job.once(&mut client, index, n, &mut rng).await {
            (micros, Ok(())) if measured => {
                tally.latencies.push(micros);
                shared.ok.fetch_add(1, Relaxed);
            }
            (_, Err(Miss(code, message))) if measured => {
                tally.add_error(code, 1, message);
                shared.failed.fetch_add(1, Relaxed);
                // A dead server fails calls at once; let the timers run.
                tokio::task::yield_now().await;
            }
            _ => {}
        }
    }
    tally
}

/// CPU seconds (utime + stime, fields 14 and 15) from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields from the third on follow the command name, which may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / CLOCK_TICKS)
}

/// A memory line of /proc/<pid>/status (VmRSS, VmHWM) in MiB.
fn memory_mib(pid: u32, name: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(round3(kib as f64 / 1024.0))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Milliseconds, nearest rank.
#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    /// Percentiles of sorted microseconds; None when there are none.
    fn of(sorted: &[u64]) -> Option<Self> {
        let ms = |per_mille: usize| {
            let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
            sorted.get(rank - 1).map(|&us| us as f64 / 1000.0)
        };
        let (p50, p90, p99, max) = (ms(500)?, ms(900)?, ms(990)?, ms(1000)?);
        Some(Self { p50, p90, p99, max })
    }
}

#[derive(Serialize)]
struct ServerUsage {
    pid: u32,
    /// Over the measured window.
    cpu_seconds: f64,
    /// At the end of the run.
    rss_mib: f64,
    /// Over the server's whole life.
    peak_rss_mib: f64,
}

impl ServerUsage {
    fn read(pid: u32, cpu_before: Option<f64>) -> Option<Self> {
        let cpu_seconds = round3(cpu_seconds(&pid.to_string())? - cpu_before?);
        let (rss_mib, peak_rss_mib) = (memory_mib(pid, "VmRSS")?, memory_mib(pid, "VmHWM")?);
        Some(Self {
            pid,
            cpu_seconds,
            rss_mib,
            peak_rss_mib,
        })
    }
}

#[derive(Serialize)]
struct Report {
    workload: Workload,
    concurrency: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    requests_ok: u64,
    errors: u64,
    errors_by_code: BTreeMap<String, ErrorCount>,
    duration_seconds: f64,
    throughput_rps: f64,
    /// Over successful requests; absent when none succeeded.
    latency_ms: Option<Latency>,
    server: Option<ServerUsage>,
    client_cpu_seconds: Option<f64>,
}

impl Report {
    fn text(&self) -> String {
        let (secs, rate) = (self.duration_seconds, self.throughput_rps);
        let mut out = format!("workload     {}\n", self.workload.name());
        out += &format!("concurrency  {}\n", self.concurrency);
        if let Some(size) = self.size_bytes {
            out += &format!("size         {size} bytes\n");
        }
        out += &format!(
            "requests     {} ok, {} errors\n",
            self.requests_ok, self.errors
        );
        for (code, e) in &self.errors_by_code {
            out += &format!("  {code:<18} {} (e.g. {})\n", e.count, e.example);
        }
        out += &format!("duration     {secs:.3} s\nthroughput   {rate:.1} req/s\n");
        out += &match &self.latency_ms {
            Some(l) => format!(
                "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n",
                l.p50, l.p90, l.p99, l.max
            ),
            None => "latency ms   (no successful requests)\n".to_owned(),
        };
        let cores = |cpu: f64| 100.0 * cpu / secs.max(1e-9);
        if let Some(s) = &self.server {
            let (cpu, rss, peak) = (s.cpu_seconds, s.rss_mib, s.peak_rss_mib);
            let pct = cores(cpu);
            out += &format!(
                "server cpu   {cpu:.2} s ({pct:.0}% of a core), pid {}\n",
                s.pid
            );
            out += &format!("server rss   {rss:.1} MiB (peak {peak:.1} MiB)\n");
        }
        if let Some(cpu) = self.client_cpu_seconds {
            out += &format!("client cpu   {cpu:.2} s ({:.0}% of a core)\n", cores(cpu));
        }
        out
    }
}

/// The artifact pin, resolve and fetch use, and its size: --release-id if
/// given (checked to exist), else a fresh one published now (counter 0).
async fn artifact(
    args: &Args,
    client: &mut Client,
    key: Option<&SigningKey>,
    nonce: &str,
) -> Outcome<(String, u64)> {
    if let Some(r) = &args.release_id {
        let request = pb::StatArtifactRequest {
            artifact: by_release(r.as_str()),
        };
        return Ok((
            r.to_string(),
            client.stat_artifact(request).await?.into_inner().size,
        ));
    }
    let no_key = || Failure::invalid("pass --key to publish a bench artifact, or --release-id");
    let payloads = Payloads::new(args.size, nonce)?;
    let (parts, _) = payloads.request(0, key.ok_or_else(no_key)?)?;
    client.publish(futures::stream::iter(parts)).await?;
    Ok((payloads.release_id(0), args.size))
}

/// The oldest and newest activations in `env` (None when it has no pins).
/// Reads at most HISTORY_PAGES pages; any pin's activation is a valid lower
/// bound.
async fn first_pin(client: &mut Client, env: &str) -> Outcome<Option<(i64, i64)>> {
    let (mut oldest, mut newest, mut page_token) = (None, None, String::new());
    for _ in 0..HISTORY_PAGES {
        let (env, limit) = (env.to_owned(), 1000);
        let request = pb::HistoryRequest {
            env,
            before: None,
            since: None,
            limit,
            page_token,
            request_id: String::new(),
        };
        let page = match client.history(request).await {
            Ok(page) => page.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        if newest.is_none()
            && let Some(t) = page.pins.first().and_then(|p| p.activated_at.as_ref())
        {
            newest = Some(Timestamp::from_parts(t.seconds, t.nanos)?.as_micros());
        }
        if let Some(t) = page.pins.last().and_then(|p| p.activated_at.as_ref()) {
            oldest = Some(Timestamp::from_parts(t.seconds, t.nanos)?.as_micros());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(oldest.zip(newest))
}

/// Prepares the workload; returns it and the artifact size when relevant.
async fn setup(
    args: &Args,
    client: &mut Client,
    key: Option<SigningKey>,
    nonce: &str,
) -> Outcome<(Job, Option<u64>)> {
    Ok(match args.workload {
        Workload::Publish => {
            let key = key.ok_or_else(|| Failure::invalid("publish needs --key"))?;
            let payloads = Payloads::new(args.size, nonce)?;
            (
                Job::Publish(Box::new(payloads), Box::new(key)),
                Some(args.size),
            )
        }
        Workload::Pin => {
            let name = |i| Ok(format!("{}-{i}", args.env).parse::<EnvName>()?.to_string());
            let envs = match args.envs {
                1 => vec![args.env.to_string()],
                n => (0..n).map(name).collect::<Outcome<_>>()?,
            };
            let (release_id, _) = artifact(args, client, key.as_ref(), nonce).await?;
            (Job::Pin(envs, release_id), None)
        }
        Workload::Resolve => {
            let env = args.env.to_string();
            let span = match first_pin(client, &env).await? {
                Some(span) => span,
                None => {
                    // Pins one minute apart, the last one a minute ago.
                    let (release_id, _) = artifact(args, client, key.as_ref(), nonce).await?;
                    let now = Timestamp::now();
                    let ago = |minutes: i64| now.saturating_add_micros(-minutes * 60_000_000);
                    for minutes in (1..=SETUP_PINS).rev() {
                        let at = Some(ago(minutes));
                        let request = pin_request(&env, &release_id, at, "bench setup");
                        client.pin(request).await?;
                    }
                    (ago(SETUP_PINS).as_micros(), ago(1).as_micros())
                }
            };
            (Job::Resolve(env, span), None)
        }
        Workload::Fetch => {
            let (release_id, size) = artifact(args, client, key.as_ref(), nonce).await?;
            (Job::Fetch(release_id, size), Some(size))
        }
    })
}

async fn run(args: &Args, server: &stackpin_cli::client::Connection, format: Format) -> Outcome {
    if args.duration.is_zero() {
        return Err(Failure::invalid("--duration must be more than 0s"));
    }
    if let Some(stall) = args.stall {
        if !matches!(args.workload, Workload::Publish | Workload::Fetch) {
            return Err(Failure::invalid("--stall applies to publish and fetch"));
        }
        let _ = STALL.set(stall);
    }
    if args.workload == Workload::Publish && args.release_id.is_some() {
        return Err(Failure::invalid("--release-id does not apply to publish"));
    }
    if args.workload != Workload::Pin && args.envs > 1 {
        return Err(Failure::invalid("--envs applies to pin only"));
    }
    let key = match &args.key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| Failure::invalid(format!("reading key {}: {e}", path.display())))?;
            let key = signing::signing_key_from_pem(&pem);
            Some(key.map_err(|e| Failure::invalid(format!("key {}: {e}", path.display())))?)
        }
        None => None,
    };
    let server_pid = args.server_pid.map(|pid| pid.to_string());
    if let Some(pid) = &server_pid
        && cpu_seconds(pid).is_none()
    {
        return Err(Failure::invalid(format!(
            "--server-pid: cannot read /proc/{pid}/stat"
        )));
    }
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let seed = u64::from_le_bytes(random);
    let now_secs = Timestamp::now().as_micros() / 1_000_000;
    let nonce = format!("{now_secs:x}{:08x}", seed as u32);

    let mut client = stackpin_cli::client::connect(server).await?;
    let (job, size_bytes) = setup(args, &mut client, key, &nonce).await?;

    let measure_from = Instant::now() + args.warmup;
    let shared = Arc::new(Shared {
        job,
        measure_from,
        deadline: measure_from + args.duration,
        limit: args.requests,
        counter: AtomicU64::new(1),
        started: AtomicU64::new(0),
        pace: args
            .rate
            .map(|r| Duration::from_secs_f64(f64::from(args.concurrency) / f64::from(r))),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let spawn = |i| tokio::spawn(worker(shared.clone(), client.clone(), i, seed));
    let workers: Vec<_> = (0..args.concurrency as usize).map(spawn).collect();
    tokio::time::sleep_until(measure_from).await;
    let server_cpu = server_pid.as_deref().and_then(cpu_seconds);
    let client_cpu = cpu_seconds("self");
    let began = Instant::now();

    let progress = |done: bool| {
        let (ok, failed) = (shared.ok.load(Relaxed), shared.failed.load(Relaxed));
        let secs = began.elapsed().as_secs_f64();
        let rate = ok as f64 / secs.max(1e-9);
        let (name, done) = (args.workload.name(), if done { "done in " } else { "" });
        eprintln!("bench {name}: {done}{secs:.1}s  {ok} ok  {failed} errors  {rate:.0} req/s");
    };
    let tty = std::io::stderr().is_terminal();
    let mut joined = std::pin::pin!(futures::future::join_all(workers));
    let mut tick = tokio::time::interval_at(began + PROGRESS_EVERY, PROGRESS_EVERY);
    let results = loop {
        tokio::select! {
            results = &mut joined => break results,
            _ = tick.tick(), if tty => progress(false),
        }
    };
    let elapsed = began.elapsed().as_secs_f64();
    if !tty {
        progress(true);
    }
    let server = args
        .server_pid
        .and_then(|pid| ServerUsage::read(pid, server_cpu));
    if let (Some(pid), None) = (args.server_pid, &server) {
        eprintln!("warning: cannot read /proc/{pid} any more; no server usage to report");
    }
    let client_cpu_seconds = cpu_seconds("self")
        .zip(client_cpu)
        .map(|(c1, c0)| round3(c1 - c0));

    let mut all = Tally::default();
    for tally in results {
        let tally = tally.map_err(|e| anyhow::anyhow!("a load worker failed: {e}"))?;
        all.latencies.extend(tally.latencies);
        for (code, e) in tally.errors {
            all.add_error(code, e.count, e.example);
        }
    }
    all.latencies.sort_unstable();
    let requests_ok = all.latencies.len() as u64;
    let report = Report {
        workload: args.workload,
        concurrency: args.concurrency,
        size_bytes,
        requests_ok,
        errors: all.errors.values().map(|e| e.count).sum(),
        errors_by_code: all.errors,
        duration_seconds: round3(elapsed),
        throughput_rps: round3(requests_ok as f64 / elapsed.max(1e-9)),
        latency_ms: Latency::of(&all.latencies),
        server,
        client_cpu_seconds,
    };
    format.emit(&report, || report.text());
    Ok(())
}

/// Drive a running stackpin registry with load and report throughput,
/// latency and the server's CPU and memory.
#[derive(clap::Parser)]
#[command(name = "stackpin-bench", version, after_help = stackpin_cli::exit::HELP)]
struct Cli {
    #[command(flatten)]
    connection: stackpin_cli::client::Connection,
    /// Output for people (text) or scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(flatten)]
    args: Args,
}

fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    let cli = Cli::parse();
    stackpin_cli::run(run(&cli.args, &cli.connection, cli.output))
}
