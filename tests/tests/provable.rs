//! Every answer provable: restore writes a proof that verifies offline,
//! audit walks the log, tampering is caught, revoked keys stop publishes, and
//! a rewritten log is caught by the CLI's saved checkpoint.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use stackpin_tests::world::{T1, T2, T3, World};
use stackpin_tests::{Server, copy_dir};

fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Asserts an audit failed (exit 5) and its report lists `needle`.
fn audit_fails(run: &stackpin_tests::Run, needle: &str) {
    assert_eq!(run.code, 5, "{run:#?}");
    assert!(
        run.stdout.contains(needle),
        "report lacks {needle:?}: {run:#?}"
    );
}

fn audit(w: &World, data_dir: Option<&std::path::Path>) -> stackpin_tests::Run {
    let mut args = vec!["audit", "--trusted-keys", "trusted", "--log-key", &w.vkey];
    let dir;
    if let Some(d) = data_dir {
        dir = d.display().to_string();
        args.extend(["--data-dir", &dir]);
    }
    w.cli(&args)
}

#[test]
fn restore_writes_a_proof_that_verifies_offline_and_audit_passes() {
    let w = World::new(&[]);
    w.three_releases();
    let out = w
        .restore(
            "2026-03-01T11:30:00Z",
            "restored.json",
            &["--output", "json"],
        )
        .json();
    assert_eq!(out["pin"]["release_id"], "rel-2");
    assert_eq!(out["proof"], "restored.json.tlog-proof");
    let proof = std::fs::read_to_string(w.dir.path().join("restored.json.tlog-proof")).unwrap();
    assert!(
        proof.starts_with("c2sp.org/tlog-proof@v1\nextra "),
        "{proof}"
    );
    let origin = w.vkey.split('+').next().unwrap();
    assert!(origin.starts_with("stackpin.local/log/"), "{origin}");
    assert!(proof.contains(&format!("\n\n{origin}\n")), "{proof}");

    // Offline: no server needed (point the CLI at a closed port).
    let offline = stackpin_tests::stackpin(
        w.dir.path(),
        "http://127.0.0.1:1",
        &[
            "--output",
            "json",
            "verify",
            "restored.json",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &w.vkey,
        ],
    );
    let v = offline.json();
    assert_eq!(v["release_id"], "rel-2");
    assert_eq!(v["live_from"], "2026-03-01T11:00:00.000000Z");
    assert_eq!(v["live_until"], "2026-03-01T12:00:00.000000Z");

    // A wrong file, a wrong log key, or a flipped proof byte: exit 5, naming the check.
    std::fs::copy(
        w.dir.path().join("a1.json"),
        w.dir.path().join("other.json"),
    )
    .unwrap();
    std::fs::copy(
        w.dir.path().join("restored.json.tlog-proof"),
        w.dir.path().join("other.json.tlog-proof"),
    )
    .unwrap();
    w.cli(&[
        "verify",
        "other.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ])
    .fails(5, "artifact digest");
    let other_key = "stackpin.local/log+1b650fc4+AR9WwQh3Tla6z4R0HLWrxcASTXyGyuo/rzaXIcLuBHqT";
    if other_key != w.vkey {
        w.cli(&[
            "verify",
            "restored.json",
            "--trusted-keys",
            "trusted",
            "--log-key",
            other_key,
        ])
        .fails(5, "checkpoint signature");
    }
    let proof_path = w.dir.path().join("restored.json.tlog-proof");
    let len = std::fs::metadata(&proof_path).unwrap().len() as usize;
    for at in [30, len / 3, len / 2, len - 40] {
        let original = std::fs::read(&proof_path).unwrap();
        flip_byte(&proof_path, at);
        w.cli(&[
            "verify",
            "restored.json",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &w.vkey,
        ])
        .fails(5, "verification failed");
        std::fs::write(&proof_path, original).unwrap();
    }

    // The checkpoint command verifies and remembers; audit passes both ways.
    let cp = w
        .cli(&["--output", "json", "checkpoint", "--log-key", &w.vkey])
        .json();
    assert_eq!(cp["size"], 6);
    let report = audit(&w, None);
    assert!(report.ok().contains("ok: every check passed"), "{report:?}");
    let data = w.data_signed_up_to(6);
    let report = audit(&w, Some(&data));
    assert!(
        report.ok().contains("entries      6 (checkpoint covers 6)"),
        "{report:?}"
    );
}

#[test]
fn a_flipped_byte_in_a_blob_or_an_entry_fails_restore_and_audit() {
    let w = World::new(&[]);
    w.three_releases();
    let data = w.data_signed_up_to(6);
    let stat = w
        .cli(&["--output", "json", "stat", "--release-id", "rel-1"])
        .json();
    let digest = stat["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = data.join("blobs/sha256").join(&digest);
    let original = std::fs::read(&blob).unwrap();

    flip_byte(&blob, 3);
    w.restore(T1, "r1.json", &[]).fails(5, "data loss");
    assert!(!w.dir.path().join("r1.json").exists());
    audit_fails(&audit(&w, None), "[blob]");
    audit_fails(&audit(&w, Some(&data)), "[blob]");
    std::fs::write(&blob, &original).unwrap();
    w.restore(T1, "r1.json", &[]).ok();

    // Entry 3 is pin #1 of prod (entries 0..=2 are the publishes).
    let entry = data.join("log/entries/00000000000000000003");
    let original = std::fs::read(&entry).unwrap();
    flip_byte(&entry, original.len() / 2);
    w.restore(T1, "r1-again.json", &[]).fails(5, "data loss");
    audit_fails(&audit(&w, None), "no longer matches");
    audit_fails(&audit(&w, Some(&data)), "[checkpoint]");
    std::fs::write(&entry, &original).unwrap();
    audit(&w, None).ok();
}

#[test]
fn a_revoked_key_stops_new_publishes_while_older_artifacts_keep_verifying() {
    let w = World::new(&[]);
    w.three_releases();
    w.restore(T3, "before.json", &[]).ok();
    // rel-2 was signed by the OpenSSL key ("ops"): revoke it from now on.
    w.cli(&[
        "key",
        "revoke",
        "trusted/ops.pub.pem",
        "--reason",
        "rotated",
    ])
    .ok();
    let keys = w.cli(&["--output", "json", "key", "list"]).json();
    let revoked: Vec<_> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| !k["revoked_at"].is_null())
        .collect();
    assert_eq!(revoked.len(), 1);
    w.write("new.json", b"{\"release\":4}");
    w.cli(&[
        "publish",
        "new.json",
        "--release-id",
        "rel-4",
        "--key",
        "ops.pem",
    ])
    .fails(2, "was revoked at");
    w.cli(&["key", "revoke", "trusted/ops.pub.pem"])
        .fails(4, "already revoked");
    // The other publisher is unaffected, and rel-2 (logged before) still restores.
    w.cli(&[
        "publish",
        "new.json",
        "--release-id",
        "rel-4",
        "--key",
        "ci.pem",
    ])
    .ok();
    w.restore(T2, "rel2.json", &[]).ok();
    assert_eq!(w.read("rel2.json"), w.read("a2.json"));
    w.cli(&[
        "verify",
        "rel2.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ])
    .ok();
    audit(&w, None).ok();

    // A key added through the log can publish from then on.
    stackpin_tests::stackpin(
        w.dir.path(),
        "http://127.0.0.1:1",
        &["keygen", "--out", "new.pem"],
    )
    .ok();
    w.cli(&["key", "add", "new.pub.pem", "--reason", "rotation"])
        .ok();
    w.write("five.json", b"{\"release\":5}");
    w.cli(&[
        "publish",
        "five.json",
        "--release-id",
        "rel-5",
        "--key",
        "new.pem",
    ])
    .ok();
    audit(&w, None).ok();
}

#[test]
fn a_rewritten_log_is_caught_by_the_saved_checkpoint() {
    let w = World::new(&[]);
    w.three_releases();
    // The operator's CLI has seen (and saved) this checkpoint.
    w.cli(&["checkpoint", "--log-key", &w.vkey]).ok();

    // Someone rewrites the last entry in a copy of the data folder (the
    // reason of pin #3) and serves that copy with the same log key.
    let World { dir, server, vkey } = w;
    assert!(server.stop().success());
    let data = dir.path().join("data");
    let forged = dir.path().join("forged");
    copy_dir(&data, &forged);
    std::fs::remove_dir_all(forged.join("index")).unwrap();
    let last = forged.join("log/entries/00000000000000000005");
    let text = std::fs::read_to_string(&last)
        .unwrap()
        .replace("deploy 3", "deploy X");
    std::fs::write(&last, text).unwrap();
    let trusted = dir.path().join("trusted");
    let flags = ["--trusted-keys", trusted.to_str().unwrap()];
    // The registry itself refuses the edited log: its stored checkpoints
    // sign another tree.
    let log = match Server::try_start(&forged, &flags) {
        Ok(_) => panic!("a registry started on a log that contradicts its checkpoints"),
        Err(log) => log,
    };
    assert!(
        log.contains("is not what the log key signed") && log.contains("log/checkpoint"),
        "{log}"
    );
    // Holding the log key, the forger also deletes every stored checkpoint
    // and signs the copy again, deliberately.
    std::fs::remove_file(forged.join("log/checkpoint")).unwrap();
    std::fs::remove_dir_all(forged.join("log/checkpoints")).unwrap();
    let log = match Server::try_start(&forged, &flags) {
        Ok(_) => panic!("a registry signed a log with entries and no checkpoint"),
        Err(log) => log,
    };
    assert!(log.contains("--accept-unsigned"), "{log}");
    let recovered = std::process::Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["recover", "--accept-unsigned", "--data-dir"])
        .arg(&forged)
        .args(flags)
        .output()
        .unwrap();
    assert!(recovered.status.success(), "{recovered:?}");
    let server = Server::start(&forged, &flags);
    let w = World { dir, server, vkey };

    // Same size, different root: a fork.
    w.cli(&["checkpoint", "--log-key", &w.vkey])
        .fails(5, "forked or was rewritten");
    // Grown past the saved size: no consistency proof can exist. (The
    // forger's pipeline pins with no log key, so its own CLI checks nothing.)
    w.cli_without_key(&["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"])
        .ok();
    w.cli(&["checkpoint", "--log-key", &w.vkey])
        .fails(5, "forked or was rewritten");
    w.restore(T1, "r.json", &[])
        .fails(5, "forked or was rewritten");
    assert!(!w.dir.path().join("r.json").exists());
}

/// Every checkpoint that leaves the registry is stored first: the one an
/// answer carries is already in the log's checkpoint history when the
/// answer arrives, so a crash cannot make the registry sign another root
/// for a size a client has seen.
#[test]
fn every_checkpoint_served_is_already_stored() {
    let w = World::new(&[]);
    w.three_releases();
    for i in 0..5 {
        // A write, then at once the answers that carry checkpoints.
        w.cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "rel-2",
            "--reason",
            &format!("again {i}"),
        ])
        .ok();
        let resolved = w
            .cli(&[
                "--output",
                "json",
                "resolve",
                "--env",
                "prod",
                "--at",
                "2030-01-01T00:00:00Z",
            ])
            .json();
        let checkpoint = w.cli(&["--output", "json", "checkpoint"]).json();
        for size in [&resolved["checkpoint_size"], &checkpoint["size"]] {
            let size = size.as_u64().expect("a checkpoint size");
            let stored = w
                .data()
                .join(stackpin_core::layout::checkpoint_history_key(size));
            assert!(
                stored.is_file(),
                "a checkpoint of size {size} was served before {} was stored",
                stored.display()
            );
        }
    }
}
