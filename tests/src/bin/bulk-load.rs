//! `bulk-load`: fills a data folder through the registry's normal write path
//! (in-process, concurrent, so group commit batches the entries), for scale
//! runs: N artifacts, one pin of the environment `early`, then M pins
//! spread over E environments, one second apart, starting
//! 2020-01-01T00:00:00Z.
//!
//! ```text
//! bulk-load --data-dir DIR --trusted-key KEY.pem [--artifacts 10000] [--pins 1000000] [--envs 10]
//! ```
//! The key is the publisher's private key (its public half must be trusted
//! by the server later started on DIR).

use std::sync::Arc;
use std::time::Instant;

use stackpin_core::digest::Digest;
use stackpin_core::signing::{self, PublicKey, TrustedKeys};
use stackpin_core::time::Timestamp;
use stackpin_registry::Registry;
use stackpin_registry::registry::{ArtifactRef, Limits, Options};

fn usage() -> ! {
    eprintln!(
        "usage: bulk-load --data-dir DIR --key PUBLISHER.pem [--artifacts N] [--pins N] [--envs N]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut dir, mut key, mut artifacts, mut pins, mut envs) =
        (None, None, 10_000u64, 1_000_000u64, 10u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--data-dir" => dir = Some(std::path::PathBuf::from(v)),
            "--key" => key = Some(std::path::PathBuf::from(v)),
            "--artifacts" => artifacts = v.parse().unwrap_or_else(|_| usage()),
            "--pins" => pins = v.parse().unwrap_or_else(|_| usage()),
            "--envs" => envs = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let (dir, key) = (
        dir.unwrap_or_else(|| usage()),
        key.unwrap_or_else(|| usage()),
    );
    let pem = std::fs::read_to_string(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let signer = signing::signing_key_from_pem(&pem).unwrap_or_else(|e| panic!("{e}"));
    let trusted = TrustedKeys::new([PublicKey::new(signer.verifying_key())]);
    let settings = stackpin_registry::config::Settings {
        data_dir: dir.clone(),
        ..Default::default()
    };
    let store = stackpin_registry::storage::open(
        &stackpin_registry::storage::StorageUrl::File(dir.clone()),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (log_signer, _) = settings
        .signer(&store)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let registry = Arc::new(
        Registry::open_at(
            &dir,
            Options {
                trusted,
                limits: Limits::default(),
                ..Options::new(store, log_signer)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let started = Instant::now();
    let concurrency = 256u64;
    let signer = Arc::new(signer);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (registry, signer) = (registry.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < artifacts {
                let rid = format!("bulk-{i:07}");
                let body = format!("{{\"bulk\":{i}}}");
                let env = signing::sign_envelope(
                    &signing::publish_statement(
                        &rid.parse().unwrap_or_else(|e| panic!("{e}")),
                        &Digest::of(body.as_bytes()),
                    ),
                    &signer,
                );
                let mut p = registry
                    .begin_publish(&rid, "", &env, body.len() as u64)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                p.push(bytes::Bytes::copy_from_slice(body.as_bytes()))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                registry
                    .finish_publish(p)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!(
        "published {artifacts} artifacts in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let base = Timestamp::from_micros(1_577_836_800_000_000).unwrap_or_else(|e| panic!("{e}"));
    // One pin of its own before all others: an environment whose live pin
    // lies at the start of the log (proving it still live reads the log).
    registry
        .pin(
            &"early".parse().unwrap_or_else(|e| panic!("{e}")),
            &ArtifactRef::Release("bulk-0000000".parse().unwrap_or_else(|e| panic!("{e}"))),
            Some(base),
            None,
            &Default::default(),
            "bulk-load",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    // One task per environment, pinning in order; environments commit
    // together, so each batch carries one pin per environment.
    let mut tasks = Vec::new();
    let per_env = pins / envs;
    for e in 0..envs {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let env = format!("env-{e}").parse().unwrap_or_else(|e| panic!("{e}"));
            for n in 0..per_env {
                let at = base.saturating_add_micros(i64::try_from(n).unwrap_or(0) * 1_000_000);
                let rid = format!("bulk-{:07}", (n * envs + e) % artifacts.max(1));
                let what = ArtifactRef::Release(rid.parse().unwrap_or_else(|e| panic!("{e}")));
                registry
                    .pin(
                        &env,
                        &what,
                        Some(at),
                        None,
                        &Default::default(),
                        "bulk-load",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if e == 0 && n % 10_000 == 0 && n > 0 {
                    eprintln!("  {} pins", n * envs);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "pinned {} in {secs:.1}s ({:.0}/s)",
        per_env * envs,
        (per_env * envs) as f64 / secs
    );
    registry.flush().await.unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{}",
        registry.checkpoint().unwrap_or_else(|e| panic!("{e}")).size
    );
}
