//! Witness cosignatures (C2SP tlog-witness): after commits, each newly
//! signed checkpoint goes to every configured witness with a consistency
//! proof from the size that witness last cosigned; the cosignatures that
//! come back are served with the checkpoint they sign (GetCheckpoint, the
//! tiles `checkpoint`, the checkpoint of every resolve, so every
//! `.tlog-proof`). One task per witness, at most one submission per second
//! each, never on the write path: a slow or absent witness delays only its
//! own cosignature.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{Shared, SignedCheckpoint};
use crate::merkle::{self, Hash};
use stackpin_core::witness::{AddCheckpoint, CosignerKey};

/// At most one submission per witness in this interval.
pub const SUBMIT_EVERY: Duration = Duration::from_secs(1);
/// How long one submission may take.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a witness: cosignature lines are about a
/// hundred bytes each, and a 409 carries a number. Longer answers are a
/// failed submission, and what came beyond this is never held.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A witness the registry submits to.
#[derive(Clone, Debug)]
pub struct WitnessTarget {
    /// What logs and metrics call it.
    pub label: String,
    pub key: CosignerKey,
    /// The submission prefix: requests go to `<url>/add-checkpoint`.
    pub url: String,
}

/// The newest cosignature of one witness: on the tree of `size`, `root`.
#[derive(Clone, Debug)]
pub(super) struct Cosignature {
    size: u64,
    root: Hash,
    line: String,
}

/// The witnesses in force, each with the task submitting to it.
pub(super) type Running = std::sync::Mutex<Vec<(WitnessTarget, tokio::task::AbortHandle)>>;

/// The cosignatures collected so far, by witness label.
pub(super) type Cosignatures = std::sync::Mutex<std::collections::BTreeMap<String, Cosignature>>;

impl Shared {
    /// `cp` with the cosignatures collected for exactly its tree.
    pub(super) fn witnessed(&self, mut cp: SignedCheckpoint) -> SignedCheckpoint {
        let cosigs = self
            .cosignatures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lines: String = cosigs
            .values()
            .filter(|c| c.size == cp.size && c.root == cp.root)
            .map(|c| c.line.as_str())
            .collect();
        if !lines.is_empty() {
            cp.note = format!("{}{lines}", cp.note).into();
        }
        cp
    }
}

/// A configured witness, and the newest tree size it cosigned since the
/// registry started.
#[derive(Clone, Debug)]
pub struct WitnessStatus {
    pub label: String,
    pub vkey: String,
    pub cosigned: Option<u64>,
}

impl super::Registry {
    /// The configured witnesses and what each has cosigned.
    pub fn witness_status(&self) -> Vec<WitnessStatus> {
        let cosigs = self
            .shared
            .cosignatures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = self
            .shared
            .witnesses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        running
            .iter()
            .map(|(w, _)| WitnessStatus {
                label: w.label.clone(),
                vkey: w.key.vkey(),
                cosigned: cosigs.get(&w.label).map(|c| c.size),
            })
            .collect()
    }

    /// What the start-up check of the log found.
    pub fn start_check(&self) -> Option<super::StartCheck> {
        self.shared.start_check.get().cloned()
    }
}

enum Outcome {
    Cosigned(String),
    /// 409: the witness's size.
    Resync(u64),
    /// 410: the log was promoted to a later epoch; the witness's words,
    /// then the later epoch's checkpoint (checked by [`heard_promotion`]).
    Promoted(String),
    Failed(String),
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> Outcome {
    let sent = http
        .post(format!("{}/add-checkpoint", url.trim_end_matches('/')))
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let status = response.status();
    let text = match read_capped(response, MAX_REPLY_BYTES).await {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e),
    };
    match status.as_u16() {
        200 => Outcome::Cosigned(text),
        409 => match text.trim().parse() {
            Ok(size) => Outcome::Resync(size),
            Err(_) => Outcome::Failed(format!("409 without a size: {text:?}")),
        },
        410 if text.starts_with(crate::witness::PROMOTED) => Outcome::Promoted(text),
        _ => Outcome::Failed(format!("HTTP {status}: {}", text.trim())),
    }
}

/// How long a start waits for its witnesses to say whether the log was
/// promoted elsewhere.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Before a writer serves: asks each witness, with the checkpoint it
/// opened with, whether the log was promoted to a later epoch elsewhere,
/// so an old primary that returns learns it before it takes a write. (The
/// question is an ordinary submission from size 0: a witness that knows
/// the log answers with its size and changes nothing.) A witness that
/// does not answer within [`PROBE_TIMEOUT`] is not waited for: its task
/// tells later, and what was written meanwhile is in the loss window.
pub(super) async fn probe(shared: &Shared, witnesses: &[WitnessTarget], cp: &SignedCheckpoint) {
    if witnesses.is_empty() || cp.size == 0 {
        return;
    }
    let Ok(http) = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return;
    };
    let body = AddCheckpoint {
        old: 0,
        proof: Vec::new(),
        note: cp.note.to_string(),
    }
    .body();
    let asked = witnesses.iter().map(|w| {
        let (http, body) = (&http, body.clone());
        async move { (w.label.clone(), post(http, &w.url, body).await) }
    });
    for (label, outcome) in futures::future::join_all(asked).await {
        if let Outcome::Promoted(said) = outcome {
            heard_promotion(shared, &label, &said);
        }
    }
}

/// A witness said the log was promoted: believed only when the later
/// epoch's checkpoint it shows is signed by this log's key and is of a
/// later epoch than the one this registry signs in. Then this registry
/// writes nothing more. Returns whether it was believed.
fn heard_promotion(shared: &Shared, label: &str, said: &str) -> bool {
    let (words, note) = said.split_once('\n').unwrap_or((said, ""));
    let words = stackpin_core::error::shown(words);
    let note = note.strip_suffix('\n').unwrap_or(note);
    match super::log_key::supersede(shared, &format!("witness {label}"), note) {
        Ok(true) => {
            tracing::info!(witness = %label, said = %words, "what the witness said");
            true
        }
        _ => {
            tracing::warn!(
                witness = %label, said = %words,
                "a witness said the log was promoted, without a checkpoint of a later epoch \
                 signed by this log's key: not believed"
            );
            false
        }
    }
}

/// The body of `response` as text, refused once it passes `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<String, String> {
    let too_long = || format!("the answer is longer than {cap} bytes");
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > cap {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Submits the registry's checkpoints to `witness` as they are signed,
/// until the registry is dropped.
pub(super) async fn submit(
    shared: Weak<Shared>,
    mut rx: watch::Receiver<Option<SignedCheckpoint>>,
    witness: WitnessTarget,
) {
    let http = match reqwest::Client::builder()
        .timeout(SUBMIT_TIMEOUT)
        .connect_timeout(SUBMIT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(witness = %witness.label, error = %e, "no HTTP client for the witness");
            return;
        }
    };
    let label = witness.label.clone();
    // What the witness last cosigned, as far as this registry knows: 0
    // until it says otherwise (a 409 tells its size).
    let mut known: u64 = 0;
    // The tree this witness last cosigned for this registry.
    let mut cosigned: Option<(u64, Hash)> = None;
    while rx.changed().await.is_ok() {
        let Some(cp) = rx.borrow_and_update().clone() else {
            continue;
        };
        if cp.size == 0 || cosigned == Some((cp.size, cp.root)) {
            continue;
        }
        for _attempt in 0..3 {
            let Some(strong) = shared.upgrade() else {
                return;
            };
            if known > cp.size {
                tracing::warn!(
                    witness = %label, witness_size = known, size = cp.size,
                    "the witness has cosigned a larger tree than this registry signs: it is ahead \
                     (another replica) or saw another history"
                );
                break;
            }
            let proof = if known == 0 || known == cp.size {
                Vec::new()
            } else {
                match merkle::consistency_proof(&strong.index, known, cp.size) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(witness = %label, error = %e, "no consistency proof");
                        break;
                    }
                }
            };
            drop(strong);
            let request = AddCheckpoint {
                old: known,
                proof,
                note: cp.note.to_string(),
            };
            let started = std::time::Instant::now();
            match post(&http, &witness.url, request.body()).await {
                Outcome::Cosigned(lines) => {
                    let note = format!("{}{lines}", cp.note);
                    let Some(time) = witness.key.cosigned_at(&note) else {
                        tracing::warn!(witness = %label, "the witness answered without a valid cosignature");
                        break;
                    };
                    let line = lines
                        .lines()
                        .map(|l| format!("{l}\n"))
                        .find(|l| witness.key.cosigned_at(&format!("{}{l}", cp.note)) == Some(time))
                        .unwrap_or_default();
                    if let Some(shared) = shared.upgrade() {
                        shared
                            .cosignatures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(
                                label.clone(),
                                Cosignature {
                                    size: cp.size,
                                    root: cp.root,
                                    line,
                                },
                            );
                        // The stored checkpoint carries the cosignatures
                        // too, for offline audits under a policy (when it
                        // is still this tree).
                        let held = shared.store_lock.lock().await;
                        let witnessed = shared.witnessed(cp.clone());
                        let verifier = shared.signer.verifier();
                        let stored =
                            super::put_checkpoint(&shared.store, &verifier, &witnessed).await;
                        drop(held);
                        if let Err(e) = stored {
                            tracing::warn!(error = %e, "storing the cosigned checkpoint failed");
                        }
                    }
                    known = cp.size;
                    cosigned = Some((cp.size, cp.root));
                    metrics::gauge!("stackpin_witness_cosigned_size", "witness" => label.clone())
                        .set(cp.size as f64);
                    metrics::histogram!("stackpin_witness_seconds", "witness" => label.clone())
                        .record(started.elapsed().as_secs_f64());
                    break;
                }
                Outcome::Resync(size) if size == known => {
                    // Our proof started at its size and it still refuses:
                    // it has cosigned another tree of that size.
                    metrics::counter!("stackpin_witness_failures_total", "witness" => label.clone())
                        .increment(1);
                    tracing::error!(
                        witness = %label, size = cp.size, witness_size = size,
                        "the witness has cosigned another tree of size {size} than this \
                         registry's: the log was forked or shows another history (see the \
                         runbook: a witness refuses the log)"
                    );
                    break;
                }
                Outcome::Resync(size) => {
                    tracing::info!(witness = %label, witness_size = size, "resending from the witness's size");
                    known = size;
                }
                Outcome::Promoted(said) => {
                    let believed = shared
                        .upgrade()
                        .is_some_and(|shared| heard_promotion(&shared, &label, &said));
                    if believed {
                        return;
                    }
                    metrics::counter!("stackpin_witness_failures_total", "witness" => label.clone())
                        .increment(1);
                    break;
                }
                Outcome::Failed(why) => {
                    metrics::counter!("stackpin_witness_failures_total", "witness" => label.clone())
                        .increment(1);
                    tracing::warn!(witness = %label, size = cp.size, error = %why, "the witness did not cosign; the next checkpoint is tried");
                    break;
                }
            }
        }
        tokio::time::sleep(SUBMIT_EVERY).await;
    }
}

/// Makes `witnesses` the ones submitted to: a witness no longer listed
/// has its task stopped and its cosignatures dropped; a new one gets a
/// task; one listed before and now (same name, key and URL) keeps its
/// task and what it has cosigned. Returns the names started and stopped.
pub(super) fn replace(
    shared: &Arc<Shared>,
    witnesses: Vec<WitnessTarget>,
) -> (Vec<String>, Vec<String>) {
    let same = |a: &WitnessTarget, b: &WitnessTarget| {
        a.label == b.label && a.url == b.url && a.key.vkey() == b.key.vkey()
    };
    let mut running = shared
        .witnesses
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut stopped = Vec::new();
    running.retain(|(w, task)| {
        let kept = witnesses.iter().any(|n| same(n, w));
        if !kept {
            task.abort();
            stopped.push(w.label.clone());
        }
        kept
    });
    if !stopped.is_empty() {
        let mut cosigs = shared
            .cosignatures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for label in &stopped {
            cosigs.remove(label);
        }
    }
    let mut started = Vec::new();
    for w in witnesses {
        if running.iter().any(|(r, _)| same(r, &w)) {
            continue;
        }
        let task = tokio::spawn(submit(
            Arc::downgrade(shared),
            shared.stored.subscribe(),
            w.clone(),
        ));
        started.push(w.label.clone());
        running.push((w, task.abort_handle()));
    }
    (started, stopped)
}
