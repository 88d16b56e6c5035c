//! The storage conformance suite: the properties the registry relies on,
//! written once and run on every backend — memory, a local folder, two real
//! S3 implementations (SeaweedFS and moto) and Azure Blob Storage (Azurite).

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use object_store::ObjectStore;
use stackpin_core::digest::Digest;
use stackpin_core::note::{DEFAULT_ORIGIN, NoteSigner};
use stackpin_core::signing::{self, PublicKey, TrustedKeys};
use stackpin_registry::blobs::Blobs;
use stackpin_registry::index::Index;
use stackpin_registry::log::Log;
use stackpin_registry::registry::{ArtifactRef, Options};
use stackpin_registry::storage::{self, StorageOptions, StorageUrl};
use stackpin_registry::{Kind, Registry};
use stackpin_tests::remote::{Azurite, Moto, Remote};
use stackpin_tests::s3::Seaweed;

async fn create_is_exclusive(store: Arc<dyn ObjectStore>) {
    let log = Log::new(store);
    assert!(
        log.append(0, &[Bytes::from_static(b"{\"a\":1}")])
            .await
            .unwrap()
    );
    assert!(
        !log.append(0, &[Bytes::from_static(b"{\"a\":2}")])
            .await
            .unwrap(),
        "a second create won"
    );
    assert_eq!(
        log.read(0).await.unwrap().unwrap(),
        Bytes::from_static(b"{\"a\":1}")
    );
}

async fn concurrent_creates_have_one_winner(store: Arc<dyn ObjectStore>) {
    let log = Arc::new(Log::new(store));
    let body = |i: usize| Bytes::from(format!("{{\"writer\":{i}}}"));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(7, &[body(i)]).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    // A storage error leaves a writer not knowing whether it won (the
    // committer then reads back); what must hold is that exactly one write
    // is stored and no two writers were told they won.
    let stored = log.read(7).await.unwrap().expect("one write landed");
    let winners: Vec<usize> = (0..8)
        .filter(|i| matches!(outcomes[*i], Ok(true)))
        .collect();
    assert!(winners.len() <= 1, "two writers won: {outcomes:?}");
    match winners.first() {
        Some(w) => assert_eq!(stored, body(*w)),
        None => {
            let errored: Vec<usize> = (0..8).filter(|i| outcomes[*i].is_err()).collect();
            assert!(errored.iter().any(|i| stored == body(*i)), "{outcomes:?}");
        }
    }
}

async fn batches_and_gaps_are_visible(store: Arc<dyn ObjectStore>) {
    let log = Log::new(store);
    let batch = [Bytes::from_static(b"{}"), Bytes::from_static(b"[]")];
    assert!(log.append(20, &batch).await.unwrap());
    assert!(log.append(22, &batch[..1]).await.unwrap());
    assert_eq!(
        Log::split(&log.read(20).await.unwrap().unwrap()),
        batch.to_vec()
    );
    assert_eq!(log.read(21).await.unwrap(), None);
    assert_eq!(log.objects_after(19).await.unwrap(), vec![20, 22]);
}

async fn blobs_round_trip_small_and_multipart(store: Arc<dyn ObjectStore>) {
    let blobs = Blobs::new(store.clone());
    for size in [10, 9 * 1024 * 1024] {
        let body = Bytes::from(vec![b'7'; size]);
        let d = Digest::of(&body);
        blobs.put(&d, body.clone()).await.unwrap();
        blobs.put(&d, body.clone()).await.unwrap();
        assert_eq!(blobs.get(&d).await.unwrap(), body);
    }
    let missing = Digest::of(b"never stored");
    assert_eq!(
        blobs.get(&missing).await.unwrap_err().kind(),
        Kind::DataLoss
    );
}

async fn a_registry_works_and_rebuilds_on_it(store: Arc<dyn ObjectStore>) {
    let publisher = SigningKey::from_bytes(&[1; 32]);
    let trusted = TrustedKeys::new([PublicKey::new(publisher.verifying_key())]);
    let signer = NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[2; 32])).unwrap();
    let clock = Arc::new(stackpin_core::time::SystemClock);
    let open = || {
        Registry::open(
            Index::temporary().unwrap(),
            Options {
                trusted: trusted.clone(),
                clock: clock.clone(),
                ..Options::new(store.clone(), signer.clone())
            },
        )
    };
    let registry = open().await.unwrap();
    let body = b"{\"objects\":[]}";
    let rid = "conformance".parse().unwrap();
    let env = signing::sign_envelope(
        &signing::publish_statement(&rid, &Digest::of(body)),
        &publisher,
    );
    let mut p = registry
        .begin_publish("conformance", "", &env, body.len() as u64)
        .await
        .unwrap();
    p.push(bytes::Bytes::copy_from_slice(body)).await.unwrap();
    assert!(registry.finish_publish(p).await.unwrap().created);
    let prod = "prod".parse().unwrap();
    let what = ArtifactRef::Release(rid.clone());
    registry
        .pin(&prod, &what, None, None, &Default::default(), "t")
        .await
        .unwrap();
    let now = stackpin_core::time::Timestamp::now();
    let query = stackpin_registry::registry::Query::At {
        at: now,
        margin: None,
    };
    let proved = registry.resolve_proved(&prod, &query, true).await.unwrap();
    assert_eq!(proved.resolution.pin.entry.release_id, rid);
    // A graceful stop stores the newest checkpoint (while running, it is
    // stored off the request path and may trail the log); a registry opened
    // on the store afterwards rebuilds its index and signs the same tree.
    registry.flush().await.unwrap();
    let again = open().await.unwrap();
    assert_eq!(
        again.latest_checkpoint().await.unwrap().root,
        registry.latest_checkpoint().await.unwrap().root
    );
}

async fn suite(store: impl Fn() -> Arc<dyn ObjectStore>) {
    create_is_exclusive(store()).await;
    concurrent_creates_have_one_winner(store()).await;
    batches_and_gaps_are_visible(store()).await;
    blobs_round_trip_small_and_multipart(store()).await;
    a_registry_works_and_rebuilds_on_it(store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_memory() {
    suite(|| storage::open(&StorageUrl::Memory, &StorageOptions::default()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_local_folder() {
    let dir = tempfile::TempDir::new().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let sub = dir.path().join(
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                .to_string(),
        );
        storage::open(&StorageUrl::File(sub), &StorageOptions::default()).unwrap()
    })
    .await;
}

/// The suite on `remote`, each case under a prefix of its own.
async fn suite_on(remote: &dyn Remote) {
    let n = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let prefix = format!(
            "suite-{}",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let url = StorageUrl::parse(&remote.storage_url(&prefix)).unwrap();
        storage::open(&url, &remote.options()).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_s3() {
    suite_on(&Seaweed::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_second_s3_moto() {
    suite_on(&Moto::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_azure_blob_azurite() {
    suite_on(&Azurite::start()).await;
}
