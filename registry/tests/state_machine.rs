//! The registry's state machine over an in-memory store with a fake clock:
//! publish and pin rules, every rejected input writing nothing, resolve
//! against a naive model, and rebuilding the index from the log.
//!
//! Long because it drives the state machine through every rule in one
//! place, sharing one fixture.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;
use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, Reason, ReleaseId};
use stackpin_core::note::{DEFAULT_ORIGIN, NoteSigner};
use stackpin_core::signing::{self, PublicKey, TrustedKeys};
use stackpin_core::time::{Clock, Timestamp};
use stackpin_registry::index::Index;
use stackpin_registry::registry::{
    ArtifactRef, HistoryQuery, Limits, Options, PinRequest, Published,
};
use stackpin_registry::{Kind, Registry};

struct FakeClock(AtomicI64);

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst)).unwrap()
    }
}

const SECOND: i64 = 1_000_000;
/// 2026-01-01T00:00:00Z.
const EPOCH: i64 = 1_767_225_600 * SECOND;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_micros(EPOCH + secs * SECOND).unwrap()
}

fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

struct Fixture {
    store: Arc<InMemory>,
    clock: Arc<FakeClock>,
    registry: Registry,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_limits(Limits {
            max_artifact_bytes: 4096,
            ..Limits::default()
        })
        .await
    }

    async fn with_limits(limits: Limits) -> Self {
        let store = Arc::new(InMemory::new());
        let clock = Arc::new(FakeClock(AtomicI64::new(EPOCH + 1_000_000 * SECOND)));
        let registry = open(store.clone(), clock.clone(), limits).await;
        Self {
            store,
            clock,
            registry,
        }
    }

    async fn publish(&self, release: &str, body: &[u8]) -> stackpin_registry::Result<Published> {
        let rid: ReleaseId = release.parse()?;
        let env = signing::sign_envelope(
            &signing::publish_statement(&rid, &Digest::of(body)),
            &publisher(),
        );
        self.publish_with(release, &env, body).await
    }

    async fn publish_with(
        &self,
        release: &str,
        envelope: &[u8],
        body: &[u8],
    ) -> stackpin_registry::Result<Published> {
        let mut p = self
            .registry
            .begin_publish(release, "", envelope, body.len() as u64)
            .await?;
        for chunk in body.chunks(7) {
            p.push(bytes::Bytes::copy_from_slice(chunk)).await?;
        }
        self.registry.finish_publish(p).await
    }

    async fn pin(
        &self,
        env: &str,
        release: &str,
        at: Option<Timestamp>,
    ) -> stackpin_registry::Result<u64> {
        let env: EnvName = env.parse()?;
        let what = ArtifactRef::Release(release.parse()?);
        let p = self
            .registry
            .pin(&env, &what, at, None, &Reason::default(), "tester")
            .await?;
        Ok(p.entry.seq)
    }

    async fn object_count(&self) -> usize {
        use futures::TryStreamExt;
        self.store
            .list(None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len()
    }
}

async fn open(store: Arc<InMemory>, clock: Arc<FakeClock>, limits: Limits) -> Registry {
    let trusted = TrustedKeys::new([PublicKey::new(publisher().verifying_key())]);
    Registry::open(
        Index::temporary().unwrap(),
        Options {
            trusted,
            limits,
            clock,
            ..Options::new(store, log_signer())
        },
    )
    .await
    .unwrap()
}

fn log_signer() -> NoteSigner {
    NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[5; 32])).unwrap()
}

#[tokio::test]
async fn an_entry_too_long_for_a_tile_bundle_is_refused_and_nothing_is_logged() {
    let f = Fixture::new().await;
    let body = br#"{"v":1}"#;
    let rid: ReleaseId = "big".parse().unwrap();
    let small = signing::sign_envelope(
        &signing::publish_statement(&rid, &Digest::of(body)),
        &publisher(),
    );
    // The same valid signature, repeated: an envelope within its own limit
    // whose log entry would not fit a uint16 length prefix.
    let mut envelope: serde_json::Value = serde_json::from_slice(&small).unwrap();
    let signature = envelope["signatures"][0].clone();
    let mut big = envelope.clone();
    let mut count = 1;
    while serde_json::to_vec(&big).unwrap().len() < signing::MAX_ENVELOPE_BYTES - 300 {
        count += 1;
        big["signatures"] = serde_json::Value::Array(vec![signature.clone(); count]);
    }
    envelope["signatures"] = serde_json::Value::Array(vec![signature; count / 2]);
    let fits = serde_json::to_vec(&envelope).unwrap();
    let too_long = serde_json::to_vec(&big).unwrap();
    assert!(too_long.len() <= signing::MAX_ENVELOPE_BYTES);
    let before = f.registry.latest_checkpoint().await.unwrap().size;
    let err = f.publish_with("big", &too_long, body).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Invalid, "{err}");
    assert!(err.message().contains("at most 65535"), "{err}");
    assert_eq!(f.registry.latest_checkpoint().await.unwrap().size, before);
    // Half as many signatures fit: the refusal was the entry's size.
    let p = f.publish_with("big", &fits, body).await.unwrap();
    assert!(p.created);
    assert_eq!(
        f.registry.latest_checkpoint().await.unwrap().size,
        before + 1
    );
}

#[tokio::test]
async fn publish_is_write_once_per_release_id() {
    let f = Fixture::new().await;
    let first = f.publish("r1", br#"{"v":1}"#).await.unwrap();
    assert!(first.created);
    let again = f.publish("r1", br#"{"v":1}"#).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.artifact, first.artifact);
    let err = f.publish("r1", br#"{"v":2}"#).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Conflict);
    assert!(
        err.message().contains(&first.artifact.digest.to_string()),
        "{err}"
    );
    // The same bytes under another release id are a new, separate binding.
    assert!(f.publish("r2", br#"{"v":1}"#).await.unwrap().created);
    let record = f
        .registry
        .artifact(&ArtifactRef::Release("r1".parse().unwrap()))
        .unwrap();
    use futures::StreamExt as _;
    let chunks: Vec<_> = f
        .registry
        .artifact_stream(&record, 3)
        .await
        .unwrap()
        .collect()
        .await;
    let stored: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(&stored[..], br#"{"v":1}"#);
}

#[tokio::test]
async fn every_rejected_publish_writes_nothing() {
    let f = Fixture::new().await;
    f.publish("base", b"{}").await.unwrap();
    let before = f.object_count().await;
    let rid: ReleaseId = "r1".parse().unwrap();
    let body = br#"{"ok":true}"#;
    let good = signing::sign_envelope(
        &signing::publish_statement(&rid, &Digest::of(body)),
        &publisher(),
    );
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let untrusted = signing::sign_envelope(
        &signing::publish_statement(&rid, &Digest::of(body)),
        &stranger,
    );
    let mut tampered: serde_json::Value = serde_json::from_slice(&good).unwrap();
    tampered["signatures"][0]["sig"] = base64_of(&[0u8; 64]).into();
    let tampered = serde_json::to_vec(&tampered).unwrap();
    let other_subject = signing::sign_envelope(
        &signing::publish_statement(&"r9".parse().unwrap(), &Digest::of(body)),
        &publisher(),
    );
    let sign_for = |bytes: &[u8]| {
        signing::sign_envelope(
            &signing::publish_statement(&rid, &Digest::of(bytes)),
            &publisher(),
        )
    };
    let big = format!("[{}]", "1,".repeat(3000) + "1");
    // (what, release id, envelope, bytes, expected kind, message mentions)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Vec<u8>, Kind, &'a str);
    let cases: Vec<Case> = vec![
        (
            "empty",
            "r1",
            sign_for(b""),
            b"".to_vec(),
            Kind::Invalid,
            "empty",
        ),
        (
            "not json",
            "r1",
            sign_for(b"{nope"),
            b"{nope".to_vec(),
            Kind::Invalid,
            "not strict JSON",
        ),
        (
            "too large",
            "r1",
            sign_for(big.as_bytes()),
            big.clone().into_bytes(),
            Kind::TooLarge,
            "limit",
        ),
        (
            "untrusted key",
            "r1",
            untrusted,
            body.to_vec(),
            Kind::Invalid,
            "does not verify",
        ),
        (
            "bad signature",
            "r1",
            tampered,
            body.to_vec(),
            Kind::Invalid,
            "does not verify",
        ),
        (
            "digest mismatch",
            "r1",
            good.clone(),
            br#"{"ok":false}"#.to_vec(),
            Kind::Invalid,
            "hash to",
        ),
        (
            "subject names another release",
            "r1",
            other_subject,
            body.to_vec(),
            Kind::Invalid,
            "subject",
        ),
        (
            "bad release id",
            "../r1",
            good.clone(),
            body.to_vec(),
            Kind::Invalid,
            "release id",
        ),
        (
            "not an envelope",
            "r1",
            b"{}".to_vec(),
            body.to_vec(),
            Kind::Invalid,
            "DSSE",
        ),
    ];
    for (what, release, envelope, bytes, kind, needle) in cases {
        let err = f
            .publish_with(release, &envelope, &bytes)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert!(err.message().contains(needle), "{what}: {err}");
        assert_eq!(f.object_count().await, before, "{what} wrote something");
    }
    // An announced size over the limit is refused before any byte is sent.
    let err = f
        .registry
        .begin_publish("r1", "", &good, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::TooLarge);
    // A conflicting release id is refused at the header, before the bytes.
    let base_other = signing::sign_envelope(
        &signing::publish_statement(&"base".parse().unwrap(), &Digest::of(b"[]")),
        &publisher(),
    );
    let err = f
        .registry
        .begin_publish("base", "", &base_other, 2)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Conflict);
    assert_eq!(f.object_count().await, before);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn pins_are_contiguous_chained_and_never_go_back_in_time() {
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    f.publish("r2", b"[2]").await.unwrap();
    assert_eq!(f.pin("prod", "r1", Some(t(10))).await.unwrap(), 1);
    assert_eq!(
        f.pin("prod", "r2", Some(t(10))).await.unwrap(),
        2,
        "equal instants are allowed"
    );
    assert_eq!(
        f.pin("staging", "r2", Some(t(5))).await.unwrap(),
        1,
        "per-environment order"
    );
    let before = f.object_count().await;

    let err = f.pin("prod", "r1", Some(t(9))).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Precondition);
    let now = f.clock.now();
    let err = f
        .pin(
            "prod",
            "r1",
            Some(now.saturating_add_micros(5 * SECOND + 1)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Precondition, "{err}");
    let err = f.pin("prod", "nope", None).await.unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound);
    assert_eq!(
        f.object_count().await,
        before,
        "rejected pins wrote nothing"
    );

    // Within the skew is fine; the default is the registry's clock.
    assert_eq!(
        f.pin("prod", "r1", Some(now.saturating_add_micros(5 * SECOND)))
            .await
            .unwrap(),
        3
    );
    f.clock.0.fetch_add(60 * SECOND, Ordering::SeqCst);
    assert_eq!(f.pin("prod", "r2", None).await.unwrap(), 4);
    let env: EnvName = "prod".parse().unwrap();
    let page = f.registry.history(&env, &HistoryQuery::default()).unwrap();
    let seqs: Vec<u64> = page.pins.iter().map(|p| p.entry.seq).collect();
    assert_eq!(seqs, vec![4, 3, 2, 1]);
    assert_eq!(page.pins[0].entry.activated_at, f.clock.now());
    assert_eq!(page.pins[3].entry.prev_pin, None);
    for w in page.pins.windows(2) {
        assert_eq!(
            w[0].entry.prev_pin.as_deref(),
            Some(w[1].entry_hash.hex().as_str())
        );
    }
    assert!(page.pins.iter().all(|p| p.entry.actor == "tester"));
}

#[tokio::test]
async fn resolve_answers_intervals_boundaries_and_before_the_first_pin() {
    let f = Fixture::new().await;
    for r in ["r1", "r2", "r3"] {
        f.publish(r, format!("\"{r}\"").as_bytes()).await.unwrap();
    }
    f.pin("prod", "r1", Some(t(100))).await.unwrap();
    f.pin("prod", "r2", Some(t(200))).await.unwrap();
    f.pin("prod", "r3", Some(t(300))).await.unwrap();
    let env: EnvName = "prod".parse().unwrap();

    let err = f.registry.resolve(&env, t(99), None).unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound);
    assert!(err.message().contains(&t(100).to_string()), "{err}");
    let err = f
        .registry
        .resolve(&"qa".parse().unwrap(), t(99), None)
        .unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound);

    let r = f.registry.resolve(&env, t(100), None).unwrap();
    assert_eq!(
        (r.pin.entry.seq, r.next.as_ref().map(|n| n.entry.seq)),
        (1, Some(2))
    );
    assert!(
        r.near_switch.is_none(),
        "the first pin's start is no switch"
    );
    let r = f.registry.resolve(&env, t(150), None).unwrap();
    assert_eq!(r.pin.entry.release_id.as_str(), "r1");
    assert_eq!(r.next.unwrap().entry.activated_at, t(200));
    let r = f.registry.resolve(&env, t(200), None).unwrap();
    assert_eq!(r.pin.entry.release_id.as_str(), "r2");
    let b = r.near_switch.unwrap();
    assert_eq!(
        (b.before.entry.seq, b.after.entry.seq, b.offset_micros),
        (1, 2, 0)
    );
    let r = f
        .registry
        .resolve(&env, t(199), Some(Duration::from_millis(500)))
        .unwrap();
    assert!(r.near_switch.is_none(), "outside a narrower margin");
    let r = f.registry.resolve(&env, t(10_000), None).unwrap();
    assert_eq!((r.pin.entry.seq, r.next), (3, None));
}

#[tokio::test]
async fn history_pages_with_before_and_since() {
    let f = Fixture::new().await;
    f.publish("r1", b"1").await.unwrap();
    for i in 0..10 {
        f.pin("prod", "r1", Some(t(i * 10))).await.unwrap();
    }
    let env: EnvName = "prod".parse().unwrap();
    let q = |before: Option<i64>, since: Option<i64>, limit: usize, from_seq: Option<u64>| {
        HistoryQuery {
            before: before.map(t),
            since: since.map(t),
            limit,
            from_seq,
            request_id: None,
        }
    };
    let seqs = |q: HistoryQuery| {
        let page = f.registry.history(&env, &q).unwrap();
        (
            page.pins.iter().map(|p| p.entry.seq).collect::<Vec<_>>(),
            page.next,
        )
    };
    assert_eq!(seqs(q(None, None, 3, None)), (vec![10, 9, 8], Some(7)));
    assert_eq!(seqs(q(None, None, 3, Some(7))), (vec![7, 6, 5], Some(4)));
    assert_eq!(seqs(q(None, None, 0, Some(1))), (vec![1], None));
    // before is exclusive, since inclusive: pins at 30..=60 are seqs 4..=7.
    assert_eq!(
        seqs(q(Some(70), Some(30), 10, None)),
        (vec![7, 6, 5, 4], None)
    );
    assert_eq!(seqs(q(Some(0), None, 10, None)), (vec![], None));
    assert_eq!(seqs(q(None, Some(91), 10, None)), (vec![], None));
}

#[tokio::test]
async fn a_new_index_rebuilt_from_the_log_gives_identical_answers() {
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    f.publish("r2", b"[2]").await.unwrap();
    f.pin("prod", "r1", Some(t(1))).await.unwrap();
    f.pin("prod", "r2", Some(t(2))).await.unwrap();
    let env: EnvName = "prod".parse().unwrap();
    f.registry.flush().await.unwrap(); // as a graceful stop stores the checkpoint
    let fresh = open(f.store.clone(), f.clock.clone(), Limits::default()).await;
    for at in [1, 2, 3] {
        assert_eq!(
            fresh.resolve(&env, t(at), None).unwrap(),
            f.registry.resolve(&env, t(at), None).unwrap()
        );
    }
    assert_eq!(
        fresh.history(&env, &HistoryQuery::default()).unwrap(),
        f.registry.history(&env, &HistoryQuery::default()).unwrap()
    );
    assert_eq!(
        fresh.list_artifacts(None, 0).unwrap(),
        f.registry.list_artifacts(None, 0).unwrap()
    );
}

#[tokio::test]
async fn a_tampered_log_entry_is_refused_at_open() {
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    f.pin("prod", "r1", Some(t(1))).await.unwrap();
    f.pin("prod", "r1", Some(t(2))).await.unwrap();
    // Rewrite pin #1 with another instant: #2's previous-pin hash no longer matches.
    let path = stackpin_registry::log::Log::path(1);
    let bytes = f.store.get(&path).await.unwrap().bytes().await.unwrap();
    let text = String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace(&t(1).to_string(), &t(0).to_string());
    f.store.put(&path, text.into_bytes().into()).await.unwrap();
    let trusted = TrustedKeys::new([PublicKey::new(publisher().verifying_key())]);
    let err = Registry::open(
        Index::temporary().unwrap(),
        Options {
            trusted,
            clock: f.clock.clone(),
            ..Options::new(f.store.clone(), log_signer())
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.kind(), Kind::DataLoss);
    assert!(err.message().contains("chain is broken"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Resolve through the index equals a linear scan over the pins.
    #[test]
    fn resolve_matches_a_linear_scan(
        gaps in prop::collection::vec(0i64..5, 1..25),
        queries in prop::collection::vec(-3i64..130, 1..40),
        margin in 0i64..3,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let f = Fixture::new().await;
            f.publish("a", b"0").await.unwrap();
            f.publish("b", b"1").await.unwrap();
            let mut times = Vec::new();
            let mut at = 0;
            for (i, gap) in gaps.iter().enumerate() {
                at += gap; // gaps of 0 give equal instants
                f.pin("e", if i % 2 == 0 { "a" } else { "b" }, Some(t(at))).await.unwrap();
                times.push(at);
            }
            let env: EnvName = "e".parse().unwrap();
            let margin_d = Duration::from_secs(margin as u64);
            for q in &queries {
                let got = f.registry.resolve(&env, t(*q), Some(margin_d));
                // Model: the last pin (highest seq) with time <= q.
                let live = times.iter().rposition(|p| *p <= *q);
                match live {
                    None => prop_assert_eq!(got.unwrap_err().kind(), Kind::NotFound),
                    Some(i) => {
                        let r = got.unwrap();
                        prop_assert_eq!(r.pin.entry.seq, i as u64 + 1);
                        prop_assert_eq!(r.pin.entry.activated_at, t(times[i]));
                        prop_assert_eq!(r.next.as_ref().map(|n| n.entry.activated_at), times.get(i + 1).map(|x| t(*x)));
                        let near_start = i > 0 && q - times[i] <= margin;
                        let near_end = times.get(i + 1).is_some_and(|n| n - q <= margin);
                        prop_assert_eq!(r.near_switch.is_some(), near_start || near_end);
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_resolve_carries_proofs_that_verify_offline_and_break_on_any_flip() {
    use stackpin_core::proof::RestoreProof;
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    f.publish("r2", b"[2]").await.unwrap();
    f.pin("prod", "r1", Some(t(10))).await.unwrap();
    f.pin("prod", "r2", Some(t(20))).await.unwrap();
    let env: EnvName = "prod".parse().unwrap();
    let query = stackpin_registry::registry::Query::At {
        at: t(15),
        margin: None,
    };
    let proved = f
        .registry
        .resolve_proved(&env, &query, false)
        .await
        .unwrap();
    let proof = RestoreProof {
        checkpoint: proved.checkpoint.note.to_string(),
        publish: proved.publish.clone(),
        pin: proved.pin.clone(),
        next: proved.next.clone(),
    };
    let log_key = log_signer().verifier();
    let trusted = TrustedKeys::new([PublicKey::new(publisher().verifying_key())]);
    let v = proof.verify(b"[1]", &log_key, &trusted).unwrap();
    assert_eq!((v.pin.seq, v.interval()), (1, (t(10), Some(t(20)))));
    assert!(
        proof.verify(b"[2]", &log_key, &trusted).is_err(),
        "other bytes"
    );
    let stranger = NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[6; 32])).unwrap();
    assert!(
        proof
            .verify(b"[1]", &stranger.verifier(), &trusted)
            .is_err(),
        "other log key"
    );
    assert!(
        proof
            .verify(b"[1]", &log_key, &TrustedKeys::default())
            .is_err(),
        "untrusted publisher"
    );

    // The .tlog-proof text round-trips, and no single flipped byte survives.
    let text = proof.to_tlog_proof();
    assert_eq!(RestoreProof::parse_tlog_proof(&text).unwrap(), proof);
    // What a generic C2SP verifier checks is the claim a restore rests on:
    // the file's index and proof lines prove the pin entry.
    assert!(
        text.contains(&format!("\nindex {}\n", proof.pin.index)),
        "{text}"
    );
    // Files written before (the publish entry primary, the pin in extra)
    // still parse to the same proof and verify.
    let earlier = earlier_tlog_proof(&proof);
    let parsed = RestoreProof::parse_tlog_proof(&earlier).unwrap();
    assert_eq!(parsed, proof);
    parsed.verify(b"[1]", &log_key, &trusted).unwrap();
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        let mut flipped = bytes.to_vec();
        flipped[i] ^= 0x01;
        let Ok(flipped) = String::from_utf8(flipped) else {
            continue;
        };
        let ok = RestoreProof::parse_tlog_proof(&flipped)
            .and_then(|p| p.verify(b"[1]", &log_key, &trusted))
            .is_ok();
        assert!(!ok, "flipping byte {i} of the proof file went unnoticed");
    }
}

/// A `.tlog-proof` as versions before the pin became the primary proof
/// wrote it: the publish entry's index and proof lines, and the pin and
/// next entries in `extra`.
fn earlier_tlog_proof(proof: &stackpin_core::proof::RestoreProof) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let proved = |e: &stackpin_core::proof::ProvedEntry| {
        serde_json::json!({
            "index": e.index,
            "entry": b64(&e.entry),
            "proof": e.proof.iter().map(|h| b64(h.as_bytes())).collect::<Vec<_>>(),
        })
    };
    let mut extra = serde_json::json!({
        "entry": b64(&proof.publish.entry),
        "pin": proved(&proof.pin),
    });
    if let Some(next) = &proof.next {
        extra["next"] = proved(next);
    }
    let mut out = format!(
        "c2sp.org/tlog-proof@v1\nextra {}\nindex {}\n",
        b64(&serde_json::to_vec(&extra).unwrap()),
        proof.publish.index
    );
    for h in &proof.publish.proof {
        out.push_str(&b64(h.as_bytes()));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&proof.checkpoint);
    out
}

#[tokio::test]
async fn consistency_proofs_link_every_checkpoint_to_the_next() {
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    let mut checkpoints = vec![f.registry.latest_checkpoint().await.unwrap()];
    for i in 0..9 {
        f.pin("prod", "r1", Some(t(i))).await.unwrap();
        checkpoints.push(f.registry.latest_checkpoint().await.unwrap());
    }
    for old in &checkpoints {
        for new in checkpoints.iter().filter(|c| c.size >= old.size) {
            let proof = f.registry.consistency_proof(old.size, new.size).unwrap();
            stackpin_core::merkle::verify_consistency(
                old.size, new.size, &old.root, &new.root, &proof,
            )
            .unwrap();
        }
    }
    assert_eq!(
        f.registry.consistency_proof(0, 3).unwrap_err().kind(),
        Kind::Invalid
    );
    assert_eq!(
        f.registry.inclusion_proof(10, 10).unwrap_err().kind(),
        Kind::Invalid
    );
}

#[tokio::test]
async fn a_changed_stored_entry_is_never_served() {
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    let path = stackpin_registry::log::Log::path(0);
    let bytes = f.store.get(&path).await.unwrap().bytes().await.unwrap();
    let mut changed = bytes.to_vec();
    changed[10] ^= 0x20;
    f.store.put(&path, changed.into()).await.unwrap();
    assert_eq!(
        f.registry.entry(0).await.unwrap_err().kind(),
        Kind::DataLoss
    );
    assert_eq!(
        f.registry.entry(1).await.unwrap_err().kind(),
        Kind::NotFound
    );
}

#[tokio::test]
async fn a_revoked_key_stops_new_publishes_but_keeps_old_ones_valid() {
    let f = Fixture::new().await;
    f.publish("before", b"[1]").await.unwrap();
    let id = stackpin_core::signing::KeyId::of(&publisher().verifying_key());
    let revoked_at = f.clock.now().saturating_add_micros(SECOND);
    f.registry
        .revoke_key(&id, Some(revoked_at), &Reason::default(), "admin")
        .await
        .unwrap();
    // Until the revocation instant the key still works...
    f.publish("just-before", b"[2]").await.unwrap();
    f.clock.0.fetch_add(2 * SECOND, Ordering::SeqCst);
    // ...and after it, it does not.
    let err = f.publish("after", b"[3]").await.unwrap_err();
    assert!(
        matches!(err.kind(), Kind::Precondition | Kind::Invalid),
        "{err}"
    );
    let err = f
        .registry
        .revoke_key(&id, None, &Reason::default(), "admin")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Conflict);

    // A new key added through the log takes over.
    let next = SigningKey::from_bytes(&[43; 32]);
    let pem = PublicKey::new(next.verifying_key()).to_pem().unwrap();
    f.registry
        .add_key(&pem, None, &Reason::default(), "admin")
        .await
        .unwrap();
    let rid: ReleaseId = "after".parse().unwrap();
    let env = signing::sign_envelope(
        &signing::publish_statement(&rid, &Digest::of(b"[3]")),
        &next,
    );
    f.publish_with("after", &env, b"[3]").await.unwrap();
    let err = f
        .registry
        .add_key(&pem, None, &Reason::default(), "admin")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Conflict);

    // The audit agrees: every publish was made under a key valid at the time.
    let report = audit(&f).await;
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!((report.publishes, report.key_changes), (3, 2));
}

async fn audit(f: &Fixture) -> stackpin_core::audit::Report {
    use stackpin_core::audit::Audit;
    let trusted = TrustedKeys::new([PublicKey::new(publisher().verifying_key())]);
    let mut a = Audit::new(trusted);
    let cp = f.registry.latest_checkpoint().await.unwrap();
    for i in 0..cp.size {
        a.entry(i, &f.registry.entry(i).await.unwrap());
    }
    a.checkpoint(&cp.note, &log_signer().verifier());
    a.signatures();
    for d in a.digests() {
        let path = stackpin_registry::blobs::Blobs::path(&d);
        let bytes = f.store.get(&path).await.unwrap().bytes().await.unwrap();
        a.blob(&d, Ok(&bytes));
    }
    a.finish()
}

#[tokio::test]
async fn the_audit_reports_a_rewritten_log_and_a_retroactive_revocation() {
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    f.pin("prod", "r1", Some(t(1))).await.unwrap();
    assert!(audit(&f).await.ok());
    // Revoking from an instant before the publish makes it suspect.
    let id = stackpin_core::signing::KeyId::of(&publisher().verifying_key());
    f.registry
        .revoke_key(&id, Some(t(-5_000_000)), &Reason::default(), "admin")
        .await
        .unwrap();
    let report = audit(&f).await;
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(
        report.failures[0].class,
        stackpin_core::audit::Class::Signature
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_group_committed_and_stay_consistent() {
    let f = Arc::new(Fixture::new().await);
    f.publish("r1", b"[1]").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let env = ["a", "b", "c"][i % 3];
            f.pin(env, "r1", None).await.unwrap();
            // Racing publishes of one release id: one binding wins.
            f.publish("contested", format!("[{}]", i % 2).as_bytes())
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.kind(), Kind::Conflict, "{e}"),
        }
    }
    // Every request with the winning bytes succeeds (idempotent); the others conflict.
    assert_eq!(won, 32);
    for env in ["a", "b", "c"] {
        let env: EnvName = env.parse().unwrap();
        let page = f
            .registry
            .history(
                &env,
                &HistoryQuery {
                    limit: 1000,
                    ..HistoryQuery::default()
                },
            )
            .unwrap();
        let seqs: Vec<u64> = page.pins.iter().rev().map(|p| p.entry.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        for w in page.pins.windows(2) {
            assert_eq!(
                w[0].entry.prev_pin.as_deref(),
                Some(w[1].entry_hash.hex().as_str())
            );
            assert!(w[0].entry.activated_at >= w[1].entry.activated_at);
        }
    }
    // A fresh index rebuilt from the stored objects answers the same. (That
    // requests are batched is asserted with a slow store in
    // tests/tests/group_commit.rs, where timing cannot hide it.)
    let entries = f.registry.latest_checkpoint().await.unwrap().size;
    assert_eq!(entries, 1 + 64 + 1);
    assert!(audit(&f).await.ok());
    f.registry.flush().await.unwrap(); // as a graceful stop stores the checkpoint
    let fresh = open(f.store.clone(), f.clock.clone(), Limits::default()).await;
    assert_eq!(
        fresh.latest_checkpoint().await.unwrap().root,
        f.registry.latest_checkpoint().await.unwrap().root
    );
}

#[tokio::test]
async fn pages_are_capped_whatever_is_asked() {
    let f = Fixture::new().await;
    f.publish("r1", b"1").await.unwrap();
    for i in 0..1005 {
        f.pin("prod", "r1", Some(t(i))).await.unwrap();
    }
    let env: EnvName = "prod".parse().unwrap();
    let page = f
        .registry
        .history(
            &env,
            &HistoryQuery {
                limit: 1_000_000,
                ..HistoryQuery::default()
            },
        )
        .unwrap();
    assert_eq!(page.pins.len(), stackpin_registry::registry::MAX_PAGE);
    assert_eq!(page.next, Some(5));
    let (list, _) = f.registry.list_artifacts(None, usize::MAX).unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn a_replica_that_reads_entries_contradicting_the_stored_checkpoint_serves_nothing() {
    let f = Fixture::new().await;
    // A second replica on the same store, reading only when asked.
    let replica = open(
        f.store.clone(),
        f.clock.clone(),
        Limits {
            poll_interval: Duration::from_secs(3600),
            ..Limits::default()
        },
    )
    .await;
    f.publish("r1", b"[1]").await.unwrap();
    f.publish("r2", b"[2]").await.unwrap();
    f.pin("prod", "r1", None).await.unwrap();
    f.pin("prod", "r2", None).await.unwrap();
    f.registry.flush().await.unwrap(); // the checkpoint of 4 entries, stored
    // Pin #2 rewritten in storage to name r1: valid by every rule.
    let path = stackpin_registry::log::Log::path(3);
    let bytes = f.store.get(&path).await.unwrap().bytes().await.unwrap();
    let text = String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("\"r2\"", "\"r1\"")
        .replace(&Digest::of(b"[2]").hex(), &Digest::of(b"[1]").hex());
    f.store.put(&path, text.into_bytes().into()).await.unwrap();
    assert!(replica.accepts_writes());
    replica.sync().await.unwrap();
    let err = replica.contradicted().expect("the replica noticed");
    assert_eq!(err.kind(), Kind::DataLoss);
    assert!(
        err.message().contains("..4 written by another replica")
            && err.message().contains("log/checkpoint"),
        "{err}"
    );
    assert!(!replica.accepts_writes(), "health must go NOT_SERVING");
    // It signs nothing for them.
    assert_eq!(
        replica.latest_checkpoint().await.unwrap_err().kind(),
        Kind::DataLoss
    );
}

#[tokio::test]
async fn a_publish_must_bring_the_bytes_its_header_declared() {
    let f = Fixture::new().await;
    let body = b"[1,2,3]";
    let env = signing::sign_envelope(
        &signing::publish_statement(&"r1".parse().unwrap(), &Digest::of(body)),
        &publisher(),
    );
    // Fewer (a cut stream) and more than declared: refused, nothing stored.
    let before = f.object_count().await;
    let mut short = f
        .registry
        .begin_publish("r1", "", &env, body.len() as u64 + 1)
        .await
        .unwrap();
    short.push(bytes::Bytes::from_static(body)).await.unwrap();
    let err = f.registry.finish_publish(short).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Invalid);
    assert!(
        err.message().contains("declared 8 bytes but 7 arrived"),
        "{err}"
    );
    let mut long = f
        .registry
        .begin_publish("r1", "", &env, body.len() as u64 - 1)
        .await
        .unwrap();
    let err = long
        .push(bytes::Bytes::from_static(body))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Invalid);
    assert_eq!(f.object_count().await, before);
    f.publish("r1", body).await.unwrap();
}

#[tokio::test]
async fn only_strict_json_is_published_and_the_error_names_the_byte() {
    let f = Fixture::new().await;
    f.publish("base", b"{}").await.unwrap();
    let before = f.object_count().await;
    let deep = "[".repeat(4_000);
    let cases: [(&str, &[u8], &str); 8] = [
        ("bad-utf8", b"{\"a\":\"\xff\xfe\"}", "unicode"),
        ("overlong", b"{\"a\":\"\xc0\xaf\"}", "unicode"),
        ("lone-surrogate", br#"{"a":"\ud800"}"#, "hex escape"),
        ("deep", deep.as_bytes(), "limit of 128"),
        ("huge-number", b"[1e400]", "out of range"),
        ("duplicate", br#"{"a":1,"a":2}"#, "duplicate member name"),
        ("trailing", b"{} {}", "trailing"),
        (
            "nested-duplicate",
            br#"{"x":{"k":1,"k":1}}"#,
            "duplicate member name \"k\"",
        ),
    ];
    for (release, body, what) in cases {
        let err = f.publish(release, body).await.unwrap_err();
        assert_eq!(err.kind(), Kind::Invalid, "{release}: {err}");
        let message = err.message().to_lowercase();
        assert!(message.contains(what), "{release}: {err}");
        assert!(message.contains("at byte "), "{release}: {err}");
        assert!(message.len() < 512, "{release}: the error echoes the input");
    }
    assert_eq!(
        f.object_count().await,
        before,
        "a refused publish stored something"
    );
    // What JSON parsers agree on is accepted, big numbers included.
    f.publish(
        "fine",
        br#"{"a":[1,2.5e300,-0,"\u00e9\ud83d\ude00"],"b":{"a":null}}"#,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_request_id_records_once_and_refuses_another_request() {
    let f = Fixture::new().await;
    f.publish("base", b"{}").await.unwrap();
    f.publish("next", b"[]").await.unwrap();
    let prod: EnvName = "prod".parse().unwrap();
    let base = ArtifactRef::Release("base".parse().unwrap());
    let next = ArtifactRef::Release("next".parse().unwrap());
    let reason = Reason::default();
    let pin = |what: &ArtifactRef, id: &str| {
        let (what, id, prod, reason) = (what.clone(), id.to_owned(), prod.clone(), reason.clone());
        let r = &f.registry;
        async move {
            let req = PinRequest {
                env: prod,
                artifact: what,
                activated_at: None,
                db_position: None,
                reason,
                runtime_image: None,
                known_env_only: false,
            };
            r.pin_once(&req, "ci", Some(&id)).await
        }
    };
    let first = pin(&base, "job-1").await.unwrap();
    let size = f.registry.latest_checkpoint().await.unwrap().size;
    // A retry of the same pin: the first result, nothing new logged.
    let again = pin(&base, "job-1").await.unwrap();
    assert_eq!(
        (again.entry.seq, again.log_index),
        (first.entry.seq, first.log_index)
    );
    assert_eq!(f.registry.latest_checkpoint().await.unwrap().size, size);
    assert_eq!(first.entry.request_id.as_deref(), Some("job-1"));
    // The same id for a different pin: refused, naming the first entry.
    let err = pin(&next, "job-1").await.unwrap_err();
    assert_eq!(err.kind(), Kind::Conflict, "{err}");
    assert_eq!(err.reason(), "REQUEST_ID_REUSED");
    assert!(
        err.message().contains(&first.log_index.to_string()),
        "{err}"
    );
    // A malformed id writes nothing.
    assert_eq!(pin(&base, "a b").await.unwrap_err().kind(), Kind::Invalid);
    assert_eq!(f.registry.latest_checkpoint().await.unwrap().size, size);

    // Publishes and key changes alike.
    let rid: ReleaseId = "r1".parse().unwrap();
    let body = br#"{"r":1}"#;
    let env = signing::sign_envelope(
        &signing::publish_statement(&rid, &Digest::of(body)),
        &publisher(),
    );
    let mut results = Vec::new();
    for _ in 0..2 {
        let mut p = f
            .registry
            .begin_publish_once("r1", "", &env, body.len() as u64, Some("pub-1"))
            .await
            .unwrap();
        p.push(bytes::Bytes::from_static(body)).await.unwrap();
        results.push(f.registry.finish_publish(p).await.unwrap());
    }
    assert!(
        results.iter().all(|p| p.created),
        "the retry returns the first result"
    );
    assert_eq!(results[0].artifact, results[1].artifact);
    let pem = PublicKey::new(SigningKey::from_bytes(&[77; 32]).verifying_key())
        .to_pem()
        .unwrap();
    let (k1, replayed1) = f
        .registry
        .add_key_once(&pem, None, &reason, "admin", Some("key-1"))
        .await
        .unwrap();
    let (k2, replayed2) = f
        .registry
        .add_key_once(&pem, None, &reason, "admin", Some("key-1"))
        .await
        .unwrap();
    assert!(!replayed1 && replayed2, "the retry says it is a replay");
    assert_eq!(k1, k2, "a retried key add is not 'already known'");
    let err = f
        .registry
        .revoke_key_once(&k1.key_id, None, &reason, "admin", Some("pub-1"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "REQUEST_ID_REUSED", "{err}");

    // The id is searchable, and a registry that rebuilt its index from the
    // log still knows it.
    let find = |r: &Registry| {
        r.history(
            &prod,
            &HistoryQuery {
                request_id: Some("job-1".into()),
                ..HistoryQuery::default()
            },
        )
        .unwrap()
        .pins
    };
    assert_eq!(find(&f.registry).len(), 1);
    let rebuilt = open(f.store.clone(), f.clock.clone(), Limits::default()).await;
    assert_eq!(find(&rebuilt)[0].log_index, first.log_index);
    let size = rebuilt.latest_checkpoint().await.unwrap().size;
    let again = rebuilt
        .pin_once(
            &PinRequest {
                env: prod,
                artifact: base,
                activated_at: None,
                db_position: None,
                reason,
                runtime_image: None,
                known_env_only: false,
            },
            "ci",
            Some("job-1"),
        )
        .await
        .unwrap();
    assert_eq!(again.log_index, first.log_index);
    assert_eq!(rebuilt.latest_checkpoint().await.unwrap().size, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_served_as_tlog_tiles_and_full_tiles_are_stored_once() {
    use stackpin_core::tiles::{self, Tile, TileTree};
    let f = Fixture::new().await;
    f.publish("r1", b"[1]").await.unwrap();
    let pins = (0..599).map(|i| {
        let f = &f;
        async move { f.pin(["a", "b", "c"][i % 3], "r1", None).await }
    });
    for r in futures::future::join_all(pins).await {
        r.unwrap();
    }
    let cp = f.registry.latest_checkpoint().await.unwrap();
    assert_eq!(cp.size, 600);
    // What a tlog-tiles client reads gives the signed root, and the bundles
    // hold the log's entries.
    let mut served = std::collections::HashMap::new();
    for tile in tiles::tiles_of(cp.size) {
        let bytes = f.registry.tile(&tile.path()).await.unwrap();
        served.insert(
            tile,
            bytes.unwrap_or_else(|| panic!("{} missing", tile.path())),
        );
    }
    let tree = TileTree::new(cp.size, |t: &Tile| {
        Ok(served.get(t).map(|b| b.to_vec()).unwrap_or_default())
    });
    assert_eq!(tree.root().unwrap(), cp.root);
    for tile in tiles::tiles_of(cp.size)
        .into_iter()
        .filter(|t| t.level.is_none())
    {
        let entries = tiles::split_bundle(&served[&tile]).unwrap();
        assert_eq!(entries.len() as u64, tile.width);
        for (k, e) in entries.iter().enumerate() {
            let want = f.registry.entry(tile.first() + k as u64).await.unwrap();
            assert_eq!(*e, &want[..]);
        }
    }
    // Beyond the tree, or spelt otherwise: not a tile.
    for path in [
        "tile/0/002.p/89",
        "tile/0/003",
        "tile/entries/002.p/89",
        "tile/1/000.p/3",
        "tile/0/2",
        "tile/0/x000/002",
        "tile/0/002.p/088",
        "checkpoint",
    ] {
        assert!(f.registry.tile(path).await.unwrap().is_none(), "{path}");
    }
    // A smaller partial tile of the same row is still served (trees of
    // earlier sizes had it).
    assert!(f.registry.tile("tile/0/002.p/3").await.unwrap().is_some());
    // The full tiles end up in storage, byte for byte what is served.
    let marker = object_store::path::Path::from(stackpin_core::layout::TILES_WRITTEN);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(r) = f.store.get(&marker).await
            && r.bytes().await.unwrap() == "512"
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no tiles stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for tile in tiles::tiles_of(cp.size) {
        let stored = f
            .store
            .get(&object_store::path::Path::from(tile.path()))
            .await;
        if tile.is_full() {
            assert_eq!(stored.unwrap().bytes().await.unwrap(), served[&tile]);
        } else {
            assert!(stored.is_err(), "partial {} stored", tile.path());
        }
    }
}
