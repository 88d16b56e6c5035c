//! `stackpin-registry promote` on a standby storage that holds more than
//! its checkpoint signs, as a replicated bucket does when replication
//! stopped midway: what no checkpoint of the standby signs is set aside,
//! what the old epoch derived (stored tiles, webhook cursors) is forgotten,
//! a registry started on it writes in the new epoch, and one started after
//! a `promote` that stopped between its entry and its checkpoint does too.
//! Folders stand in for the buckets: `promote` reads both through the same
//! storage code, and the region-outage drill runs it on SeaweedFS.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stackpin_tests::world::World;
use stackpin_tests::{Server, copy_dir, stackpin};

/// A registry URL nothing listens on: proof that a command reached none.
const NOWHERE: &str = "http://127.0.0.1:1";

/// The names in `dir` (empty when it is not there), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|l| {
            l.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `stackpin-registry promote` on the folder storage `storage`.
fn promote(w: &World, storage: &Path) -> std::process::Output {
    Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["promote", "--actor", "oncall", "--output", "json"])
        .arg("--data-dir")
        .arg(w.dir.path().join(format!(
            "{}-data",
            storage.file_name().unwrap().to_string_lossy()
        )))
        .arg("--storage")
        .arg(format!("file://{}", storage.display()))
        .arg("--log-signing-key")
        .arg(w.data().join("log-key.pem"))
        .output()
        .unwrap()
}

/// A writable registry on the promoted folder storage `storage`.
fn registry(w: &World, storage: &Path) -> Server {
    let data = w.dir.path().join(format!(
        "{}-data",
        storage.file_name().unwrap().to_string_lossy()
    ));
    let storage = format!("file://{}", storage.display());
    let key = w.data().join("log-key.pem");
    let trusted = w.dir.path().join("trusted");
    Server::start(
        &data,
        &[
            "--storage",
            &storage,
            "--log-signing-key",
            key.to_str().unwrap(),
            "--trusted-keys",
            trusted.to_str().unwrap(),
        ],
    )
}

/// The stored checkpoint's origin line once it signs at least `size`
/// entries (a registry stores it at most once a second).
fn origin_once_signed(storage: &Path, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let note = std::fs::read_to_string(storage.join("log/checkpoint")).unwrap();
        let mut lines = note.lines();
        let origin = lines.next().unwrap().to_owned();
        if lines.next().and_then(|n| n.parse::<u64>().ok()) >= Some(size) {
            return origin;
        }
        assert!(
            Instant::now() < deadline,
            "the checkpoint in {} still signs fewer than {size} entries:\n{note}",
            storage.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pin of rel-1 on `server`, as a client that knows the log's key; its
/// log index.
fn pin(w: &World, server: &Server, state: &str) -> u64 {
    let state = w.dir.path().join(state);
    let pinned = stackpin(
        w.dir.path(),
        &server.url(),
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--output",
            "json",
            "pin",
            "--env",
            "prod",
            "--release-id",
            "rel-1",
            "--reason",
            "after the promotion",
            "--log-key",
            &w.vkey,
        ],
    )
    .json();
    pinned["log_index"].as_u64().unwrap()
}

/// `audit --from` the storage, with nothing running: its JSON report.
fn audit(w: &World, storage: &Path) -> serde_json::Value {
    stackpin(
        w.dir.path(),
        NOWHERE,
        &[
            "--output",
            "json",
            "audit",
            "--from",
            storage.to_str().unwrap(),
            "--trusted-keys",
            "trusted",
            "--log-key",
            &w.vkey,
        ],
    )
    .json()
}

#[test]
#[allow(clippy::too_many_lines)]
fn a_promoted_standby_sets_aside_what_it_cannot_prove_and_forgets_what_the_old_epoch_derived() {
    let w = World::new(&[]);
    w.three_releases();
    let data = w.data_signed_up_to(6);
    // The standby: the storage as it stood at size 6 (the log, the
    // history, the artifacts), then given what replication carried later
    // but not the checkpoint that signs it.
    let standby = w.dir.path().join("standby");
    for part in ["log", "blobs"] {
        copy_dir(&data.join(part), &standby.join(part));
    }
    let held_note = std::fs::read_to_string(standby.join("log/checkpoint")).unwrap();
    assert_eq!(held_note.lines().nth(1), Some("6"), "{held_note}");
    w.ship(4);
    let data = w.data_signed_up_to(8);
    let mut later = Vec::new();
    for (part, from) in [("log/entries", 6), ("log/checkpoints", 7)] {
        for name in names(&data.join(part)) {
            if name.parse::<u64>().unwrap() >= from {
                std::fs::copy(data.join(part).join(&name), standby.join(part).join(&name)).unwrap();
                later.push(format!("{part}/{name}"));
            }
        }
    }
    assert!(
        later.iter().any(|k| k.starts_with("log/entries")),
        "{later:?}"
    );
    // What the old epoch derived: stored tiles and webhook cursors, one
    // past the point the standby can prove and one before it.
    std::fs::create_dir_all(standby.join("tile/0")).unwrap();
    std::fs::write(standby.join("tile/0/000"), [0u8; 32]).unwrap();
    std::fs::write(standby.join("log/tiles-written"), b"256\n").unwrap();
    std::fs::create_dir_all(standby.join("webhooks/cursor")).unwrap();
    std::fs::write(standby.join("webhooks/cursor/ahead"), b"8\n").unwrap();
    std::fs::write(standby.join("webhooks/cursor/behind"), b"3\n").unwrap();
    // A second standby, promoted the same way, for the interrupted case.
    let interrupted = w.dir.path().join("interrupted");
    copy_dir(&standby, &interrupted);

    let out = promote(&w, &standby);
    assert!(out.status.success(), "{out:?}");
    let promoted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(promoted["epoch"], 2, "{promoted}");
    assert_eq!(promoted["previous_size"], 6, "{promoted}");
    assert_eq!(promoted["size"], 7, "{promoted}");
    // Everything past the held checkpoint is set aside, whole, and only it.
    let aside: Vec<String> = promoted["set_aside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(aside.len(), later.len(), "{aside:?} {later:?}");
    for key in &later {
        let kept = aside.iter().find(|a| a.ends_with(key.as_str())).unwrap();
        assert!(kept.starts_with("promotion/set-aside/2/"), "{kept}");
        assert_eq!(
            std::fs::read(standby.join(kept)).unwrap(),
            std::fs::read(data.join(key)).unwrap(),
            "{key}"
        );
    }
    let object = std::fs::read_to_string(standby.join("log/entries/00000000000000000006")).unwrap();
    assert!(object.contains("\"promotion\""), "{object}");
    assert!(
        names(&standby.join("log/checkpoints"))
            .iter()
            .all(|n| n.parse::<u64>().unwrap() <= 7)
    );
    // The old epoch's tiles go (the registry writes them again from the
    // new tree), a cursor past the point comes back to it, one before it
    // stays.
    assert!(names(&standby.join("tile/0")).is_empty());
    assert!(!standby.join("log/tiles-written").exists());
    assert_eq!(
        std::fs::read_to_string(standby.join("webhooks/cursor/ahead")).unwrap(),
        "6\n"
    );
    assert_eq!(
        std::fs::read_to_string(standby.join("webhooks/cursor/behind")).unwrap(),
        "3\n"
    );
    // A registry on it writes in epoch 2, right after the promotion entry.
    let b = registry(&w, &standby);
    assert_eq!(pin(&w, &b, "state-b"), 7);
    assert!(origin_once_signed(&standby, 8).ends_with("/epoch/2"));
    drop(b);
    let report = audit(&w, &standby);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["promotions"], 1, "{report}");

    // The interrupted case: the promotion entry written, the new epoch's
    // checkpoint not (the checkpoint is still the one it promoted from).
    let out = promote(&w, &interrupted);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(interrupted.join("log/checkpoint"), &held_note).unwrap();
    std::fs::remove_file(interrupted.join("log/checkpoints/00000000000000000007")).unwrap();
    let c = registry(&w, &interrupted);
    assert_eq!(pin(&w, &c, "state-c"), 7);
    let origin = origin_once_signed(&interrupted, 8);
    assert!(origin.ends_with("/epoch/2"), "{origin}\n{}", c.log());
    drop(c);
    let report = audit(&w, &interrupted);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["promotions"], 1, "{report}");
}

/// An old primary whose settings name its standby's storage
/// (`[[standby]]`) learns of a promotion there with no witness at all:
/// while it runs, within the check interval, and at a start, before its
/// first write. Its own epoch in the standby (the mirror's copy) stops
/// nothing.
#[test]
fn an_old_primary_stops_writing_once_its_standby_storage_is_promoted() {
    let elsewhere = tempfile::TempDir::new().unwrap();
    let standby = elsewhere.path().join("standby");
    let config = elsewhere.path().join("registry.toml");
    std::fs::write(
        &config,
        format!("[[standby]]\nstorage = \"file://{}\"\n", standby.display()),
    )
    .unwrap();
    let mut w = World::new(&["--config", config.to_str().unwrap()]);
    // A standby not there yet stops nothing, and is said once.
    w.three_releases();
    assert!(
        w.server
            .log()
            .contains("the standby's storage cannot be read"),
        "{}",
        w.server.log()
    );
    assert!(!standby.exists(), "reading the standby created it");
    let url = w.server.url();
    w.cli(&["mirror", &url, standby.to_str().unwrap()]).ok();
    w.server = w.server.restart();
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-1"])
        .ok();

    let out = promote(&w, &standby);
    assert!(out.status.success(), "{out:?}");
    // The running primary stops within the check interval (10 s); until
    // then its writes go on, and are the loss window.
    let deadline = Instant::now() + Duration::from_secs(30);
    for release in ["rel-2", "rel-1"].into_iter().cycle() {
        let run = w.cli(&["pin", "--env", "prod", "--release-id", release]);
        if run.code == 6 {
            assert!(run.stderr.contains("promoted"), "{run:?}");
            assert!(run.stderr.contains("standby storage"), "{run:?}");
            break;
        }
        run.ok();
        assert!(
            Instant::now() < deadline,
            "the primary still writes 30 s after its standby was promoted:\n{}",
            w.server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Started again, it refuses its very first write.
    w.server = w.server.restart();
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-3"])
        .fails(6, "standby storage");
    assert!(w.server.log().contains("promoted"), "{}", w.server.log());
}
