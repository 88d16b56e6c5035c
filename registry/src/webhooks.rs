//! Webhooks: each configured endpoint receives a CloudEvents 1.0 event for
//! every log entry it asks for (publish, pin, key change), signed with the
//! log's key (see [`stackpin_core::webhook`]), at least once, in log order.
//!
//! Durable: each endpoint has a cursor in storage (`webhooks/cursor/<name>`,
//! the next log index to deliver), written after each delivery, so a
//! restart resumes where the last acknowledged delivery ended. A delivery
//! acknowledged just before a crash may be sent again (the event id is the
//! same, so receivers drop repeats); none is skipped. A new endpoint starts
//! at the log's size when it is first seen.
//!
//! One sender per bucket: replicas sharing storage take a lease, objects
//! `webhooks/lease/<epoch>` created once each (the same create-only write
//! the log relies on, so two replicas can never both win an epoch), kept
//! alive by a heartbeat. A replica takes the next epoch only when the
//! holder's heartbeat is older than [`LEASE_TTL`]. The holder checks every
//! [`HEARTBEAT`] that no newer epoch exists, and stops sending when one
//! does; a holder paused past the TTL may send one event the new holder
//! also sends (at least once, never skipped). A replica keeps its holder id
//! in its data folder, so after a restart it recognises its own lease at
//! once.
//!
//! Failures: any answer but 2xx is retried with doubling delays (0.5 s up
//! to a minute), indefinitely; a failing endpoint delays only itself.
//! Redirects are not followed: a 3xx is a failed delivery (the signed event
//! goes only to the configured URL). Only the status of an answer is read,
//! never its body, so a receiver cannot make the registry hold anything. The
//! delivery log is in metrics (`stackpin_webhook_*`) and on the web view's
//! log page.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::log::Entry;
use crate::registry::Registry;
use crate::time::Timestamp;
use stackpin_core::layout;
use stackpin_core::webhook;

/// A holder whose heartbeat is older than this has lost the lease.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often the holder beats, and others look.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A `[[webhook]]` table of the settings: an endpoint that receives
/// events. Webhooks own their settings, as auth owns its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// What logs, metrics and the web view call it; also names its cursor
    /// in storage, so renaming it starts it afresh.
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Only entries of these types: publish, pin, key, snapshot, drill
    /// [default: all].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Only pins, snapshots and drills of these environments (publishes
    /// and key changes are not filtered) [default: all].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<String>,
}

/// A configured endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    types: Vec<String>,
    envs: Vec<EnvName>,
}

impl Endpoint {
    /// The endpoint a `[[webhook]]` table describes.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn new(c: &WebhookConfig) -> std::result::Result<Self, String> {
        let plain = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(format!(
                "name {:?}: letters, digits, '-' and '_', at most 64",
                c.name
            ));
        }
        if !c.url.starts_with("http://") && !c.url.starts_with("https://") {
            return Err(format!(
                "{}: url {:?} is not http:// or https://",
                c.name, c.url
            ));
        }
        for t in &c.types {
            Entry::check_kind(t).map_err(|e| format!("{}: type {}", c.name, e.message()))?;
        }
        let envs = c
            .envs
            .iter()
            .map(|e| e.parse::<EnvName>().map_err(|e| format!("{}: {e}", c.name)))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self {
            name: c.name.clone(),
            url: c.url.clone(),
            types: c.types.clone(),
            envs,
        })
    }

    fn wants(&self, entry: &Entry) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| t == entry.kind()) {
            return false;
        }
        match entry.env() {
            Some(env) => self.envs.is_empty() || self.envs.contains(env),
            None => true,
        }
    }
}

/// What one endpoint's deliveries have done, for metrics and the web view.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointStatus {
    /// The next log index to deliver.
    pub cursor: u64,
    /// Events delivered since the registry started.
    pub delivered: u64,
    /// Failed attempts in a row (0 once one succeeds).
    pub failures: u64,
    /// What the last attempt got: an HTTP status or an error.
    pub last_answer: Option<String>,
    pub last_delivered_at: Option<Timestamp>,
}

/// The state of every endpoint, and whether this replica sends.
#[derive(Debug, Default)]
pub struct Deliveries {
    sending: AtomicBool,
    endpoints: Mutex<BTreeMap<String, EndpointStatus>>,
}

impl Deliveries {
    /// Whether this replica holds the lease and sends; and each endpoint.
    pub fn snapshot(&self) -> (bool, Vec<(String, EndpointStatus)>) {
        let eps = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            self.sending.load(Ordering::Acquire),
            eps.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut EndpointStatus)) {
        let mut eps = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(eps.entry(name.to_owned()).or_default());
    }
}

/// The holder id of the replica whose data folder is `data_dir`, made on
/// first use.
///
/// # Errors
/// When the file cannot be read or written.
pub fn holder_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let path = data_dir.join("webhook-holder");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_owned());
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for an id: {e}"))?;
    let id = hex::encode(bytes);
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, format!("{id}\n")))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The webhook tasks of a replica: the lease task (while any endpoint is
/// configured) and one delivery task per endpoint; replaced by a reload.
pub struct Webhooks {
    registry: Arc<Registry>,
    holder: String,
    deliveries: Arc<Deliveries>,
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    lease: Option<(tokio::task::AbortHandle, watch::Receiver<bool>)>,
    endpoints: Vec<(Endpoint, tokio::task::AbortHandle)>,
}

impl Webhooks {
    /// Starts delivering to `endpoints` (none: nothing runs until a
    /// reload configures some) as the replica `holder`.
    pub fn start(registry: Arc<Registry>, endpoints: Vec<Endpoint>, holder: String) -> Self {
        let hooks = Self {
            registry,
            holder,
            deliveries: Arc::default(),
            tasks: Mutex::default(),
        };
        if !endpoints.is_empty() {
            let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
            tracing::info!(webhooks = ?names, holder = %hooks.holder, "webhooks configured");
        }
        hooks.replace(endpoints);
        hooks
    }

    /// What each endpoint's deliveries have done, for the web view.
    pub fn deliveries(&self) -> Arc<Deliveries> {
        self.deliveries.clone()
    }

    /// Makes `endpoints` the ones delivered to: an endpoint no longer
    /// configured (or configured differently) has its task stopped, a new
    /// one starts from its stored cursor; unchanged ones go on. Returns
    /// the names started and stopped.
    pub fn replace(&self, endpoints: Vec<Endpoint>) -> (Vec<String>, Vec<String>) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stopped = Vec::new();
        tasks.endpoints.retain(|(e, task)| {
            let kept = endpoints.contains(e);
            if !kept {
                task.abort();
                stopped.push(e.name.clone());
            }
            kept
        });
        if !stopped.is_empty() {
            let mut eps = self
                .deliveries
                .endpoints
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in &stopped {
                eps.remove(name);
            }
        }
        if endpoints.is_empty() {
            // Nothing to send: the lease is left to expire for a replica
            // that has endpoints.
            if let Some((task, _)) = tasks.lease.take() {
                task.abort();
                self.deliveries.sending.store(false, Ordering::Release);
            }
            return (Vec::new(), stopped);
        }
        let held = match &tasks.lease {
            Some((_, held)) => held.clone(),
            None => {
                let (held_tx, held_rx) = watch::channel(false);
                let task = tokio::spawn(lease(
                    self.registry.clone(),
                    self.holder.clone(),
                    held_tx,
                    self.deliveries.clone(),
                ));
                tasks.lease = Some((task.abort_handle(), held_rx.clone()));
                held_rx
            }
        };
        let mut started = Vec::new();
        for e in endpoints {
            if tasks.endpoints.iter().any(|(r, _)| *r == e) {
                continue;
            }
            let task = tokio::spawn(deliver(
                self.registry.clone(),
                e.clone(),
                held.clone(),
                self.deliveries.clone(),
            ));
            started.push(e.name.clone());
            tasks.endpoints.push((e, task.abort_handle()));
        }
        (started, stopped)
    }
}

async fn read_text(store: &dyn ObjectStore, key: &str) -> Result<Option<String>> {
    match store.get(&Path::from(key)).await {
        Ok(r) => Ok(Some(
            String::from_utf8_lossy(&r.bytes().await?).into_owned(),
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write_text(
    store: &dyn ObjectStore,
    key: String,
    text: String,
    mode: PutMode,
) -> Result<bool> {
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match store
        .put_opts(
            &Path::from(key.as_str()),
            PutPayload::from(Bytes::from(text)),
            opts,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn newest_epoch(store: &dyn ObjectStore) -> Result<Option<u64>> {
    use futures::TryStreamExt as _;
    let prefix = Path::from(layout::WEBHOOK_LEASES);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    Ok(metas
        .iter()
        .filter_map(|m| {
            m.location
                .filename()
                .and_then(layout::parse_webhook_lease_name)
        })
        .max())
}

/// One look at the lease: whether this replica holds it now.
async fn lease_round(registry: &Registry, me: &str) -> Result<bool> {
    let store = registry.store();
    let store = store.as_ref();
    let now = registry.now().as_micros();
    let beat = |epoch: u64| {
        write_text(
            store,
            layout::webhook_heartbeat_key(epoch),
            format!("{now}\n"),
            PutMode::Overwrite,
        )
    };
    let take = |epoch: u64| {
        write_text(
            store,
            layout::webhook_lease_key(epoch),
            format!("{me}\n"),
            PutMode::Create,
        )
    };
    let Some(epoch) = newest_epoch(store).await? else {
        let won = take(1).await?;
        if won {
            beat(1).await?;
        }
        return Ok(won);
    };
    let holder = read_text(store, &layout::webhook_lease_key(epoch))
        .await?
        .unwrap_or_default();
    if holder.trim() == me {
        beat(epoch).await?;
        return Ok(true);
    }
    let last = read_text(store, &layout::webhook_heartbeat_key(epoch))
        .await?
        .and_then(|t| t.trim().parse::<i64>().ok());
    let stale = match last {
        Some(t) => now - t > crate::timeline::micros(LEASE_TTL),
        // A holder that never beat: take over once its lease is old.
        None => match store
            .head(&Path::from(layout::webhook_lease_key(epoch)))
            .await
        {
            Ok(meta) => {
                (registry.now().as_micros() - meta.last_modified.timestamp_micros())
                    > crate::timeline::micros(LEASE_TTL)
            }
            Err(_) => false,
        },
    };
    if !stale {
        return Ok(false);
    }
    let won = take(epoch + 1).await?;
    if won {
        tracing::warn!(
            epoch = epoch + 1,
            previous_holder = %holder.trim(),
            "the webhook sender's heartbeat stopped: this replica sends webhooks from now on"
        );
        beat(epoch + 1).await?;
    }
    Ok(won)
}

async fn lease(
    registry: Arc<Registry>,
    me: String,
    held: watch::Sender<bool>,
    deliveries: Arc<Deliveries>,
) {
    let mut last_ok = std::time::Instant::now();
    loop {
        let now_held = match lease_round(&registry, &me).await {
            Ok(h) => {
                last_ok = std::time::Instant::now();
                h
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check the webhook lease in storage");
                // Without storage for a TTL, another replica may have
                // taken over: stop sending.
                *held.borrow() && last_ok.elapsed() < LEASE_TTL
            }
        };
        if now_held != *held.borrow() {
            if now_held {
                tracing::info!("this replica sends the webhooks");
            } else {
                tracing::info!("another replica holds the webhook lease: not sending");
            }
        }
        held.send_replace(now_held);
        deliveries.sending.store(now_held, Ordering::Release);
        metrics::gauge!("stackpin_webhook_sender").set(if now_held { 1.0 } else { 0.0 });
        tokio::time::sleep(HEARTBEAT).await;
    }
}

async fn load_cursor(registry: &Registry, name: &str) -> Result<u64> {
    let key = layout::webhook_cursor_key(name);
    match read_text(registry.store().as_ref(), &key).await? {
        Some(text) => text.trim().parse::<u64>().map_err(|_| {
            Error::new(
                crate::error::Kind::DataLoss,
                format!("{key} holds {text:?}, not a log index"),
            )
        }),
        None => {
            let size = registry.checkpoint()?.size;
            save_cursor(registry, name, size).await?;
            tracing::info!(webhook = %name, from = size, "a new webhook: events from log index {size} on");
            Ok(size)
        }
    }
}

async fn save_cursor(registry: &Registry, name: &str, cursor: u64) -> Result<()> {
    write_text(
        registry.store().as_ref(),
        layout::webhook_cursor_key(name),
        format!("{cursor}\n"),
        PutMode::Overwrite,
    )
    .await
    .map(drop)
}

fn backoff(failures: u64) -> Duration {
    let shift = u32::try_from(failures.saturating_sub(1).min(16)).unwrap_or(16);
    (Duration::from_millis(500) * 2u32.pow(shift)).min(MAX_BACKOFF)
}

async fn attempt(
    http: &reqwest::Client,
    registry: &Registry,
    url: &str,
    id: &str,
    body: &Bytes,
) -> std::result::Result<u16, String> {
    let timestamp = registry.now().to_parts().0;
    let signature = registry
        .sign_webhook(id, timestamp, body)
        .map_err(|e| e.to_string())?;
    let sent = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, webhook::CONTENT_TYPE)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(sent.status().as_u16())
}

async fn deliver(
    registry: Arc<Registry>,
    ep: Endpoint,
    mut held: watch::Receiver<bool>,
    deliveries: Arc<Deliveries>,
) {
    // A redirect is an answer, not a delivery: following it would send the
    // signed event to an address nobody configured.
    let http = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(webhook = %ep.name, error = %e, "no HTTP client: webhook off");
            return;
        }
    };
    let mut commits = registry.commits();
    let mut cursor: Option<u64> = None;
    let mut failures = 0u64;
    loop {
        if !*held.borrow_and_update() {
            cursor = None; // another replica may move it meanwhile
            let _ = tokio::time::timeout(HEARTBEAT, held.changed()).await;
            continue;
        }
        let c = match cursor {
            Some(c) => c,
            None => match load_cursor(&registry, &ep.name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(webhook = %ep.name, error = %e, "could not read the webhook cursor");
                    tokio::time::sleep(HEARTBEAT).await;
                    continue;
                }
            },
        };
        cursor = Some(c);
        deliveries.update(&ep.name, |s| s.cursor = c);
        metrics::gauge!("stackpin_webhook_cursor", "webhook" => ep.name.clone()).set(c as f64);
        commits.borrow_and_update();
        let size = match registry.checkpoint() {
            Ok(cp) => cp.size,
            Err(_) => {
                tokio::time::sleep(HEARTBEAT).await;
                continue;
            }
        };
        metrics::gauge!("stackpin_webhook_behind", "webhook" => ep.name.clone())
            .set(size.saturating_sub(c) as f64);
        if c >= size {
            tokio::select! {
                _ = commits.changed() => {}
                _ = held.changed() => {}
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            continue;
        }
        let entry = match registry
            .entry(c)
            .await
            .and_then(|b| Ok(Entry::parse(c, &b)?))
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(webhook = %ep.name, index = c, error = %e, "could not read the entry to send");
                tokio::time::sleep(HEARTBEAT).await;
                continue;
            }
        };
        if ep.wants(&entry) {
            let origin = registry.origin();
            let id = webhook::event_id(&origin, c);
            let body = Bytes::from(webhook::event(&origin, c, &entry).to_string());
            loop {
                if !*held.borrow() {
                    break;
                }
                let answer = attempt(&http, &registry, &ep.url, &id, &body).await;
                let ok = matches!(answer, Ok(s) if (200..300).contains(&s));
                let text = match &answer {
                    Ok(s) => format!("HTTP {s}"),
                    Err(e) => e.clone(),
                };
                let outcome = if ok { "delivered" } else { "failed" };
                metrics::counter!("stackpin_webhook_attempts_total", "webhook" => ep.name.clone(), "outcome" => outcome)
                    .increment(1);
                if ok {
                    failures = 0;
                    deliveries.update(&ep.name, |s| {
                        s.delivered += 1;
                        s.failures = 0;
                        s.last_answer = Some(text);
                        s.last_delivered_at = Some(registry.now());
                    });
                    break;
                }
                failures += 1;
                deliveries.update(&ep.name, |s| {
                    s.failures = failures;
                    s.last_answer = Some(text.clone());
                });
                let wait = backoff(failures);
                tracing::warn!(
                    webhook = %ep.name, index = c, attempt = failures, answer = %text,
                    retry_in = ?wait, "a webhook delivery failed; it is retried"
                );
                tokio::time::sleep(wait).await;
            }
            if !*held.borrow() {
                continue; // not delivered here: the new holder sends it
            }
        }
        let next = c + 1;
        cursor = Some(next);
        // After a delivery, always; after skipped entries, when caught up
        // or every 64, so a restart re-reads little.
        if (ep.wants(&entry) || next == size || next % 64 == 0)
            && let Err(e) = save_cursor(&registry, &ep.name, next).await
        {
            tracing::warn!(webhook = %ep.name, error = %e, "could not store the webhook cursor; an event may be sent again after a restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn endpoints_are_checked_and_filter() {
        let c = |name: &str, url: &str, types: &[&str], envs: &[&str]| WebhookConfig {
            name: name.into(),
            url: url.into(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            envs: envs.iter().map(|t| (*t).to_owned()).collect(),
        };
        assert!(Endpoint::new(&c("a b", "http://x", &[], &[])).is_err());
        assert!(Endpoint::new(&c("a", "ftp://x", &[], &[])).is_err());
        assert!(Endpoint::new(&c("a", "http://x", &["pins"], &[])).is_err());
        assert!(Endpoint::new(&c("a", "http://x", &[], &["../x"])).is_err());
        assert!(Endpoint::new(&c("deployer", "https://x/hook", &["pin"], &["prod"])).is_ok());
    }
}
