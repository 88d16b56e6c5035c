//! Witnesses end to end: two `stackpin-witness` processes cosign the
//! registry's checkpoints; the cosignatures reach the checkpoint, the
//! tiles and every `.tlog-proof`; a tlog-policy quorum is enforced by
//! restore, verify, checkpoint and audit; freshness is bounded with
//! --max-age; a witness killed with SIGKILL keeps what it cosigned; and a
//! fork of the log (same key, another history) gets no cosignature.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stackpin_tests::s3::free_port;
use stackpin_tests::witness::{WitnessProc, witness_vkey};
use stackpin_tests::world::{T1, T3, World};
use stackpin_tests::{Server, stackpin, tlog};

/// Waits until the checkpoint served on `tiles` has `size` entries and
/// carries a line by each of `names`; returns the note.
fn cosigned(tiles: SocketAddr, size: u64, names: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let note = String::from_utf8(tlog::get(tiles, "/checkpoint").body).unwrap();
        let at_size = note.lines().nth(1) == Some(size.to_string().as_str());
        if at_size
            && names
                .iter()
                .all(|n| note.contains(&format!("\u{2014} {n} ")))
        {
            return note;
        }
        assert!(
            Instant::now() < deadline,
            "not cosigned by {names:?} at {size}:\n{note}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pin(world: &World, release: &str, at: &str) {
    world
        .cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            release,
            "--activated-at",
            at,
        ])
        .ok();
}

#[test]
fn two_witnesses_cosign_a_policy_is_enforced_and_a_fork_is_not_cosigned() {
    let (port_a, port_b) = (free_port(), free_port());
    let settings = tempfile::TempDir::new().unwrap();
    let (wa, wb) = (settings.path().join("wa"), settings.path().join("wb"));
    let (name_a, name_b) = ("witness-a.example/w", "witness-b.example/w");
    let (vkey_a, vkey_b) = (witness_vkey(name_a, &wa), witness_vkey(name_b, &wb));
    let config = settings.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "[[witness]]\nname = \"a\"\nvkey = \"{vkey_a}\"\nurl = \"http://127.0.0.1:{port_a}\"\n\n\
             [[witness]]\nvkey = \"{vkey_b}\"\nurl = \"http://127.0.0.1:{port_b}/\"\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let world = World::new(&["--config", cfg, "--http-listen", "127.0.0.1:0"]);
    let tiles = world.server.tiles_addr();
    let a = WitnessProc::start(name_a, &wa, &world.vkey, port_a);
    let b = WitnessProc::start(name_b, &wb, &world.vkey, port_b);
    world.three_releases();
    let note6 = cosigned(tiles, 6, &[name_a, name_b]);
    // The web view's log page names both cosignatures with their time,
    // and each witness as up to date.
    let page = stackpin_tests::tlog::get(tiles, "/log");
    let page = String::from_utf8(page.body).unwrap();
    assert_eq!(
        page.matches("witness cosignature (cosignature/v1)").count(),
        2,
        "{page}"
    );
    assert!(page.contains("s ago)"), "{page}");
    assert_eq!(page.matches("(the newest checkpoint)").count(), 2, "{page}");

    // A policy that needs both: restore, verify, checkpoint and audit pass.
    let policy = format!(
        "log {}\nwitness A {vkey_a}\nwitness B {vkey_b} http://127.0.0.1:{port_b}\ngroup both all A B\nquorum both\n",
        world.vkey
    );
    world.write("policy.txt", policy.as_bytes());
    let restored = world
        .cli(&[
            "--output",
            "json",
            "restore",
            "--env",
            "prod",
            "--at",
            T3,
            "--out",
            "a.json",
            "--trusted-keys",
            "trusted",
            "--policy",
            "policy.txt",
            "--max-age",
            "1h",
        ])
        .json();
    assert_eq!(
        restored["cosigned_by"],
        serde_json::json!(["A", "B"]),
        "{restored}"
    );
    assert!(restored["checkpoint_age_seconds"].as_u64().unwrap() < 3600);
    let proof = String::from_utf8(world.read("a.json.tlog-proof")).unwrap();
    assert!(
        proof.contains(&format!("\u{2014} {name_a} "))
            && proof.contains(&format!("\u{2014} {name_b} ")),
        "{proof}"
    );
    world
        .cli(&[
            "verify",
            "a.json",
            "--trusted-keys",
            "trusted",
            "--policy",
            "policy.txt",
        ])
        .ok();
    world.cli(&["checkpoint", "--policy", "policy.txt"]).ok();
    let url = format!("http://{tiles}");
    world
        .cli(&[
            "audit",
            "--tiles",
            &url,
            "--trusted-keys",
            "trusted",
            "--policy",
            "policy.txt",
        ])
        .ok();

    // The stored checkpoint gets the cosignatures too: an offline audit of
    // the folder passes the policy.
    let stored = world.data().join("log/checkpoint");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let note = std::fs::read_to_string(&stored).unwrap_or_default();
        if note.contains(&format!("\u{2014} {name_a} "))
            && note.contains(&format!("\u{2014} {name_b} "))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored without cosignatures:\n{note}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let data = world.data();
    world
        .cli(&[
            "audit",
            "--data-dir",
            data.to_str().unwrap(),
            "--trusted-keys",
            "trusted",
            "--policy",
            "policy.txt",
        ])
        .ok();

    // A quorum naming a witness that never cosigned: refused, naming it.
    let absent = stackpin_core_vkey("witness-c.example/w");
    world.write(
        "policy-c.txt",
        format!(
            "log {}\nwitness A {vkey_a}\nwitness C {absent}\ngroup ac all A C\nquorum ac\n",
            world.vkey
        )
        .as_bytes(),
    );
    world
        .cli(&[
            "verify",
            "a.json",
            "--trusted-keys",
            "trusted",
            "--policy",
            "policy-c.txt",
        ])
        .fails(5, "missing cosignatures from C");
    world
        .cli(&["checkpoint", "--policy", "policy-c.txt"])
        .fails(5, "missing cosignatures from C");
    // Resolve shows the same freshness when asked to verify.
    let resolved = world
        .cli(&[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            T3,
            "--policy",
            "policy.txt",
        ])
        .json();
    assert_eq!(
        resolved["cosigned_by"],
        serde_json::json!(["A", "B"]),
        "{resolved}"
    );
    assert_eq!(resolved["checkpoint_size"], 6);
    let text = world
        .cli(&[
            "resolve",
            "--env",
            "prod",
            "--at",
            T3,
            "--policy",
            "policy.txt",
        ])
        .ok()
        .to_owned();
    assert!(
        text.contains("cosigned") && text.contains("by A, B"),
        "{text}"
    );
    // Freshness: a checkpoint older than --max-age is refused.
    std::thread::sleep(Duration::from_millis(2100));
    world
        .cli(&[
            "resolve",
            "--env",
            "prod",
            "--at",
            T3,
            "--policy",
            "policy.txt",
            "--max-age",
            "1s",
        ])
        .fails(5, "older than --max-age");
    world
        .restore(
            T1,
            "old.json",
            &["--policy", "policy.txt", "--max-age", "1s"],
        )
        .fails(5, "older than --max-age");
    world
        .restore(T1, "old.json", &["--max-age", "1s"])
        .fails(2, "--max-age needs --policy");

    // A witness killed mid-run keeps what it cosigned: after a restart it
    // cosigns the next checkpoint, and refuses to go back.
    let a = a.kill_and_restart();
    pin(&world, "rel-1", "2026-03-01T13:00:00Z");
    let note7 = cosigned(tiles, 7, &[name_a, name_b]);
    let rollback = tlog::post(
        a.addr,
        "/add-checkpoint",
        &format!("old 0\n\n{}", strip_cosignatures(&note6)),
    );
    assert_eq!(rollback.status, 409, "{rollback:?}");
    assert_eq!(rollback.headers["content-type"], "text/x.tlog.size");
    assert_eq!(rollback.body, b"7\n");
    // Unknown logs and bad signatures get the spec's codes.
    let unknown = tlog::post(
        a.addr,
        "/add-checkpoint",
        "old 0\n\nother.example/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} other.example/log AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    );
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let forged = strip_cosignatures(&note7).replace("\n7\n", "\n8\n");
    let forged = tlog::post(a.addr, "/add-checkpoint", &format!("old 7\n\n{forged}"));
    assert_eq!(forged.status, 403, "{forged:?}");

    // A fork: the same log key and origin serving another history (the
    // storage copied, then each side pins something else). The witnesses
    // cosigned the original; the fork's checkpoint gets no cosignature, and
    // a restore from it under the policy is refused.
    pin(&world, "rel-2", "2026-03-01T14:00:00Z");
    cosigned(tiles, 8, &[name_a, name_b]);
    let fork = settings.path().join("fork");
    copy_storage(&world.data(), &fork, 7);
    let trusted = world.dir.path().join("trusted");
    let fork_server = Server::start(
        &fork,
        &["--config", cfg, "--trusted-keys", trusted.to_str().unwrap()],
    );
    let fork_cli = |args: &[&str]| {
        let mut all = vec!["--state-dir", "fork-state"];
        all.extend_from_slice(args);
        stackpin(world.dir.path(), &fork_server.url(), &all)
    };
    fork_cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "rel-3",
        "--activated-at",
        "2026-03-01T14:00:00Z",
    ])
    .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.log().contains("EVIDENCE") || b.log().contains("EVIDENCE")) {
        assert!(
            Instant::now() < deadline,
            "no witness saw the fork:\n{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fork_cli(&[
        "restore",
        "--env",
        "prod",
        "--at",
        "2026-03-01T14:30:00Z",
        "--out",
        "fork.json",
        "--trusted-keys",
        "trusted",
        "--policy",
        "policy.txt",
    ])
    .fails(5, "missing cosignatures from A, B");
    assert!(!world.dir.path().join("fork.json").exists());
    fork_server.stop();
}

/// The note without its cosignature lines (the log's line only).
fn strip_cosignatures(note: &str) -> String {
    let origin = note.lines().next().unwrap();
    note.lines()
        .filter(|l| !l.starts_with('\u{2014}') || l.starts_with(&format!("\u{2014} {origin} ")))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
}

/// A cosigner vkey for a key nobody runs.
fn stackpin_core_vkey(name: &str) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    witness_vkey(name, dir.path())
}

/// Copies what the registry stores (not its index or lock) of `data` to
/// `to`, keeping log objects for the first `entries` entries only.
fn copy_storage(data: &Path, to: &Path, entries: u64) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                // The running registry renames its staging files away while
                // this copies; a file gone meanwhile is not part of the log.
                match std::fs::copy(e.path(), &target) {
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    r => {
                        r.unwrap();
                    }
                }
            }
        }
    }
    std::fs::create_dir_all(to).unwrap();
    for part in ["log", "blobs"] {
        copy(&data.join(part), &to.join(part));
    }
    std::fs::copy(data.join("log-key.pem"), to.join("log-key.pem")).unwrap();
    // Cut the copied log back to `entries`: drop later objects, the stored
    // checkpoints beyond it, and tiles.
    let objects: Vec<PathBuf> = std::fs::read_dir(to.join("log/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for o in objects {
        let start: u64 = o.file_name().unwrap().to_str().unwrap().parse().unwrap();
        if start >= entries {
            std::fs::remove_file(o).unwrap();
        }
    }
    for c in std::fs::read_dir(to.join("log/checkpoints")).unwrap() {
        let c = c.unwrap().path();
        let size: u64 = c.file_name().unwrap().to_str().unwrap().parse().unwrap();
        if size > entries {
            std::fs::remove_file(c).unwrap();
        }
    }
    let latest = to.join("log/checkpoint");
    let history = to.join(format!("log/checkpoints/{entries:020}"));
    if history.exists() {
        std::fs::copy(history, latest).unwrap();
    } else {
        let _ = std::fs::remove_file(latest);
    }
}

#[test]
fn a_witness_added_by_a_reload_cosigns_and_one_removed_is_no_longer_asked() {
    let port = free_port();
    let settings = tempfile::TempDir::new().unwrap();
    let wa = settings.path().join("wa");
    let name = "witness-late.example/w";
    let vkey = witness_vkey(name, &wa);
    let config = settings.path().join("registry.toml");
    std::fs::write(&config, "reload_check_interval = \"0s\"\n").unwrap();
    let world = World::new(&[
        "--config",
        config.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let tiles = world.server.tiles_addr();
    let witness = WitnessProc::start(name, &wa, &world.vkey, port);
    let hup = |n: usize| {
        let ok = Command::new("kill")
            .args(["-HUP", &world.server.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(15);
        while world.server.log().matches("settings reloaded").count() < n {
            assert!(Instant::now() < deadline, "{}", world.server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::fs::write(
        &config,
        format!(
            "reload_check_interval = \"0s\"\n\n[[witness]]\nname = \"late\"\nvkey = \"{vkey}\"\n\
             url = \"http://127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    hup(1);
    world.three_releases();
    cosigned(tiles, 6, &[name]);
    let page = String::from_utf8(tlog::get(tiles, "/log").body).unwrap();
    assert!(page.contains("late"), "{page}");

    std::fs::write(&config, "reload_check_interval = \"0s\"\n").unwrap();
    hup(2);
    assert!(
        world
            .server
            .log()
            .contains("witnesses started [], stopped [late]")
    );
    pin(&world, "rel-1", T3);
    std::thread::sleep(Duration::from_secs(2));
    let note = String::from_utf8(tlog::get(tiles, "/checkpoint").body).unwrap();
    assert_eq!(note.lines().nth(1), Some("7"), "{note}");
    assert!(!note.contains(name), "{note}");
    // Its log goes to a pipe here, as to a file: no colour codes.
    assert!(!witness.log().contains('\u{1b}'), "{}", witness.log());
    assert!(witness.log().contains("witness listening on"));
    drop(witness);
}
