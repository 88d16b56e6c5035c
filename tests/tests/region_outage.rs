//! A region outage, drilled end to end with two real S3 servers (two
//! SeaweedFS on loopback: region A and region B) and a witness:
//!
//! 1. pins land on A's registry while `stackpin mirror --follow` copies its
//!    log into B's bucket;
//! 2. A's registry and its S3 server are SIGKILLed in the middle of the
//!    traffic;
//! 3. with no registry running, `restore --from` B's bucket returns the
//!    pair for an instant before the outage and says how far the mirror
//!    had come; a read-only registry on B answers the same;
//! 4. B is promoted (`stackpin-registry promote`, a new epoch) and takes
//!    pins, with the witness's cosignature, and the instant before the
//!    outage still resolves;
//! 5. A comes back, learns of the promotion from the witness and refuses
//!    writes; a client that saw the new epoch refuses A's checkpoints, and
//!    one with the policy accepts nothing A signs past what the witness
//!    cosigned before the outage;
//! 6. `stackpin loss-window` lists, by request id, exactly the pins A
//!    acknowledged that B never received; every other acknowledged pin is
//!    on B.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt as _;
use stackpin_tests::s3::{BUCKET, Seaweed, free_port};
use stackpin_tests::witness::{WitnessProc, witness_vkey};
use stackpin_tests::{Run, Server, stackpin_with};

/// The folder's keys: the log's, a publisher's (trusted), and the
/// witness settings the registries share.
fn keys(dir: &Path) {
    std::fs::create_dir(dir.join("trusted")).unwrap();
    for key in ["log.pem", "ci.pem"] {
        stackpin_with(dir, "http://127.0.0.1:1", &["keygen", "--out", key], &[]).ok();
    }
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem")).unwrap();
}

/// A writable (or, with `extra`, read-only) registry on `storage` at
/// `weed`, submitting to the witness in `config`.
fn registry(dir: &Path, name: &str, weed: &Seaweed, storage: &str, extra: &[&str]) -> Server {
    let (log_key, trusted, config) = (
        dir.join("log.pem"),
        dir.join("trusted"),
        dir.join("registry.toml"),
    );
    let mut args = vec![
        "--storage",
        storage,
        "--s3-endpoint",
        &weed.endpoint(),
        "--trusted-keys",
        trusted.to_str().unwrap(),
        "--poll-interval",
        "100ms",
        "--storage-timeout",
        "2s",
        "--http-listen",
        "127.0.0.1:0",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    if extra.is_empty() {
        args.extend([
            "--log-signing-key".to_owned(),
            log_key.display().to_string(),
            "--config".to_owned(),
            config.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::try_start_with_env(&dir.join(name), &args, &weed.env())
        .unwrap_or_else(|log| panic!("registry {name} did not start:\n{log}"))
}

/// The stackpin CLI with its own remembered state in `state` (one
/// operator's machine), the log key, and S3 credentials.
fn cli(dir: &Path, state: &str, server: &str, args: &[&str], vkey: &str) -> Run {
    let state = dir.join(state);
    stackpin_with(
        dir,
        server,
        args,
        &[
            ("STACKPIN_LOG_VKEY", vkey),
            ("STACKPIN_STATE_DIR", state.to_str().unwrap()),
            ("AWS_ACCESS_KEY_ID", "stackpin-test"),
            ("AWS_SECRET_ACCESS_KEY", "stackpin-test"),
            ("AWS_REGION", "us-east-1"),
        ],
    )
}

/// The size of the signed checkpoint stored in `prefix` of `weed`'s bucket.
fn stored_size(weed: &Seaweed, prefix: &str) -> Option<u64> {
    let url =
        stackpin_registry::storage::StorageUrl::parse(&format!("s3://{BUCKET}/{prefix}")).unwrap();
    let store = stackpin_registry::storage::open(&url, &weed.options()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let got = store
            .get(&object_store::path::Path::from("log/checkpoint"))
            .await
            .ok()?;
        let note = String::from_utf8(got.bytes().await.ok()?.to_vec()).ok()?;
        note.lines().nth(1)?.parse().ok()
    })
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_region_outage_fails_over_to_a_verified_mirror_and_never_forks() {
    let mut weed_a = Seaweed::start();
    let weed_b = Seaweed::start();
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().to_path_buf();
    keys(&dir);
    let storage_a = format!("s3://{BUCKET}/region-a");
    let storage_b = format!("s3://{BUCKET}/standby");

    // The log key's verifier, and a witness both regions submit to.
    let key = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["key", "--storage", &storage_a, "--s3-endpoint"])
        .arg(weed_a.endpoint())
        .arg("--log-signing-key")
        .arg(dir.join("log.pem"))
        .envs(weed_a.env())
        .output()
        .unwrap();
    assert!(key.status.success(), "{key:?}");
    let vkey = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    let witness_port = free_port();
    let witness_dir = dir.join("witness");
    let witness_name = "witness.example/w";
    let witness_key = witness_vkey(witness_name, &witness_dir);
    let witness = WitnessProc::start(witness_name, &witness_dir, &vkey, witness_port);
    std::fs::write(
        dir.join("registry.toml"),
        format!(
            "[[witness]]\nname = \"w\"\nvkey = \"{witness_key}\"\nurl = \
             \"http://127.0.0.1:{witness_port}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.txt"),
        format!("log {vkey}\nwitness W {witness_key}\nquorum W\n"),
    )
    .unwrap();

    // Region A: three releases, two pins; the instant between the second
    // pin and the traffic is the one restored later.
    let a = registry(&dir, "a", &weed_a, &storage_a, &[]);
    let on_a = |state: &str, args: &[&str]| cli(&dir, state, &a.url(), args, &vkey);
    for n in 1..=3 {
        let file = format!("rel-{n}.json");
        std::fs::write(dir.join(&file), format!("{{\"release\":{n}}}\n")).unwrap();
        on_a(
            "ops",
            &[
                "publish",
                &file,
                "--release-id",
                &format!("rel-{n}"),
                "--key",
                "ci.pem",
            ],
        )
        .ok();
    }
    on_a(
        "ops",
        &["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"],
    )
    .ok();
    on_a("ops", &["pin", "--env", "prod", "--release-id", "rel-2"]).ok();
    std::thread::sleep(Duration::from_millis(20));
    let before_outage = stackpin_core::time::Timestamp::now().to_string();
    std::thread::sleep(Duration::from_millis(20));

    // The mirror follows A into region B's bucket.
    let mirror_log = std::fs::File::create(dir.join("mirror.log")).unwrap();
    let mut mirror = Command::new(stackpin_tests::bin("stackpin"))
        .current_dir(&dir)
        .args([
            "mirror",
            &a.url(),
            &storage_b,
            "--follow",
            "--interval",
            "200ms",
            "--s3-endpoint",
            &weed_b.endpoint(),
        ])
        .env("STACKPIN_LOG_VKEY", &vkey)
        .env("STACKPIN_STATE_DIR", dir.join("mirror-state"))
        .envs(weed_b.env())
        .stdout(Stdio::null())
        .stderr(mirror_log)
        .spawn()
        .unwrap();
    wait_for("the mirror to copy the first pins", || {
        stored_size(&weed_b, "standby") >= Some(5)
    });

    // Traffic on A: each acknowledged pin, by request id and log index.
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (acknowledged, attempted, stop, dir, url, vkey) = (
            acknowledged.clone(),
            attempted.clone(),
            stop.clone(),
            dir.clone(),
            a.url(),
            vkey.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let id = format!("traffic-{n}");
                let release = if n % 2 == 0 { "rel-2" } else { "rel-3" };
                attempted.lock().unwrap().push(format!("{id}:pin:prod"));
                let run = cli(
                    &dir,
                    "traffic",
                    &url,
                    &[
                        "--output",
                        "json",
                        "--request-id",
                        &id,
                        "--timeout",
                        "3s",
                        "--retries",
                        "0",
                        "pin",
                        "--env",
                        "prod",
                        "--release-id",
                        release,
                    ],
                    &vkey,
                );
                if run.code == 0 {
                    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                    acknowledged
                        .lock()
                        .unwrap()
                        .push((id, v["log_index"].as_u64().unwrap()));
                }
            }
        })
    };
    wait_for("traffic on A", || acknowledged.lock().unwrap().len() >= 12);
    // The outage: A's registry and its S3 server, mid-traffic.
    a.kill();
    weed_a.outage();
    stop.store(true, Ordering::Release);
    traffic.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    // The mirror fails its rounds now; stopped between rounds, it lets go
    // of its lock.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &mirror.id().to_string()])
        .status();
    let stopped = mirror.wait().unwrap();
    let mirror_said = std::fs::read_to_string(dir.join("mirror.log")).unwrap();
    assert_eq!(stopped.code(), Some(143), "{mirror_said}");
    let mirrored = stored_size(&weed_b, "standby").unwrap();
    let (copied, lost): (Vec<_>, Vec<_>) = acknowledged
        .iter()
        .cloned()
        .partition(|(_, index)| *index < mirrored);
    eprintln!(
        "region outage: {} pins acknowledged by A during the traffic; the mirror held {mirrored} \
         entries; loss window {} entries ({:?})",
        acknowledged.len(),
        lost.len(),
        lost.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>()
    );

    // Nothing runs: the pair for the instant before the outage, from B.
    let offline = "http://127.0.0.1:1";
    let from_b = [
        "--from",
        storage_b.as_str(),
        "--s3-endpoint",
        &weed_b.endpoint(),
    ];
    let mut args = vec![
        "restore",
        "--env",
        "prod",
        "--at",
        &before_outage,
        "--out",
        "restored.json",
        "--trusted-keys",
        "trusted",
    ];
    args.extend(from_b);
    let restored = cli(&dir, "oncall", offline, &args, &vkey);
    restored.ok();
    assert_eq!(
        std::fs::read(dir.join("restored.json")).unwrap(),
        b"{\"release\":2}\n"
    );
    assert!(
        restored.stderr.contains("this mirror's last round"),
        "{restored:?}"
    );
    // Every pin acknowledged and copied is in B's log, by request id.
    let mut args = vec![
        "--output", "json", "history", "--env", "prod", "--limit", "1000",
    ];
    args.extend(from_b);
    let history = cli(&dir, "oncall", offline, &args, &vkey).json();
    let on_b: BTreeSet<u64> = history["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["log_index"].as_u64().unwrap())
        .collect();
    for (id, index) in &copied {
        assert!(on_b.contains(index), "{id} (entry {index}) is not on B");
    }

    // A read-only registry on B answers the same.
    let standby = registry(
        &dir,
        "b-ro",
        &weed_b,
        &storage_b,
        &["--read-only", "--log-vkey", &vkey],
    );
    let resolved = cli(
        &dir,
        "reader",
        &standby.url(),
        &[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            &before_outage,
        ],
        &vkey,
    )
    .json();
    assert_eq!(resolved["pin"]["release_id"], "rel-2", "{resolved}");
    drop(standby);

    // Promotion: B becomes the writer in epoch 2.
    let asked = Instant::now();
    let promote = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args([
            "promote",
            "--actor",
            "oncall",
            "--output",
            "json",
            "--storage",
            &storage_b,
            "--s3-endpoint",
            &weed_b.endpoint(),
        ])
        .arg("--log-signing-key")
        .arg(dir.join("log.pem"))
        .envs(weed_b.env())
        .output()
        .unwrap();
    assert!(promote.status.success(), "{promote:?}");
    let promoted: serde_json::Value = serde_json::from_slice(&promote.stdout).unwrap();
    assert_eq!(promoted["epoch"], 2, "{promoted}");
    assert_eq!(promoted["previous_size"], mirrored, "{promoted}");
    // A retried promote changes nothing: the storage is the writer's now.
    let again = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args([
            "promote",
            "--actor",
            "oncall",
            "--storage",
            &storage_b,
            "--s3-endpoint",
        ])
        .arg(weed_b.endpoint())
        .arg("--log-signing-key")
        .arg(dir.join("log.pem"))
        .envs(weed_b.env())
        .output()
        .unwrap();
    assert!(!again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already the writer's"),
        "{again:?}"
    );
    let b = registry(&dir, "b", &weed_b, &storage_b, &[]);
    let on_b = |state: &str, args: &[&str]| cli(&dir, state, &b.url(), args, &vkey);
    let first = on_b(
        "oncall",
        &[
            "--output",
            "json",
            "pin",
            "--env",
            "prod",
            "--release-id",
            "rel-1",
        ],
    )
    .json();
    eprintln!(
        "region outage: from promote to the first accepted write on B: {} ms",
        asked.elapsed().as_millis()
    );
    assert_eq!(first["log_index"], mirrored + 1, "{first}");
    // The instant before the outage resolves on the promoted side too,
    // and a client with the policy follows into epoch 2 once the witness
    // cosigns it.
    let resolved = on_b(
        "oncall",
        &[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            &before_outage,
        ],
    )
    .json();
    assert_eq!(resolved["pin"]["release_id"], "rel-2", "{resolved}");
    wait_for("the witness to cosign epoch 2", || {
        on_b("policy", &["checkpoint", "--policy", "policy.txt"]).code == 0
    });
    // The traffic's CLI verified pins of the loss window: it refuses
    // epoch 2 rather than forget them, and says how to go on.
    if !lost.is_empty() {
        let refused = on_b("traffic", &["checkpoint"]);
        assert_eq!(refused.code, 5, "{refused:?}");
        assert!(refused.stderr.contains("loss window"), "{refused:?}");
        assert!(
            refused.stderr.contains("stackpin trust forget"),
            "{refused:?}"
        );
    }
    // An audit of B's bucket, with nothing asked of a registry, checks the
    // promotion: its checkpoint is the log key's, its root the entries'.
    let audited = cli(
        &dir,
        "auditor",
        offline,
        &[
            "--output",
            "json",
            "audit",
            "--from",
            &storage_b,
            "--s3-endpoint",
            &weed_b.endpoint(),
            "--trusted-keys",
            "trusted",
        ],
        &vkey,
    )
    .json();
    assert_eq!(audited["ok"], true, "{audited}");
    assert_eq!(audited["promotions"], 1, "{audited}");

    // A comes back: it learns of the promotion from the witness and
    // refuses every write, naming it.
    weed_a.restart();
    let a = registry(&dir, "a", &weed_a, &storage_a, &[]);
    let on_a = |state: &str, args: &[&str]| cli(&dir, state, &a.url(), args, &vkey);
    // Its witness told it at start, before it took a write.
    on_a(
        "late",
        &[
            "--request-id",
            "after-return",
            "pin",
            "--env",
            "prod",
            "--release-id",
            "rel-3",
        ],
    )
    .fails(6, "promoted");
    assert!(a.log().contains("promoted"), "{}", a.log());
    // A client that followed the promotion refuses A outright.
    let refused = on_a("policy", &["checkpoint", "--policy", "policy.txt"]);
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(
        refused.stderr.contains("old primary") || refused.stderr.contains("quorum"),
        "{refused:?}"
    );
    // A client with the policy that never saw epoch 2 accepts nothing A
    // signed past what the witness had cosigned before the outage.
    let fresh = on_a(
        "fresh",
        &["--output", "json", "checkpoint", "--policy", "policy.txt"],
    );
    if fresh.code == 0 {
        let size = fresh.json()["size"].as_u64().unwrap();
        let before = acknowledged.iter().map(|(_, i)| i + 1).max().unwrap();
        assert!(
            size <= before,
            "a policy client accepted A's checkpoint of {size}, beyond {before}"
        );
    } else {
        assert_eq!(fresh.code, 5, "{fresh:?}");
    }

    // The loss window, by request id, from A's storage.
    let window = cli(
        &dir,
        "oncall",
        offline,
        &[
            "--output",
            "json",
            "loss-window",
            &storage_a,
            &storage_b,
            "--old-endpoint",
            &weed_a.endpoint(),
            "--s3-endpoint",
            &weed_b.endpoint(),
        ],
        &vkey,
    )
    .json();
    eprintln!("region outage: the loss window listed from A: {window}");
    assert_eq!(window["promotion_index"], mirrored, "{window}");
    let listed: BTreeSet<String> = window["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["request_id"].as_str().map(str::to_owned))
        .collect();
    // Every acknowledged pin B lacks is listed; what else is listed was in
    // flight when A died (sent, never acknowledged).
    let scoped = |id: &String| format!("{id}:pin:prod");
    let expected: BTreeSet<String> = lost.iter().map(|(id, _)| scoped(id)).collect();
    assert!(listed.is_superset(&expected), "{window}");
    let attempted: BTreeSet<String> = attempted.lock().unwrap().iter().cloned().collect();
    for id in listed.difference(&expected) {
        assert!(
            attempted.contains(id),
            "{id} is listed but was never sent: {window}"
        );
    }
    assert_eq!(
        window["entries"].as_array().unwrap().len(),
        listed.len(),
        "every entry of the window records its request id: {window}"
    );
    drop(witness);
}
