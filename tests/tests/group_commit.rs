//! Group commit, made visible: with storage that takes 20 ms per call,
//! 48 concurrent pins must share log objects instead of taking a round trip
//! each, and the result must be exactly what sequential commits would give.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use stackpin_core::digest::Digest;
use stackpin_core::note::{DEFAULT_ORIGIN, NoteSigner};
use stackpin_core::signing::{self, PublicKey, TrustedKeys};
use stackpin_registry::Registry;
use stackpin_registry::index::Index;
use stackpin_registry::registry::{ArtifactRef, HistoryQuery, Limits, Options};
use stackpin_tests::faults::Faulty;

fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[21; 32])
}

fn log_signer() -> NoteSigner {
    NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[22; 32])).unwrap()
}

async fn open(store: Arc<dyn ObjectStore>, max_batch: usize) -> Registry {
    let publisher = publisher();
    let trusted = TrustedKeys::new([PublicKey::new(publisher.verifying_key())]);
    let signer = log_signer();
    let limits = Limits {
        max_batch,
        ..Limits::default()
    };
    let registry = Registry::open(
        Index::temporary().unwrap(),
        Options {
            trusted,
            limits,
            ..Options::new(store, signer)
        },
    )
    .await
    .unwrap();
    let body = b"[1]";
    let env = signing::sign_envelope(
        &signing::publish_statement(&"r1".parse().unwrap(), &Digest::of(body)),
        &publisher,
    );
    let mut p = registry.begin_publish("r1", "", &env, 3).await.unwrap();
    p.push(bytes::Bytes::copy_from_slice(body)).await.unwrap();
    registry.finish_publish(p).await.unwrap();
    registry
}

async fn pin_concurrently(registry: Arc<Registry>, n: usize, envs: usize) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let r = registry.clone();
            tokio::spawn(async move {
                let env = ["a", "b", "c", "d"][i % envs].parse().unwrap();
                let what = ArtifactRef::Release("r1".parse().unwrap());
                r.pin(&env, &what, None, None, &Default::default(), "t")
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// Resolve by time agrees with the history of `env`, even where one
/// batch applied several of its pins: at each pin's instant the live pin is
/// the last one activated then, its successor is the next pin, and the
/// switch it is near (margin 0) comes from the pin before it.
fn resolve_follows_history(registry: &Registry, env: &str) {
    let env = env.parse().unwrap();
    let mut pins = registry
        .history(&env, &HistoryQuery::default())
        .unwrap()
        .pins;
    pins.reverse();
    for p in &pins {
        let live = pins
            .iter()
            .rposition(|q| q.entry.activated_at <= p.entry.activated_at)
            .unwrap();
        let r = registry
            .resolve(&env, p.entry.activated_at, Some(Duration::ZERO))
            .unwrap();
        assert_eq!(r.pin.entry.seq, pins[live].entry.seq);
        assert_eq!(
            r.next.map(|n| n.entry.seq),
            pins.get(live + 1).map(|n| n.entry.seq),
            "successor of pin #{}",
            r.pin.entry.seq
        );
        assert_eq!(
            r.near_switch.map(|b| b.before.entry.seq),
            live.checked_sub(1).map(|before| pins[before].entry.seq),
            "predecessor of pin #{}",
            r.pin.entry.seq
        );
    }
}

async fn log_objects(store: &Arc<dyn ObjectStore>) -> usize {
    let prefix = object_store::path::Path::from("log/entries");
    store
        .list(Some(&prefix))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pins_share_log_objects_on_slow_storage() {
    let slow = Arc::new(Faulty::new(Arc::new(InMemory::new())));
    let store: Arc<dyn ObjectStore> = slow.clone();
    let registry = Arc::new(open(store.clone(), 256).await);
    slow.delay(Duration::from_millis(20));
    pin_concurrently(registry.clone(), 48, 3).await;
    slow.delay(Duration::ZERO);
    let entries = registry.latest_checkpoint().await.unwrap().size as usize;
    let objects = log_objects(&store).await;
    assert_eq!(entries, 49);
    assert!(
        objects <= entries / 4,
        "{objects} log objects for {entries} entries: requests were not batched"
    );
    for env in ["a", "b", "c"] {
        let page = registry
            .history(&env.parse().unwrap(), &HistoryQuery::default())
            .unwrap();
        let seqs: Vec<u64> = page.pins.iter().rev().map(|p| p.entry.seq).collect();
        assert_eq!(seqs, (1..=16).collect::<Vec<_>>());
        resolve_follows_history(&registry, env);
    }
    // Listing every entry reads each log object once, not once per entry
    // (the checkpoint stored first, so no store reads within the count).
    registry.flush().await.unwrap();
    let reads = slow.reads();
    let listed: Vec<_> = registry.entries(0, entries as u64).collect().await;
    assert_eq!(listed.len(), entries);
    for (i, (index, entry)) in listed.into_iter().enumerate() {
        assert_eq!(index, i as u64);
        assert_eq!(entry.unwrap(), registry.entry(index).await.unwrap());
    }
    assert_eq!(
        slow.reads() - reads,
        objects + entries,
        "one read per object, then one per entry asked singly"
    );
    // Without group commit every pin is its own object.
    let slow = Arc::new(Faulty::new(Arc::new(InMemory::new())));
    let store: Arc<dyn ObjectStore> = slow.clone();
    let registry = Arc::new(open(store.clone(), 1).await);
    pin_concurrently(registry.clone(), 12, 3).await;
    assert_eq!(log_objects(&store).await, 13);
}

/// The offline audit reads a copied data folder as the registry wrote it:
/// a log object of a group commit holds several entries, one per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_audit_passes_an_intact_group_committed_log_and_fails_a_tampered_one() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let folder = stackpin_registry::storage::open(
        &stackpin_registry::storage::StorageUrl::File(data.clone()),
        &Default::default(),
    )
    .unwrap();
    let slow = Arc::new(Faulty::new(folder));
    let store: Arc<dyn ObjectStore> = slow.clone();
    let registry = Arc::new(open(store.clone(), 256).await);
    slow.delay(Duration::from_millis(20));
    pin_concurrently(registry.clone(), 40, 4).await;
    slow.delay(Duration::ZERO);
    registry.flush().await.unwrap();
    let entries = registry.latest_checkpoint().await.unwrap().size as usize;
    assert_eq!(entries, 41);
    assert!(
        log_objects(&store).await < entries,
        "no log object holds more than one entry: nothing here is group-committed"
    );
    drop(registry);

    let trusted = dir.path().join("publisher.pub.pem");
    std::fs::write(
        &trusted,
        PublicKey::new(publisher().verifying_key())
            .to_pem()
            .unwrap(),
    )
    .unwrap();
    let audit = || {
        stackpin_tests::stackpin(
            dir.path(),
            "http://127.0.0.1:1",
            &[
                "audit",
                "--data-dir",
                data.to_str().unwrap(),
                "--trusted-keys",
                trusted.to_str().unwrap(),
                "--log-key",
                &log_signer().vkey(),
            ],
        )
    };
    let intact = audit();
    assert!(
        intact
            .ok()
            .contains("entries      41 (checkpoint covers 41)"),
        "{intact:#?}"
    );

    // Change the second entry of a batch: the root no longer matches.
    let (path, object) = std::fs::read_dir(data.join("log/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .find(|(_, text)| text.lines().count() > 1)
        .unwrap();
    let lines: Vec<&str> = object.lines().collect();
    let tampered = lines[1].replacen("\"actor\":\"t\"", "\"actor\":\"x\"", 1);
    assert_ne!(tampered, lines[1]);
    let mut changed = lines.clone();
    changed[1] = &tampered;
    std::fs::write(&path, changed.join("\n")).unwrap();
    let run = audit();
    assert_eq!(run.code, 5, "{run:#?}");
    assert!(run.stdout.contains("[checkpoint]"), "{run:#?}");
    assert!(run.stdout.contains("the log was rewritten"), "{run:#?}");
}
