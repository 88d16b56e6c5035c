//! A C2SP tlog-witness (<https://c2sp.org/tlog-witness>): `POST
//! /add-checkpoint` cosigns a checkpoint of a log it is configured to
//! trust once it has checked the log's signature and a consistency proof
//! from the last checkpoint it cosigned for that log. Teams that do not
//! trust each other each run one; a registry that showed two histories
//! would have to get both past the same witnesses, which refuse the second.
//!
//! A log's later epoch (`<name>/epoch/<n>`, begun by a promotion, signed
//! by the same key) is cosigned like a new log; from then on the witness
//! cosigns nothing more of an earlier epoch (410 Gone, naming the
//! promotion). So an old primary that returns learns of the promotion
//! from its witnesses, and no client with a policy accepts what it writes.
//!
//! Per origin it keeps the size and root it last cosigned in
//! `<data-dir>/state/<sha256 of the origin>`, written atomically (a file
//! synced, renamed, its folder synced) before it answers, under one lock
//! with the check, so two requests cannot roll it back. The two fsyncs of
//! that write run off the runtime.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

use crate::merkle::Hash;
use crate::note::{self, Checkpoint, NoteVerifier};
use stackpin_core::witness::{AddCheckpoint, Cosigner, MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE};

/// How long a client may take to send a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay open.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// How a refusal for a superseded epoch begins (after `410 Gone`), which
/// a registry recognises.
pub const PROMOTED: &str = "promoted";

/// What a witness last cosigned for one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latest {
    pub size: u64,
    pub root: Hash,
}

/// A witness: its key, the logs it trusts (by origin), and its state.
pub struct Witness {
    cosigner: Cosigner,
    logs: BTreeMap<String, NoteVerifier>,
    dir: PathBuf,
    /// Held across check and persist.
    lock: tokio::sync::Mutex<()>,
}

/// The answer to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: the cosignature line(s).
    Cosigned(String),
    /// 409: the size last cosigned.
    Conflict(u64),
    /// Another status, with a message.
    Refused(StatusCode, String),
}

impl Witness {
    /// A witness keeping its state in `dir`, trusting `logs`.
    ///
    /// # Errors
    /// When two logs share an origin, or `dir` cannot be created.
    pub fn new(cosigner: Cosigner, logs: Vec<NoteVerifier>, dir: &Path) -> anyhow::Result<Self> {
        let mut by_origin = BTreeMap::new();
        for log in logs {
            if let Some(other) = by_origin.insert(log.name().to_owned(), log) {
                anyhow::bail!("two --log keys for the origin {}", other.name());
            }
        }
        let dir = dir.join("state");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            cosigner,
            logs: by_origin,
            dir,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The witness's verifier key (cosignature/v1).
    pub fn vkey(&self) -> String {
        self.cosigner.key().vkey()
    }

    fn state_path(&self, origin: &str) -> PathBuf {
        self.dir
            .join(hex::encode(Sha256::digest(origin.as_bytes())))
    }

    /// What was last cosigned for `origin`.
    ///
    /// # Errors
    /// When the state file is unreadable or damaged.
    pub fn latest(&self, origin: &str) -> anyhow::Result<Option<Latest>> {
        let path = self.state_path(origin);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let cp =
            Checkpoint::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        anyhow::ensure!(
            cp.origin == origin,
            "{} is not the state of {origin}",
            path.display()
        );
        Ok(Some(Latest {
            size: cp.size,
            root: cp.root,
        }))
    }

    /// Where the newest epoch cosigned of the log `name` is kept.
    fn epoch_path(&self, name: &str) -> PathBuf {
        let mut path = self.state_path(name);
        path.set_extension("epoch");
        path
    }

    /// The newest epoch of the log `name` this witness cosigned (1 when it
    /// cosigned no later one).
    ///
    /// # Errors
    /// When the state file is unreadable or damaged.
    pub fn newest_epoch(&self, name: &str) -> anyhow::Result<u64> {
        Ok(self
            .newest_epoch_note(name)?
            .and_then(|n| note::origin_of(&n).map(|o| note::split_epoch(o).1))
            .unwrap_or(1))
    }

    /// The first checkpoint of the newest later epoch of the log `name`
    /// this witness cosigned, as the log signed it: what a refusal of an
    /// earlier epoch shows, so the refused registry can check it.
    ///
    /// # Errors
    /// When the state file is unreadable.
    fn newest_epoch_note(&self, name: &str) -> anyhow::Result<Option<String>> {
        match std::fs::read_to_string(self.epoch_path(name)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `cp` as what was last cosigned for its origin, off the
    /// runtime: two fsyncs, while the state lock is held.
    async fn persist(&self, cp: &Checkpoint) -> std::io::Result<()> {
        self.persist_text(self.state_path(&cp.origin), cp.body())
            .await
    }

    /// Writes `body` to `path` atomically and durably, off the runtime.
    async fn persist_text(&self, path: PathBuf, body: String) -> std::io::Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            tmp.write_all(body.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Handles one `add-checkpoint` request body.
    pub async fn add_checkpoint(&self, body: &str) -> Answer {
        let refuse = |status, why: String| Answer::Refused(status, why);
        let req = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e.message().to_owned()),
        };
        let Some(origin) = note::origin_of(&req.note) else {
            return refuse(StatusCode::BAD_REQUEST, "no checkpoint".into());
        };
        let (name, epoch) = note::split_epoch(origin);
        let Some(log) = self.logs.get(name) else {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("this witness does not know the log {origin}"),
            );
        };
        let cp = match Checkpoint::open(&req.note, log) {
            Ok(cp) => cp,
            Err(e) => return refuse(StatusCode::FORBIDDEN, e.message().to_owned()),
        };
        if req.old > cp.size {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "old size {} is beyond the checkpoint's {}",
                    req.old, cp.size
                ),
            );
        }
        let _held = self.lock.lock().await;
        let newest = match self.newest_epoch(name) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "reading the witness state failed");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "state unreadable".into());
            }
        };
        if epoch < newest {
            tracing::warn!(
                origin,
                size = cp.size,
                newest,
                "refused: the log was promoted to a later epoch"
            );
            // The later epoch's checkpoint goes with the refusal: the log's
            // own signature on it is what the refused registry believes.
            let shown = self
                .newest_epoch_note(name)
                .ok()
                .flatten()
                .unwrap_or_default();
            return refuse(
                StatusCode::GONE,
                format!(
                    "{PROMOTED}: the log {name} was promoted to epoch {newest} ({}); this \
                     witness cosigns nothing more of {origin}\n{shown}",
                    note::epoch_origin(name, newest)
                ),
            );
        }
        if epoch > newest + 1 {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{origin} is epoch {epoch}, but the newest epoch of {name} this witness \
                     cosigned is {newest}: epochs begin one at a time"
                ),
            );
        }
        let latest = match self.latest(origin) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "reading the witness state failed");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "state unreadable".into());
            }
        };
        let have = latest.map_or(0, |l| l.size);
        if req.old != have {
            return Answer::Conflict(have);
        }
        if let Some(l) = latest {
            if l.size == cp.size && l.root != cp.root {
                tracing::error!(
                    origin,
                    size = cp.size,
                    "EVIDENCE: two checkpoints of one size with different roots: {}",
                    req.note.replace('\n', "\\n")
                );
                return Answer::Conflict(have);
            }
            let cosigned = crate::note::Checkpoint {
                origin: cp.origin.clone(),
                size: l.size,
                root: l.root,
            };
            if cp.extends(&cosigned, &req.proof).is_err() {
                // Signed by the log and inconsistent with what it signed
                // before: evidence of a fork, kept in the log.
                tracing::error!(
                    origin,
                    old = l.size,
                    size = cp.size,
                    "EVIDENCE: a checkpoint inconsistent with the one cosigned before: {}",
                    req.note.replace('\n', "\\n")
                );
                return refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "the consistency proof from {} to {} does not verify",
                        l.size, cp.size
                    ),
                );
            }
        } else if !req.proof.is_empty() {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a proof from size 0 must be empty".into(),
            );
        }
        if let Err(e) = self.persist(&cp).await {
            tracing::error!(error = %e, "persisting the witness state failed");
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "state not stored".into());
        }
        if epoch > newest {
            // Kept before the answer: from now on the earlier epochs are
            // closed here.
            if let Err(e) = self
                .persist_text(self.epoch_path(name), req.note.clone())
                .await
            {
                tracing::error!(error = %e, "persisting the witness state failed");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "state not stored".into());
            }
            tracing::warn!(
                origin,
                newest = epoch,
                "a new epoch: earlier ones are closed"
            );
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tracing::info!(origin, size = cp.size, "cosigned");
        Answer::Cosigned(self.cosigner.cosign(&cp.body(), now))
    }
}

/// Serves `witness` on `listener` until the process ends, with the
/// registry's bounds on connections (see [`crate::guard`]).
pub async fn serve(listener: TcpListener, witness: Arc<Witness>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(vkey = %witness.vkey(), "witness listening on {addr}");
    }
    let acceptor = crate::guard::Acceptor::new(listener, crate::guard::ConnectionLimits::default());
    loop {
        let Ok(conn) = acceptor.accept().await else {
            continue;
        };
        let witness = witness.clone();
        tokio::spawn(async move {
            let started = conn.started();
            let service = hyper::service::service_fn(move |req| {
                started.mark();
                let witness = witness.clone();
                async move { Ok::<_, Infallible>(handle(&witness, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT);
            let serving = builder.serve_connection(TokioIo::new(conn), service);
            // No answer takes long: a connection lives a minute at most.
            let _ = tokio::time::timeout(MAX_CONNECTION_AGE, serving).await;
        });
    }
}

async fn handle(witness: &Witness, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/add-checkpoint" {
        return text(
            StatusCode::NOT_FOUND,
            "this witness serves POST /add-checkpoint\n",
        );
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let body = Limited::new(req.into_body(), MAX_REQUEST_BYTES);
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n"),
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request too slow\n"),
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the request is not UTF-8\n");
    };
    match witness.add_checkpoint(body).await {
        Answer::Cosigned(lines) => text(StatusCode::OK, &lines),
        Answer::Conflict(size) => {
            let mut r = text(StatusCode::CONFLICT, &format!("{size}\n"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(SIZE_CONTENT_TYPE),
            );
            r
        }
        Answer::Refused(status, why) => text(status, &format!("{why}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use stackpin_core::note::{NoteSigner, epoch_origin};

    fn signed(signer: &NoteSigner, epoch: u64, size: u64, seed: u8) -> String {
        signer.sign(
            &Checkpoint {
                origin: epoch_origin(signer.name(), epoch),
                size,
                root: Hash::from_slice(&[seed; 32]).unwrap(),
            }
            .body(),
        )
    }

    async fn add(witness: &Witness, old: u64, note: String) -> Answer {
        let body = AddCheckpoint {
            old,
            proof: Vec::new(),
            note,
        }
        .body();
        witness.add_checkpoint(&body).await
    }

    #[tokio::test]
    async fn a_later_epoch_closes_the_earlier_one_and_epochs_begin_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = NoteSigner::new(
            "t.example/log",
            ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
        )
        .unwrap();
        let cosigner = Cosigner::new(
            "w.example/w",
            ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
        )
        .unwrap();
        let witness = Witness::new(cosigner, vec![log.verifier()], dir.path()).unwrap();
        let cosigned = |a: &Answer| matches!(a, Answer::Cosigned(_));
        assert!(cosigned(&add(&witness, 0, signed(&log, 1, 5, 1)).await));
        // No jumping over an epoch.
        let jump = add(&witness, 0, signed(&log, 3, 9, 2)).await;
        assert!(
            matches!(&jump, Answer::Refused(StatusCode::UNPROCESSABLE_ENTITY, why) if why.contains("one at a time")),
            "{jump:?}"
        );
        // Epoch 2 is cosigned as a new log; from then on epoch 1 is
        // closed, and the refusal carries epoch 2's checkpoint as signed.
        let epoch2 = signed(&log, 2, 4, 3);
        assert!(cosigned(&add(&witness, 0, epoch2.clone()).await));
        assert_eq!(witness.newest_epoch("t.example/log").unwrap(), 2);
        match add(&witness, 5, signed(&log, 1, 6, 4)).await {
            Answer::Refused(StatusCode::GONE, why) => {
                assert!(why.starts_with(PROMOTED), "{why}");
                let shown = why.split_once('\n').unwrap().1;
                let cp = Checkpoint::open(shown, &log.verifier()).unwrap();
                assert_eq!((cp.epoch(), cp.size), (2, 4));
            }
            other => panic!("epoch 1 was not closed: {other:?}"),
        }
        // Kept across a restart.
        let again = Witness::new(
            Cosigner::new(
                "w.example/w",
                ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
            )
            .unwrap(),
            vec![log.verifier()],
            dir.path(),
        )
        .unwrap();
        assert_eq!(again.newest_epoch("t.example/log").unwrap(), 2);
    }
}
