//! Several replicas on one S3 bucket (a real SeaweedFS), and an S3 outage
//! in the middle of a load.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt as _;
use stackpin_tests::oci::{get, json as json_of};
use stackpin_tests::s3::Seaweed;
use stackpin_tests::{Run, Server, stackpin};
use tempfile::TempDir;

/// A folder with a shared log key and a trusted publisher.
fn keys(dir: &Path) {
    std::fs::create_dir(dir.join("trusted")).unwrap();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "log.pem"]).ok();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem")).unwrap();
}

fn replica(dir: &Path, name: &str, weed: &Seaweed, prefix: &str) -> Server {
    try_replica(dir, name, weed, prefix)
        .unwrap_or_else(|log| panic!("stackpin-registry did not start; its log:\n{log}"))
}

/// As [`replica`], for a start that may be refused: its log when it is.
fn try_replica(dir: &Path, name: &str, weed: &Seaweed, prefix: &str) -> Result<Server, String> {
    let storage = format!("s3://{}/{prefix}", stackpin_tests::s3::BUCKET);
    let (log_key, trusted) = (dir.join("log.pem"), dir.join("trusted"));
    Server::try_start_with_env(
        &dir.join(name),
        &[
            "--storage",
            &storage,
            "--s3-endpoint",
            &weed.endpoint(),
            "--log-signing-key",
            log_key.to_str().unwrap(),
            "--trusted-keys",
            trusted.to_str().unwrap(),
            "--poll-interval",
            "100ms",
            "--storage-timeout",
            "2s",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &weed.env(),
    )
}

fn cli(dir: &Path, server: &Server, args: &[&str]) -> Run {
    stackpin(dir, &server.url(), args)
}

fn publish(dir: &Path, server: &Server, release: &str, body: &str) -> Run {
    // One file per distinct body: concurrent writers must not share one.
    let file = format!(
        "{release}-{}.json",
        &stackpin_core::digest::Digest::of(body.as_bytes()).hex()[..16]
    );
    std::fs::write(dir.join(&file), body).unwrap();
    cli(
        dir,
        server,
        &["publish", &file, "--release-id", release, "--key", "ci.pem"],
    )
}

fn history(dir: &Path, server: &Server, env: &str) -> serde_json::Value {
    // A fresh resolve first: the replica catches up with the bucket.
    cli(
        dir,
        server,
        &[
            "resolve",
            "--fresh",
            "--env",
            env,
            "--at",
            "2999-01-01T00:00:00Z",
        ],
    )
    .ok();
    cli(
        dir,
        server,
        &[
            "--output", "json", "history", "--env", env, "--limit", "1000",
        ],
    )
    .json()
}

#[test]
fn two_replicas_on_one_bucket_stay_consistent_under_concurrent_writers() {
    let weed = Seaweed::start();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    keys(&dir);
    let servers = Arc::new([
        replica(&dir, "a", &weed, "two"),
        replica(&dir, "b", &weed, "two"),
    ]);
    for i in 0..3 {
        publish(
            &dir,
            &servers[i % 2],
            &format!("rel-{i}"),
            &format!("{{\"release\":{i}}}"),
        )
        .ok();
    }

    // 8 pinners across 3 environments, alternating replicas; and racing
    // publishes of one release id with different bytes.
    let envs = ["prod", "staging", "qa"];
    let mut threads = Vec::new();
    for w in 0..8usize {
        let (dir, servers) = (dir.clone(), servers.clone());
        threads.push(std::thread::spawn(move || {
            for j in 0..6usize {
                let server = &servers[(w + j) % 2];
                let env = envs[(w + j) % 3];
                let release = format!("rel-{}", j % 3);
                let reason = format!("w{w}-{j}");
                cli(
                    &dir,
                    server,
                    &[
                        "pin",
                        "--env",
                        env,
                        "--new-env",
                        "--release-id",
                        &release,
                        "--reason",
                        &reason,
                    ],
                )
                .ok();
            }
            // Four attempts per writer, all with different bytes: 32 in all.
            (0..4usize)
                .map(|k| {
                    let body = format!("{{\"writer\":{w},\"attempt\":{k}}}");
                    publish(&dir, &servers[(w + k) % 2], "contested", &body).code
                })
                .collect::<Vec<i32>>()
        }));
    }
    let codes: Vec<i32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(codes.len(), 32);
    assert_eq!(
        codes.iter().filter(|c| **c == 0).count(),
        1,
        "one binding wins: {codes:?}"
    );
    assert!(codes.iter().all(|c| *c == 0 || *c == 4), "{codes:?}");

    let mut total = 0;
    for env in envs {
        let a = history(&dir, &servers[0], env);
        let b = history(&dir, &servers[1], env);
        assert_eq!(a, b, "replicas disagree on {env}");
        let pins = a["pins"].as_array().unwrap();
        total += pins.len();
        let seqs: Vec<u64> = pins
            .iter()
            .rev()
            .map(|p| p["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{env} is not contiguous"
        );
        for pair in pins.windows(2) {
            assert_eq!(
                pair[0]["prev_pin"], pair[1]["entry_hash"],
                "{env}: chain broken"
            );
            assert!(pair[0]["activated_at"].as_str() >= pair[1]["activated_at"].as_str());
        }
        // Both replicas answer resolves at every pin's instant identically.
        for p in pins.iter().take(6) {
            let at = p["activated_at"].as_str().unwrap();
            let ra = cli(
                &dir,
                &servers[0],
                &["--output", "json", "resolve", "--env", env, "--at", at],
            )
            .json();
            let rb = cli(
                &dir,
                &servers[1],
                &["--output", "json", "resolve", "--env", env, "--at", at],
            )
            .json();
            assert_eq!(ra, rb);
        }
    }
    assert_eq!(total, 48, "every acknowledged pin is in some history");
    let list = cli(&dir, &servers[1], &["--output", "json", "list"]).json();
    assert_eq!(list["artifacts"].as_array().unwrap().len(), 4);

    // The shared log audits clean, with one log key for both replicas.
    let vkey = cli(
        &dir,
        &servers[0],
        &[
            "--output",
            "json",
            "checkpoint",
            "--log-key",
            &log_vkey(&dir),
            "--state-dir",
            "st",
        ],
    );
    vkey.ok();
    let audit = cli(
        &dir,
        &servers[1],
        &[
            "audit",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &log_vkey(&dir),
            "--state-dir",
            "st",
        ],
    );
    assert!(audit.ok().contains("ok: every check passed"), "{audit:?}");

    // Both replicas serve the same OCI bytes: asked at once for tar+gzip
    // archives neither has built, they agree on every manifest and layer.
    let tags = [
        "rel-0",
        "rel-1",
        "rel-2",
        "contested",
        "prod",
        "staging",
        "qa",
    ];
    let asked: Vec<_> = servers
        .iter()
        .map(|s| {
            let addr = s.tiles_addr();
            std::thread::spawn(move || {
                tags.iter()
                    .map(|tag| {
                        let m = get(addr, &format!("/v2/objectstack-tgz/manifests/{tag}"));
                        assert_eq!(m.status, 200, "{tag}: {m:?}");
                        let layer = json_of(&m)["layers"][0]["digest"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        let blob = get(addr, &format!("/v2/objectstack-tgz/blobs/{layer}"));
                        assert_eq!(blob.status, 200, "{tag}: {blob:?}");
                        (m.body, blob.body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<_> = asked.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(answers[0], answers[1], "replicas serve different OCI bytes");
}

/// The verifier key of the shared log key, via `stackpin-registry key`.
fn log_vkey(dir: &Path) -> String {
    let out = std::process::Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["key", "--log-signing-key"])
        .arg(dir.join("log.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn an_s3_outage_mid_load_is_unavailable_loses_nothing_and_heals_itself() {
    let mut weed = Seaweed::start();
    let tmp = TempDir::new().unwrap();
    let dir: PathBuf = tmp.path().to_path_buf();
    keys(&dir);
    let server = Arc::new(replica(&dir, "a", &weed, "outage"));
    publish(&dir, &server, "rel-0", "{\"release\":0}").ok();

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let codes: Arc<Mutex<BTreeMap<i32, usize>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(9);
    let load = {
        let (dir, server, acked, codes) =
            (dir.clone(), server.clone(), acked.clone(), codes.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while Instant::now() < stop_at {
                let reason = format!("load-{n}");
                n += 1;
                // No retries: the CLI's own would bridge the 3 s outage,
                // and this test is about what a single request sees.
                let run = cli(
                    &dir,
                    &server,
                    &[
                        "pin",
                        "--env",
                        "prod",
                        "--new-env",
                        "--release-id",
                        "rel-0",
                        "--reason",
                        &reason,
                        "--retries",
                        "0",
                    ],
                );
                *codes.lock().unwrap().entry(run.code).or_default() += 1;
                if run.code == 0 {
                    acked.lock().unwrap().push(reason);
                } else {
                    assert_eq!(run.code, 6, "an outage must read as unavailable: {run:?}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    weed.outage();
    std::thread::sleep(Duration::from_secs(3));
    weed.restart();
    load.join().unwrap();

    let codes = codes.lock().unwrap().clone();
    assert!(
        codes.get(&6).copied().unwrap_or(0) > 0,
        "no request saw the outage: {codes:?}"
    );
    // Writes succeeded again after the restart, without restarting stackpin.
    cli(
        &dir,
        &server,
        &[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "rel-0",
            "--reason",
            "after",
        ],
    )
    .ok();
    let pins = history(&dir, &server, "prod");
    let reasons: Vec<&str> = pins["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    for r in acked.lock().unwrap().iter() {
        assert!(
            reasons.contains(&r.as_str()),
            "acknowledged pin {r} was lost"
        );
    }
    let seqs: Vec<u64> = pins["pins"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    eprintln!(
        "outage run: exit codes {codes:?}, {} pins acknowledged",
        acked.lock().unwrap().len()
    );
}

/// What `resolve` answers in prod at a few instants, as JSON text.
fn prod_answers(dir: &Path, server: &Server) -> Vec<String> {
    ["2026-03-01T10:30:00Z", "2030-01-01T00:00:00Z"]
        .iter()
        .map(|at| {
            cli(
                dir,
                server,
                &["--output", "json", "resolve", "--env", "prod", "--at", at],
            )
            .ok()
            .to_owned()
        })
        .collect()
}

#[test]
fn on_a_bucket_an_edited_log_is_refused_and_a_damaged_index_is_rebuilt() {
    let weed = Seaweed::start();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    keys(&dir);
    let a = replica(&dir, "a", &weed, "edited");
    publish(&dir, &a, "rel-1", "{\"release\":1}").ok();
    publish(&dir, &a, "rel-2", "{\"release\":2}").ok();
    for (release, at) in [
        ("rel-1", "2026-03-01T10:00:00Z"),
        ("rel-2", "2026-03-01T11:00:00Z"),
    ] {
        cli(
            &dir,
            &a,
            &[
                "pin",
                "--env",
                "prod",
                "--new-env",
                "--release-id",
                release,
                "--activated-at",
                at,
            ],
        )
        .ok();
    }
    let answers = prod_answers(&dir, &a);

    // A second registry on a's data folder stops and deletes nothing.
    let log = try_replica(&dir, "a", &weed, "edited")
        .err()
        .expect("two registries on one folder");
    assert!(log.contains("is in use by another registry"), "{log}");
    assert_eq!(prod_answers(&dir, &a), answers);
    assert!(a.stop().success());

    // The tree hash over the first four leaves damaged, and the bucket's
    // newest checkpoint deleted: the index is blamed and rebuilt.
    let store = stackpin_registry::storage::open(
        &stackpin_registry::storage::StorageUrl::S3 {
            bucket: stackpin_tests::s3::BUCKET.to_owned(),
            prefix: "edited".to_owned(),
        },
        &weed.options(),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let checkpoint = object_store::path::Path::from(stackpin_core::layout::CHECKPOINT);
    // The stop stored the newest checkpoint (a conditional update on S3).
    let note = runtime
        .block_on(async { store.get(&checkpoint).await?.bytes().await })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&note).lines().nth(1),
        Some("4"),
        "{note:?}"
    );
    runtime.block_on(store.delete(&checkpoint)).unwrap();
    let hashes = dir.join("a/index/hashes");
    let mut bytes = std::fs::read(&hashes).unwrap();
    bytes[6 * 32] ^= 1;
    std::fs::write(&hashes, &bytes).unwrap();
    let a = replica(&dir, "a", &weed, "edited");
    assert!(
        a.log().contains("not the hash of its children"),
        "{}",
        a.log()
    );
    assert_eq!(prod_answers(&dir, &a), answers);

    // A damaged leaf hash in the running replica's index is blamed on the
    // index, not on the bucket.
    let key = std::process::Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["key", "--log-signing-key"])
        .arg(dir.join("log.pem"))
        .output()
        .unwrap();
    let vkey = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    let audit = || {
        cli(
            &dir,
            &a,
            // Checkpoints this test's CLI remembers stay in its folder.
            &[
                "--state-dir",
                "state",
                "audit",
                "--trusted-keys",
                "trusted",
                "--log-key",
                &vkey,
            ],
        )
    };
    audit().ok();
    let mut bytes = std::fs::read(&hashes).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&hashes, &bytes).unwrap();
    let run = audit();
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        run.code != 0
            && said.contains("the index's record of log entry 0 is damaged")
            && !said.contains("in storage no longer matches"),
        "{said}"
    );
    assert!(a.stop().success());

    // Pin #2 edited in the bucket to name rel-1 (valid by every rule): a
    // fresh replica refuses it instead of signing it.
    let entry = object_store::path::Path::from(stackpin_core::layout::object_key(3));
    let text = runtime
        .block_on(async { store.get(&entry).await?.bytes().await })
        .unwrap();
    let (d1, d2) = (
        stackpin_core::digest::Digest::of(b"{\"release\":1}").hex(),
        stackpin_core::digest::Digest::of(b"{\"release\":2}").hex(),
    );
    let edited = String::from_utf8(text.to_vec())
        .unwrap()
        .replace("rel-2", "rel-1")
        .replace(&d2, &d1);
    runtime
        .block_on(store.put(&entry, edited.into_bytes().into()))
        .unwrap();
    let log = try_replica(&dir, "fresh", &weed, "edited")
        .err()
        .expect("a fresh replica signed an edited log");
    assert!(
        log.contains("log/checkpoints/00000000000000000004")
            && log.contains("is not what the log key signed"),
        "{log}"
    );
}

/// A read-only registry on the bucket a writer writes (what a standby
/// reading a cross-region replica of the bucket does): it answers from
/// the writer's log and checkpoints, follows the writer, and refuses
/// writes, with no signing key of its own.
#[test]
fn a_read_only_registry_on_the_writers_bucket_follows_it_and_refuses_writes() {
    let weed = Seaweed::start();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    keys(&dir);
    let writer = replica(&dir, "w", &weed, "standby");
    publish(&dir, &writer, "rel-1", "{\"release\":1}").ok();
    publish(&dir, &writer, "rel-2", "{\"release\":2}").ok();
    cli(
        &dir,
        &writer,
        &["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"],
    )
    .ok();
    let storage = format!("s3://{}/standby", stackpin_tests::s3::BUCKET);
    let key = std::process::Command::new(stackpin_tests::bin("stackpin-registry"))
        .args([
            "key",
            "--storage",
            &storage,
            "--s3-endpoint",
            &weed.endpoint(),
        ])
        .arg("--log-signing-key")
        .arg(dir.join("log.pem"))
        .envs(weed.env())
        .output()
        .unwrap();
    assert!(key.status.success(), "{key:?}");
    let vkey = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    let trusted = dir.join("trusted");
    let standby = Server::try_start_with_env(
        &dir.join("r"),
        &[
            "--read-only",
            "--storage",
            &storage,
            "--s3-endpoint",
            &weed.endpoint(),
            "--log-vkey",
            &vkey,
            "--trusted-keys",
            trusted.to_str().unwrap(),
            "--poll-interval",
            "100ms",
        ],
        &weed.env(),
    )
    .unwrap_or_else(|log| panic!("the read-only registry did not start:\n{log}"));
    assert!(!dir.join("r/log-key.pem").exists());
    let on = |server: &Server, args: &[&str]| {
        stackpin_tests::stackpin_with(
            &dir,
            &server.url(),
            args,
            &[("STACKPIN_LOG_VKEY", vkey.as_str())],
        )
    };
    let status = |server: &Server| on(server, &["--output", "json", "status"]).json();
    // The standby's answer once it has caught up with `pins` pins. Until
    // then, a CLI that saw the writer's newer checkpoint refuses the
    // standby's older one (exit 5, "lags behind"): it never goes back.
    let caught_up = |pins: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = on(&standby, &["--output", "json", "status"]);
            if run.code == 0 {
                let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                if v["environments"][0]["pins"] == pins {
                    return v;
                }
            } else {
                assert_eq!(run.code, 5, "{run:?}");
                assert!(run.stderr.contains("lags behind"), "{run:?}");
            }
            assert!(
                Instant::now() < deadline,
                "the standby did not follow the writer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(
        caught_up(1)["environments"][0]["live"]["release_id"],
        "rel-1"
    );
    // The writer goes on; the standby follows.
    on(&writer, &["pin", "--env", "prod", "--release-id", "rel-2"]).ok();
    assert_eq!(
        caught_up(2)["environments"][0]["live"]["release_id"],
        "rel-2"
    );
    let refused = on(&standby, &["pin", "--env", "prod", "--release-id", "rel-1"]);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(refused.stderr.contains("read-only"), "{refused:?}");
    // Nothing it did reached the bucket: the writer's log is as it was.
    assert_eq!(status(&writer)["environments"][0]["pins"], 2);
}
