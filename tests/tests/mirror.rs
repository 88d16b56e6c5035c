//! `stackpin mirror` and `restore --from`, with the real binaries: a
//! registry's log copied into a folder (verified, incremental, its
//! artifacts checked), restored from with no registry reachable, refused
//! when altered, and a forked registry (a copy of the data folder, signing
//! with the same key, given other pins) refused with the evidence kept and
//! the mirror untouched. `--follow` keeps the copy current and writes its
//! figures for Prometheus.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use stackpin_tests::world::{T2, T3, World};
use stackpin_tests::{Server, copy_dir, stackpin};

/// A registry URL nothing listens on: proof that a command reached none.
const NOWHERE: &str = "http://127.0.0.1:1";

#[test]
#[allow(clippy::too_many_lines)]
fn a_mirror_is_verified_incremental_restorable_offline_and_refuses_a_fork() {
    let w = World::new(&[]);
    w.three_releases();
    let url = w.server.url();
    let mirror = w.dir.path().join("mirror");
    let dest = mirror.to_str().unwrap();

    let first = w.cli(&["--output", "json", "mirror", &url, dest]).json();
    assert_eq!(first["from_size"], 0, "{first}");
    assert_eq!(first["entries_copied"], 6, "{first}");
    assert_eq!(first["blobs_copied"], 3, "{first}");
    // Nothing new: nothing copied.
    let again = w.cli(&["--output", "json", "mirror", &url, dest]).json();
    assert_eq!(again["entries_copied"], 0, "{again}");
    // What an interrupted round leaves (a staged chunk, an object past the
    // checkpoint) is set aside by the next one.
    std::fs::create_dir_all(mirror.join("mirror/staging")).unwrap();
    std::fs::write(mirror.join("mirror/staging/00000000000000000006"), b"junk").unwrap();
    std::fs::write(mirror.join("log/entries/00000000000000000009"), b"junk").unwrap();
    // A fourth release: only it is copied.
    w.ship(4);
    let more = w.cli(&["--output", "json", "mirror", &url, dest]).json();
    assert_eq!(more["from_size"], 6, "{more}");
    assert_eq!(more["entries_copied"], 2, "{more}");
    assert_eq!(more["blobs_copied"], 1, "{more}");
    assert!(!mirror.join("log/entries/00000000000000000009").exists());
    assert!(!mirror.join("mirror/staging").exists());

    // Restored from the mirror, with no registry to reach.
    let offline = |args: &[&str]| stackpin(w.dir.path(), NOWHERE, args);
    // A restore plan for T3 from a folder, with nothing running.
    let plan_from = |from: &str| {
        offline(&[
            "restore",
            "--from",
            from,
            "--env",
            "prod",
            "--at",
            T3,
            "--plan",
            "--log-key",
            &w.vkey,
        ])
    };
    let restored = offline(&[
        "--output",
        "json",
        "restore",
        "--from",
        dest,
        "--env",
        "prod",
        "--at",
        "2026-03-01T11:30:00Z",
        "--out",
        "offline.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ])
    .json();
    assert_eq!(restored["pin"]["release_id"], "rel-2", "{restored}");
    assert_eq!(restored["live_from"], "2026-03-01T11:00:00.000000Z");
    assert_eq!(restored["live_until"], "2026-03-01T12:00:00.000000Z");
    assert_eq!(w.read("offline.json"), w.read("a2.json"));
    offline(&[
        "verify",
        "offline.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ])
    .ok();
    // The same answer the registry gives.
    assert_eq!(w.release_at(T2), "rel-2");
    let text = plan_from(dest);
    assert!(text.ok().contains("release    rel-3"), "{text:?}");
    // History, status and a full audit read the mirror too.
    let history = offline(&[
        "--output",
        "json",
        "history",
        "--from",
        dest,
        "--env",
        "prod",
        "--log-key",
        &w.vkey,
    ])
    .json();
    let seen: Vec<&str> = history["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["release_id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["rel-4", "rel-3", "rel-2", "rel-1"], "{history}");
    let status = offline(&[
        "--output",
        "json",
        "status",
        "--from",
        dest,
        "--log-key",
        &w.vkey,
    ])
    .json();
    assert_eq!(status["environments"][0]["live"]["release_id"], "rel-4");
    assert_eq!(status["environments"][0]["pins"], 4);
    let audit = offline(&[
        "--output",
        "json",
        "audit",
        "--data-dir",
        dest,
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ])
    .json();
    assert_eq!(audit["ok"], true, "{audit}");
    // Without the log's key nothing is read.
    let no_key = stackpin(
        w.dir.path(),
        NOWHERE,
        &[
            "restore", "--from", dest, "--env", "prod", "--at", T3, "--plan",
        ],
    );
    assert_eq!(no_key.code, 5, "{no_key:?}");

    // An altered mirror is refused.
    let altered = w.dir.path().join("altered");
    copy_dir(&mirror, &altered);
    let object = altered.join("log/entries/00000000000000000000");
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.iter().position(|b| *b == b'1').unwrap();
    bytes[at] = b'2';
    std::fs::write(&object, bytes).unwrap();
    let refused = plan_from(altered.to_str().unwrap());
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(
        refused.stderr.contains("do not lead to the root"),
        "{refused:?}"
    );
    // A storage is read only as far as a registry writes: a swollen
    // checkpoint is refused unread, and so is an artifact longer than
    // --max-download, with nothing written.
    let swollen = w.dir.path().join("swollen");
    copy_dir(&mirror, &swollen);
    std::fs::write(swollen.join("log/checkpoint"), vec![b'x'; 1 << 20]).unwrap();
    let refused = plan_from(swollen.to_str().unwrap());
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("1048576 bytes, more than the 65536"),
        "{refused:?}"
    );
    let capped = offline(&[
        "restore",
        "--from",
        dest,
        "--env",
        "prod",
        "--at",
        T3,
        "--out",
        "capped.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
        "--max-download",
        "16",
    ]);
    assert_eq!(capped.code, 2, "{capped:?}");
    assert!(
        capped
            .stderr
            .contains("more than --max-download allows (16 bytes)"),
        "{capped:?}"
    );
    assert!(!w.dir.path().join("capped.json").exists());

    // A fork: a copy of the data folder, signing with the same key, given
    // another pin, while the original takes its own.
    let data = w.data_signed_up_to(8);
    let forked_dir = w.dir.path().join("forked-data");
    copy_dir(&data, &forked_dir);
    let _ = std::fs::remove_file(forked_dir.join("registry.lock"));
    let forked = Server::start(&forked_dir, &[]);
    stackpin(
        w.dir.path(),
        &forked.url(),
        &[
            "pin",
            "--env",
            "prod",
            "--release-id",
            "rel-1",
            "--reason",
            "fork",
            "--log-key",
            &w.vkey,
        ],
    )
    .ok();
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-2"])
        .ok();
    let genuine = w.cli(&["--output", "json", "mirror", &url, dest]).json();
    assert_eq!(genuine["entries_copied"], 1, "{genuine}");
    let before = std::fs::read(mirror.join("log/checkpoint")).unwrap();
    // The fork's checkpoint of the same size, then a larger one: both
    // refused, each with its evidence, and the mirror untouched.
    let fork = w.cli(&["mirror", &forked.url(), dest]);
    assert_eq!(fork.code, 5, "{fork:?}");
    assert!(
        fork.stderr.contains("is not consistent with the mirror's"),
        "{fork:?}"
    );
    stackpin(
        w.dir.path(),
        &forked.url(),
        &[
            "pin",
            "--env",
            "prod",
            "--release-id",
            "rel-3",
            "--log-key",
            &w.vkey,
        ],
    )
    .ok();
    let fork = w.cli(&["mirror", &forked.url(), dest]);
    assert_eq!(fork.code, 5, "{fork:?}");
    assert!(
        fork.stderr.contains("followed by the source's 1 new ones"),
        "{fork:?}"
    );
    assert_eq!(
        std::fs::read(mirror.join("log/checkpoint")).unwrap(),
        before
    );
    let evidence: Vec<_> = std::fs::read_dir(mirror.join("mirror/refused"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(evidence.len(), 2);
    assert!(
        evidence.iter().all(|e| e.contains(&forked.url())),
        "{evidence:?}"
    );
    // The genuine source still mirrors on.
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-4"])
        .ok();
    let genuine = w.cli(&["--output", "json", "mirror", &url, dest]).json();
    assert_eq!(genuine["entries_copied"], 1, "{genuine}");

    // A round interrupted after its entries moved into the log, before its
    // checkpoint: the next round keeps that object as it is (a registry
    // serving the folder may have applied it) and goes on after it.
    let size = genuine["size"].as_u64().unwrap();
    let checkpoint = std::fs::read(mirror.join("log/checkpoint")).unwrap();
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-1"])
        .ok();
    w.cli(&["mirror", &url, dest]).ok();
    std::fs::write(mirror.join("log/checkpoint"), &checkpoint).unwrap();
    std::fs::remove_file(mirror.join(format!("log/checkpoints/{:020}", size + 1))).unwrap();
    let object = mirror.join(format!("log/entries/{size:020}"));
    let interrupted = std::fs::read(&object).unwrap();
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-2"])
        .ok();
    let resumed = w.cli(&["--output", "json", "mirror", &url, dest]).json();
    assert_eq!(resumed["from_size"], size, "{resumed}");
    assert_eq!(resumed["size"], size + 2, "{resumed}");
    assert_eq!(std::fs::read(&object).unwrap(), interrupted);
    assert!(
        mirror
            .join(format!("log/entries/{:020}", size + 1))
            .exists()
    );
    let audit = offline(&[
        "--output",
        "json",
        "audit",
        "--data-dir",
        dest,
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ])
    .json();
    assert_eq!(audit["ok"], true, "{audit}");

    // A data folder is a source too.
    let from_folder = w.dir.path().join("from-folder");
    let copied = w
        .cli(&[
            "--output",
            "json",
            "mirror",
            data.to_str().unwrap(),
            from_folder.to_str().unwrap(),
        ])
        .json();
    assert!(copied["entries_copied"].as_u64().unwrap() >= 8, "{copied}");

    // --follow: the copy keeps up, and says so in its metrics file.
    let metrics = w.dir.path().join("mirror.prom");
    let mut follower = std::process::Command::new(stackpin_tests::bin("stackpin"))
        .current_dir(w.dir.path())
        .env("STACKPIN_LOG_VKEY", &w.vkey)
        .env("STACKPIN_STATE_DIR", w.dir.path().join("follow-state"))
        .args([
            "mirror",
            &url,
            dest,
            "--follow",
            "--interval",
            "200ms",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-3"])
        .ok();
    let size = w.cli(&["--output", "json", "checkpoint"]).json()["size"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = format!("stackpin_mirror_size {size}\n");
    loop {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        if text.contains(&line) {
            assert!(text.contains("stackpin_mirror_lag_entries "), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not reach {size}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // While it runs, a second mirror into the same folder is refused; so is
    // a running registry's own data folder.
    let second = w.cli(&["mirror", &url, dest]);
    assert_eq!(second.code, 2, "{second:?}");
    assert!(
        second.stderr.contains("another `stackpin mirror`"),
        "{second:?}"
    );
    let onto_writer = w.cli(&["mirror", &url, w.data().to_str().unwrap()]);
    assert_eq!(onto_writer.code, 2, "{onto_writer:?}");
    assert!(
        onto_writer.stderr.contains("running registry"),
        "{onto_writer:?}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
}

/// A mirror in an Azure container (a real Azurite): copied from a
/// registry, then read with nothing running by `restore`, `history` and
/// `audit --from az://…`; the lock goes with the run, so the next round
/// runs (and copies nothing new).
#[test]
fn a_mirror_in_an_azure_container_serves_restores_with_nothing_running() {
    use stackpin_tests::remote::{Azurite, Remote as _};
    let azurite = Azurite::start();
    let w = World::new(&[]);
    w.three_releases();
    let dest = azurite.storage_url("mirror");
    let endpoint = azurite.server_args()[1].clone();
    let env: Vec<(&str, String)> = azurite.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let copied = w
        .cli_with(
            &[
                "--output",
                "json",
                "mirror",
                &w.server.url(),
                &dest,
                "--azure-endpoint",
                &endpoint,
            ],
            &env,
        )
        .json();
    assert_eq!(copied["size"], 6, "{copied}");
    assert_eq!(copied["blobs_copied"], 3, "{copied}");
    let offline = |args: &[&str]| {
        let mut vars = env.clone();
        vars.push(("STACKPIN_LOG_VKEY", w.vkey.as_str()));
        stackpin_tests::stackpin_with(w.dir.path(), NOWHERE, args, &vars)
    };
    let from = [
        "--from",
        dest.as_str(),
        "--azure-endpoint",
        endpoint.as_str(),
    ];
    let mut restore = vec![
        "restore",
        "--env",
        "prod",
        "--at",
        T2,
        "--out",
        "from-azure.json",
        "--trusted-keys",
        "trusted",
    ];
    restore.extend(from);
    let restored = offline(&restore);
    restored.ok();
    assert!(
        restored.stderr.contains("this mirror's last round"),
        "{restored:?}"
    );
    assert_eq!(
        std::fs::read(w.dir.path().join("from-azure.json")).unwrap(),
        b"{\"release\":2,\"objects\":[]}\n"
    );
    let mut history = vec!["--output", "json", "history", "--env", "prod"];
    history.extend(from);
    assert_eq!(
        offline(&history).json()["pins"].as_array().unwrap().len(),
        3
    );
    let mut audit = vec!["--output", "json", "audit", "--trusted-keys", "trusted"];
    audit.extend(from);
    assert_eq!(offline(&audit).json()["ok"], true);
    // The first run let go of its lock: the next one runs.
    let again = w
        .cli_with(
            &[
                "--output",
                "json",
                "mirror",
                &w.server.url(),
                &dest,
                "--azure-endpoint",
                &endpoint,
            ],
            &env,
        )
        .json();
    assert_eq!(again["entries_copied"], 0, "{again}");

    // A promotion while a mirror still runs into the container: its lock
    // makes `promote` refuse. Once the lock is gone (a mirror taken for
    // dead), promote goes ahead, and the running mirror commits nothing
    // more: its next round finds the storage no longer its own and stops.
    let store = {
        use stackpin_registry::storage::{StorageUrl, open};
        open(&StorageUrl::parse(&dest).unwrap(), &azurite.options()).unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let object = |key: &str| {
        use object_store::ObjectStoreExt as _;
        let key = object_store::path::Path::from(key);
        rt.block_on(async { store.get(&key).await.ok()?.bytes().await.ok() })
    };
    let mut follower = std::process::Command::new(stackpin_tests::bin("stackpin"))
        .current_dir(w.dir.path())
        .env("STACKPIN_LOG_VKEY", &w.vkey)
        .env("STACKPIN_STATE_DIR", w.dir.path().join("follow-state"))
        .envs(env.iter().copied())
        .args([
            "mirror",
            &w.server.url(),
            &dest,
            "--azure-endpoint",
            &endpoint,
            "--follow",
            "--interval",
            "200ms",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while object("mirror/lock").is_none() {
        assert!(Instant::now() < deadline, "the follower took no lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let promote = || {
        std::process::Command::new(stackpin_tests::bin("stackpin-registry"))
            .args(["promote", "--actor", "oncall", "--storage", &dest])
            .args(["--azure-endpoint", &endpoint])
            .arg("--data-dir")
            .arg(w.dir.path().join("promote-data"))
            .arg("--log-signing-key")
            .arg(w.data().join("log-key.pem"))
            .envs(azurite.env())
            .output()
            .unwrap()
    };
    let refused = promote();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop it before promoting"),
        "{refused:?}"
    );
    rt.block_on(async {
        use object_store::ObjectStoreExt as _;
        store
            .delete(&object_store::path::Path::from("mirror/lock"))
            .await
    })
    .unwrap();
    let promoted = promote();
    assert!(promoted.status.success(), "{promoted:?}");
    let note = object("log/checkpoint").unwrap();
    // The source moves on; the follower's next round refuses to commit.
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-1"])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the follower still runs after the promotion"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("changed under the mirror"), "{stderr}");
    // The promoted checkpoint is as promote left it (epoch 2), and the
    // mirror took the promotion entry for no fork: it kept no evidence.
    assert_eq!(object("log/checkpoint").unwrap(), note);
    let refused: Vec<_> = rt
        .block_on(async {
            use futures::TryStreamExt as _;
            store
                .list(Some(&object_store::path::Path::from("mirror/refused")))
                .try_collect::<Vec<_>>()
                .await
        })
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    let note = String::from_utf8(note.to_vec()).unwrap();
    assert!(note.lines().next().unwrap().ends_with("/epoch/2"), "{note}");
}
