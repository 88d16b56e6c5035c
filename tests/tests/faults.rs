//! Every write path (publish, pin, key changes) driven through injected
//! storage faults: after each failure the state is the old one or the new
//! one, the log verifies, and the index agrees with the log.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ed25519_dalek::SigningKey;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use stackpin_core::audit::Audit;
use stackpin_core::digest::Digest;
use stackpin_core::ids::Reason;
use stackpin_core::note::{DEFAULT_ORIGIN, NoteSigner};
use stackpin_core::signing::{self, KeyId, PublicKey, TrustedKeys};
use stackpin_registry::index::Index;
use stackpin_registry::registry::{ArtifactRef, Options};
use stackpin_registry::{Kind, Registry};
use stackpin_tests::faults::Faulty;

fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

fn signer() -> NoteSigner {
    NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[12; 32])).unwrap()
}

async fn open(store: Arc<dyn ObjectStore>) -> Registry {
    let trusted = TrustedKeys::new([PublicKey::new(publisher().verifying_key())]);
    Registry::open(
        Index::temporary().unwrap(),
        Options {
            trusted,
            ..Options::new(store, signer())
        },
    )
    .await
    .unwrap()
}

/// Each write path as a closure over a counter (so retries write new things).
async fn write(registry: &Registry, path: &str, n: usize) -> stackpin_registry::Result<()> {
    match path {
        "publish" => {
            let body = format!("{{\"n\":{n}}}");
            let rid = format!("rel-{n}");
            let env = signing::sign_envelope(
                &signing::publish_statement(&rid.parse().unwrap(), &Digest::of(body.as_bytes())),
                &publisher(),
            );
            let mut p = registry
                .begin_publish(&rid, "", &env, body.len() as u64)
                .await?;
            p.push(bytes::Bytes::copy_from_slice(body.as_bytes()))
                .await?;
            registry.finish_publish(p).await.map(|_| ())
        }
        "pin" => {
            let what = ArtifactRef::Release("base".parse().unwrap());
            let reason: Reason = format!("pin-{n}").parse().unwrap();
            registry
                .pin(&"prod".parse().unwrap(), &what, None, None, &reason, "t")
                .await
                .map(|_| ())
        }
        "key add" => {
            let key = SigningKey::from_bytes(&[u8::try_from(100 + n % 50).unwrap(); 32]);
            let pem = PublicKey::new(key.verifying_key()).to_pem().unwrap();
            match registry.add_key(&pem, None, &Reason::default(), "t").await {
                Err(e) if e.kind() == Kind::Conflict => Ok(()), // added by an earlier landed attempt
                other => other.map(|_| ()),
            }
        }
        "key revoke" => {
            // Keys 150..200 are added before the faults start.
            let key = SigningKey::from_bytes(&[u8::try_from(150 + n % 50).unwrap(); 32]);
            let id = KeyId::of(&key.verifying_key());
            match registry
                .revoke_key(&id, None, &Reason::default(), "t")
                .await
            {
                Err(e) if matches!(e.kind(), Kind::Conflict | Kind::NotFound) => Ok(()),
                other => other.map(|_| ()),
            }
        }
        _ => unreachable!(),
    }
}

/// The log verifies end to end and a fresh index built from it agrees with
/// the running registry's.
async fn check_consistent(store: Arc<dyn ObjectStore>, registry: &Registry) {
    registry.sync().await.unwrap();
    let cp = registry.latest_checkpoint().await.unwrap();
    let fresh = open(store.clone()).await;
    let fresh_cp = fresh.latest_checkpoint().await.unwrap();
    assert_eq!(
        (fresh_cp.size, fresh_cp.root),
        (cp.size, cp.root),
        "index disagrees with the log"
    );
    let mut audit = Audit::new(TrustedKeys::new([PublicKey::new(
        publisher().verifying_key(),
    )]));
    for i in 0..cp.size {
        audit.entry(i, &fresh.entry(i).await.unwrap());
    }
    audit.checkpoint(&cp.note, &signer().verifier());
    audit.signatures();
    let report = audit.finish();
    assert!(report.ok(), "{:?}", report.failures);
    let prod = "prod".parse().unwrap();
    let (h1, h2) = (
        registry.history(&prod, &Default::default()),
        fresh.history(&prod, &Default::default()),
    );
    assert_eq!(
        h1, h2,
        "the running and the rebuilt index answer differently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_survives_every_injected_fault() {
    let faulty = Arc::new(Faulty::new(Arc::new(InMemory::new())));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let registry = open(store.clone()).await;
    write(&registry, "publish", 0).await.unwrap();
    let rid = "base";
    let body = b"{\"base\":true}";
    let env = signing::sign_envelope(
        &signing::publish_statement(&rid.parse().unwrap(), &Digest::of(body)),
        &publisher(),
    );
    let mut p = registry
        .begin_publish(rid, "", &env, body.len() as u64)
        .await
        .unwrap();
    p.push(bytes::Bytes::copy_from_slice(body)).await.unwrap();
    registry.finish_publish(p).await.unwrap();
    for seed in 150..200u8 {
        let pem = PublicKey::new(SigningKey::from_bytes(&[seed; 32]).verifying_key())
            .to_pem()
            .unwrap();
        registry
            .add_key(&pem, None, &Reason::default(), "t")
            .await
            .unwrap();
    }

    let counter = AtomicUsize::new(1);
    type Inject<'a> = (&'a str, &'a dyn Fn(&Faulty));
    let faults: [Inject; 6] = [
        ("next put fails", &|f| f.fail_puts(1)),
        ("two puts fail", &|f| f.fail_puts(2)),
        ("next get fails", &|f| f.fail_gets(1)),
        ("everything fails once", &|f| f.fail_all(1)),
        ("put lands, then errors", &|f| f.fail_after_landing(1)),
        ("put lands and errors, read-back fails", &|f| {
            f.fail_after_landing(1);
            f.fail_gets(1);
        }),
    ];
    let mut outcomes = Vec::new();
    for path in ["publish", "pin", "key add", "key revoke"] {
        for (name, inject) in &faults {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let before = registry.latest_checkpoint().await.unwrap().size;
            let hits = faulty.injected();
            inject(&faulty);
            let result = write(&registry, path, n).await;
            let hit = faulty.injected() > hits;
            faulty.clear();
            // Faults on writes must actually hit the write path; a read
            // fault is only hit where the path reads (publish, read-backs).
            assert!(
                hit || name.contains("get"),
                "{path} / {name}: the fault was never hit"
            );
            registry.sync().await.unwrap();
            let after = registry.latest_checkpoint().await.unwrap().size;
            match &result {
                Ok(()) => assert!(
                    after >= before,
                    "{path} / {name}: acknowledged but not present"
                ),
                Err(e) => {
                    assert_eq!(e.kind(), Kind::Unavailable, "{path} / {name}: {e}");
                    // What storage said stays in the server's log.
                    assert!(
                        !e.message().contains("injected fault"),
                        "{path} / {name}: {e}"
                    );
                    assert!(
                        after == before || after == before + 1,
                        "{path} / {name}: half a write"
                    );
                }
            }
            outcomes.push(format!(
                "{path} / {name}: {}",
                if result.is_ok() { "ok" } else { "unavailable" }
            ));
            check_consistent(store.clone(), &registry).await;
            // And the registry keeps working without a restart.
            let n = counter.fetch_add(1, Ordering::SeqCst);
            write(&registry, path, n).await.unwrap();
        }
    }
    // An ambiguous timeout whose write landed is answered as a success.
    assert!(
        outcomes
            .iter()
            .any(|o| o.contains("lands, then errors: ok")),
        "{outcomes:#?}"
    );
    check_consistent(store, &registry).await;
}
