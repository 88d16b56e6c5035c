//! The publish → pin → resolve → restore path, end to end: the real server
//! binary over loopback and the real CLI, on the embedded default storage.
//!
//! Long because it is the end-to-end walk of every command an operator
//! runs, on one shared world per test.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use stackpin_tests::world::{T1, T2, T3, World};
use stackpin_tests::{Server, blobs, log_entries, stackpin};

#[test]
fn publish_pin_resolve_restore_round_trip_and_survive_restarts() {
    let w = World::new(&[]);
    w.three_releases();

    // Before the first pin: not found, naming the first pin's time.
    w.cli(&[
        "resolve",
        "--env",
        "prod",
        "--at",
        "2026-03-01T09:59:59.999999Z",
    ])
    .fails(3, "2026-03-01T10:00:00.000000Z");
    // On a switch the new pin is live (inclusive start); between, the old one.
    assert_eq!(w.release_at(T1), "rel-1");
    assert_eq!(w.release_at("2026-03-01T10:59:59.999999Z"), "rel-1");
    assert_eq!(w.release_at(T2), "rel-2");
    assert_eq!(
        w.release_at("2026-03-01T11:30:00+01:00"),
        "rel-1",
        "offsets are honoured"
    );
    assert_eq!(w.release_at("2030-01-01T00:00:00Z"), "rel-3");

    let v = w
        .cli(&[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            "2026-03-01T10:30:00Z",
        ])
        .json();
    assert_eq!(v["live_from"], "2026-03-01T10:00:00.000000Z");
    assert_eq!(v["live_until"], "2026-03-01T11:00:00.000000Z");
    assert!(v["near_switch"].is_null());
    let v = w
        .cli(&[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            "2026-03-01T10:59:59Z",
        ])
        .json();
    assert_eq!(v["near_switch"]["before"]["release_id"], "rel-1");
    assert_eq!(v["near_switch"]["after"]["release_id"], "rel-2");
    assert_eq!(v["near_switch"]["offset_seconds"], -1.0);
    let v = w
        .cli(&[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            "2026-03-01T10:59:59Z",
            "--margin",
            "500ms",
        ])
        .json();
    assert!(
        v["near_switch"].is_null(),
        "a per-request margin narrows the window"
    );
    let v = w
        .cli(&["--output", "json", "resolve", "--env", "prod", "--at", T3])
        .json();
    assert!(v["live_until"].is_null(), "the latest pin is still live");

    // Restore at instants in each interval: the bytes come back exactly.
    for (at, want) in [
        (T1, "a1.json"),
        ("2026-03-01T11:15:00Z", "a2.json"),
        ("2031-01-01T00:00:00Z", "a3.json"),
    ] {
        let out = w.restore(at, "restored.json", &["--output", "json"]).json();
        assert_eq!(w.read("restored.json"), w.read(want), "restore at {at}");
        assert!(out["key_id"].as_str().is_some_and(|k| k.len() == 64));
    }
    let text = w.restore(T2, "r2.json", &[]);
    let text = text.ok();
    assert!(
        text.contains("rel-2")
            && text.contains("[2026-03-01T11:00:00.000000Z, 2026-03-01T12:00:00.000000Z)"),
        "{text}"
    );

    // fetch by digest and by release id.
    let stat = w
        .cli(&["--output", "json", "stat", "--release-id", "rel-2"])
        .json();
    let digest = stat["digest"].as_str().unwrap().to_owned();
    w.cli(&["fetch", "--digest", &digest, "--out", "by-digest.json"])
        .ok();
    assert_eq!(w.read("by-digest.json"), w.read("a2.json"));
    w.cli(&["fetch", "--release-id", "rel-3", "--out", "by-id.json"])
        .ok();
    assert_eq!(w.read("by-id.json"), w.read("a3.json"));

    // History: newest first, chained, paged, filtered.
    let h = w
        .cli(&["--output", "json", "history", "--env", "prod"])
        .json();
    let pins = h["pins"].as_array().unwrap();
    assert_eq!(
        pins.iter()
            .map(|p| p["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(pins[0]["prev_pin"], pins[1]["entry_hash"]);
    assert_eq!(pins[1]["prev_pin"], pins[2]["entry_hash"]);
    assert_eq!(pins[2]["reason"], "deploy 1");
    let h = w
        .cli(&[
            "--output", "json", "history", "--env", "prod", "--limit", "2",
        ])
        .json();
    assert_eq!(h["pins"].as_array().unwrap().len(), 2);
    let token = h["next_page_token"].as_str().unwrap().to_owned();
    let h = w
        .cli(&[
            "--output",
            "json",
            "history",
            "--env",
            "prod",
            "--page-token",
            &token,
        ])
        .json();
    assert_eq!(h["pins"][0]["seq"], 1);
    let h = w
        .cli(&[
            "--output", "json", "history", "--env", "prod", "--before", T3, "--since", T2,
        ])
        .json();
    assert_eq!(h["pins"].as_array().unwrap().len(), 1);
    assert_eq!(h["pins"][0]["release_id"], "rel-2");

    // Restart: identical answers.
    let before = w.answers();
    let World { dir, server, vkey } = w;
    let w = World {
        dir,
        server: server.restart(),
        vkey,
    };
    assert_eq!(w.answers(), before, "answers changed across a restart");

    // Delete the index: it is rebuilt from the log, answers identical.
    let status = {
        let World { dir, server, vkey } = w;
        let data = server.data_dir.clone();
        let args = [
            "--trusted-keys",
            dir.path()
                .join("trusted")
                .to_str()
                .unwrap()
                .to_owned()
                .leak(),
        ];
        assert!(server.stop().success());
        std::fs::remove_dir_all(data.join("index")).unwrap();
        let server = Server::start(&data, &args);
        assert!(
            server.log().contains("index caught up with the log"),
            "{}",
            server.log()
        );
        World { dir, server, vkey }
    };
    assert_eq!(
        status.answers(),
        before,
        "answers changed after rebuilding the index"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let w = World::new(&["--max-artifact-bytes", "2048"]);
    w.write("ok.json", b"{\"ok\":true}");
    w.cli(&[
        "publish",
        "ok.json",
        "--release-id",
        "base",
        "--key",
        "ci.pem",
    ])
    .ok();
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "base",
        "--activated-at",
        T2,
    ])
    .ok();
    let entries = log_entries(&w.data());
    let stored = blobs(&w.data());
    assert_eq!((entries.len(), stored.len()), (2, 1));

    w.write("empty.json", b"");
    w.write("bad.json", b"{\"unterminated\": ");
    w.write("big.json", format!("[{}0]", "0,".repeat(2000)).as_bytes());
    w.write("other.json", b"{\"other\":true}");
    // A stranger's key, not in the trusted folder.
    stackpin(
        w.dir.path(),
        &w.server.url(),
        &["keygen", "--out", "stranger.pem"],
    )
    .ok();

    w.cli(&[
        "publish",
        "empty.json",
        "--release-id",
        "r1",
        "--key",
        "ci.pem",
    ])
    .fails(2, "is empty");
    w.cli(&[
        "publish",
        "bad.json",
        "--release-id",
        "r1",
        "--key",
        "ci.pem",
    ])
    .fails(2, "not strict JSON");
    w.cli(&[
        "publish",
        "big.json",
        "--release-id",
        "r1",
        "--key",
        "ci.pem",
    ])
    .fails(2, "limit");
    w.cli(&[
        "publish",
        "ok.json",
        "--release-id",
        "r1",
        "--key",
        "stranger.pem",
    ])
    .fails(2, "does not verify");
    w.cli(&[
        "publish",
        "other.json",
        "--release-id",
        "base",
        "--key",
        "ci.pem",
    ])
    .fails(4, "already bound to sha256:");
    for bad in ["../etc", "a/b", "a..b", "-x", "with space", ""] {
        let (rid, env) = (format!("--release-id={bad}"), format!("--env={bad}"));
        w.cli(&["publish", "ok.json", &rid, "--key", "ci.pem"])
            .fails(2, "release id");
        w.cli(&["pin", &env, "--release-id", "base"])
            .fails(2, "environment name");
    }

    // An envelope signed for other bytes, or tampered with: refused by the server.
    let envelope = signed_envelope(&w, "r1", b"{\"something\":\"else\"}");
    w.write("env.json", &envelope);
    w.cli(&[
        "publish",
        "ok.json",
        "--release-id",
        "r1",
        "--envelope",
        "env.json",
    ])
    .fails(2, "signed for");
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&signed_envelope(&w, "r1", b"{\"ok\":true}")).unwrap();
    let sig = tampered["signatures"][0]["sig"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if sig.starts_with('A') {
        sig.replacen('A', "B", 1)
    } else {
        format!("A{}", &sig[1..])
    };
    tampered["signatures"][0]["sig"] = flipped.into();
    w.write("tampered.json", &serde_json::to_vec(&tampered).unwrap());
    w.cli(&[
        "publish",
        "ok.json",
        "--release-id",
        "r1",
        "--envelope",
        "tampered.json",
    ])
    .fails(2, "does not verify");
    w.write("notenv.json", b"[]");
    w.cli(&[
        "publish",
        "ok.json",
        "--release-id",
        "r1",
        "--envelope",
        "notenv.json",
    ])
    .fails(2, "DSSE");

    // Times: naive, unparseable, out of order, too far in the future.
    w.cli(&["resolve", "--env", "prod", "--at", "2026-03-01T10:00:00"])
        .fails(2, "no UTC offset");
    w.cli(&["resolve", "--env", "prod", "--at", "last tuesday"])
        .fails(2, "not RFC 3339");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "base",
        "--activated-at",
        "2026-03-01 10:00",
    ])
    .fails(2, "RFC 3339");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "base",
        "--activated-at",
        T1,
    ])
    .fails(4, "never go back in time");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "base",
        "--activated-at",
        "2999-01-01T00:00:00Z",
    ])
    .fails(4, "in the future");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "unknown",
    ])
    .fails(3, "not published");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--digest",
        "sha256:abc",
    ])
    .fails(2, "64 hex digits");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "base",
        "--reason",
        "two\nlines",
    ])
    .fails(2, "control character");
    w.cli(&["history", "--env", "staging"]).fails(3, "no pins");

    // Restore verifies locally: with the wrong trusted keys, exit 5 and no file.
    std::fs::create_dir(w.dir.path().join("wrong")).unwrap();
    std::fs::copy(
        w.dir.path().join("stranger.pub.pem"),
        w.dir.path().join("wrong/stranger.pub.pem"),
    )
    .unwrap();
    w.cli(&[
        "restore",
        "--env",
        "prod",
        "--at",
        T3,
        "--out",
        "restored.json",
        "--trusted-keys",
        "wrong",
        "--log-key",
        &w.vkey,
    ])
    .fails(5, "verification failed");
    assert!(
        !w.dir.path().join("restored.json").exists(),
        "a failed restore wrote its file"
    );

    assert_eq!(
        log_entries(&w.data()),
        entries,
        "a rejected request wrote a log entry"
    );
    assert_eq!(blobs(&w.data()), stored, "a rejected request wrote a blob");
    let list = w.cli(&["--output", "json", "list"]).json();
    assert_eq!(list["artifacts"].as_array().unwrap().len(), 1);
}

/// Signs a DSSE envelope for `body` under `release` with the CI key, using
/// the same library a pipeline's own signer could.
fn signed_envelope(w: &World, release: &str, body: &[u8]) -> Vec<u8> {
    use stackpin_core::signing;
    let pem = String::from_utf8(w.read("ci.pem")).unwrap();
    let key = signing::signing_key_from_pem(&pem).unwrap();
    let digest = stackpin_core::digest::Digest::of(body);
    signing::sign_envelope(
        &signing::publish_statement(&release.parse().unwrap(), &digest),
        &key,
    )
}

#[test]
fn an_acknowledged_publish_and_pin_survive_kill_9() {
    let w = World::new(&[]);
    w.write("a.json", b"{\"durable\":true}");
    w.cli(&[
        "publish",
        "a.json",
        "--release-id",
        "durable",
        "--key",
        "ops.pem",
    ])
    .ok();
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "durable",
    ])
    .ok();
    // No pause: the acknowledgement alone must mean durable.
    let World { dir, server, vkey } = w;
    let w = World {
        dir,
        server: server.crash_and_restart(),
        vkey,
    };
    let v = w
        .cli(&[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--at",
            "2999-01-01T00:00:00Z",
        ])
        .json();
    assert_eq!(v["pin"]["release_id"], "durable");
    w.restore("2999-01-01T00:00:00Z", "back.json", &[]).ok();
    assert_eq!(w.read("back.json"), w.read("a.json"));
}

#[test]
fn artifacts_larger_than_one_message_stream_both_ways() {
    let w = World::new(&[]);
    // ~10 MiB of JSON: more than tonic's 4 MiB default message size.
    let mut body = String::from("[");
    while body.len() < 10 * 1024 * 1024 {
        body.push_str("\"0123456789abcdef0123456789abcdef\",");
    }
    body.push_str("0]");
    w.write("big.json", body.as_bytes());
    w.cli(&[
        "publish",
        "big.json",
        "--release-id",
        "big",
        "--key",
        "ci.pem",
    ])
    .ok();
    w.cli(&["fetch", "--release-id", "big", "--out", "big-back.json"])
        .ok();
    assert_eq!(w.read("big-back.json"), body.as_bytes());

    // A download the registry announces as larger than --max-download is
    // refused before it is read, and nothing is written.
    let refused = w.cli(&[
        "fetch",
        "--release-id",
        "big",
        "--out",
        "too-big.json",
        "--max-download",
        "8MiB",
    ]);
    refused.fails(2, "more than --max-download allows");
    assert!(!w.dir.path().join("too-big.json").exists());
    w.cli(&[
        "fetch",
        "--release-id",
        "big",
        "--out",
        "x.json",
        "--max-download",
        "0",
    ])
    .fails(2, "not a size of at least one byte");
}

#[test]
fn the_server_stops_cleanly_on_sigterm() {
    let w = World::new(&[]);
    let status = w.server.stop();
    assert!(status.success(), "exit status {status}");
}

/// An envelope over an in-toto statement for `body` whose predicate type is
/// `predicate_type`, signed by the `ci` publisher key.
fn attestation(w: &World, release: &str, body: &[u8], predicate_type: &str) -> Vec<u8> {
    use stackpin_core::signing;
    let pem = String::from_utf8(w.read("ci.pem")).unwrap();
    let key = signing::signing_key_from_pem(&pem).unwrap();
    let digest = stackpin_core::digest::Digest::of(body);
    let statement = String::from_utf8(signing::publish_statement(
        &release.parse().unwrap(),
        &digest,
    ))
    .unwrap()
    .replace(signing::PUBLISH_PREDICATE, predicate_type);
    signing::sign_envelope(statement.as_bytes(), &key)
}

#[test]
fn only_an_attestation_of_a_publish_publishes() {
    const SLSA: &str = "https://slsa.dev/provenance/v1";
    let w = World::new(&[]);
    let body = b"{\"ok\":true}";
    w.write("ok.json", body);
    // Provenance signed by a trusted publisher key, naming the release and
    // the digest: not a publish.
    w.write("slsa.json", &attestation(&w, "r1", body, SLSA));
    let publish = |w: &World| {
        w.cli(&[
            "--output",
            "json",
            "publish",
            "ok.json",
            "--release-id",
            "r1",
            "--envelope",
            "slsa.json",
        ])
    };
    publish(&w).fails(
        2,
        &format!("predicateType {SLSA:?}, which is not a publish"),
    );
    w.cli(&["pin", "--env", "prod", "--new-env", "--release-id", "r1"])
        .fails(3, "r1");

    // An operator who lists the type accepts it; the entry records it, and
    // an audit checks it against the same list.
    let World { dir, server, vkey } = w;
    assert!(server.stop().success());
    let settings = dir.path().join("settings.toml");
    std::fs::write(
        &settings,
        format!("accepted_predicate_types = [{SLSA:?}]\n"),
    )
    .unwrap();
    let trusted = dir.path().join("trusted");
    let server = stackpin_tests::Server::start(
        &dir.path().join("data"),
        &[
            "--config",
            settings.to_str().unwrap(),
            "--trusted-keys",
            trusted.to_str().unwrap(),
        ],
    );
    let w = World { dir, server, vkey };
    assert_eq!(publish(&w).json()["created"], true);
    let audit = |extra: &[&str]| {
        let mut args = vec!["audit", "--trusted-keys", "trusted", "--log-key", &w.vkey];
        args.extend_from_slice(extra);
        w.cli(&args)
    };
    audit(&["--accept-predicate-type", SLSA]).ok();
    let refused = audit(&[]);
    refused.fails(5, "audit failed");
    assert!(
        refused.stdout.contains("which is not a publish"),
        "{}",
        refused.stdout
    );
}

/// The process's umask, from /proc.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn restore_replaces_artifact_and_proof_together_with_the_modes_a_reader_needs() {
    let w = World::new(&[]);
    w.three_releases();
    let out = w.dir.path().join("r.json");
    // A new file gets the mode the umask gives, as cp would (not 0600).
    w.restore(T1, "r.json", &[]).ok();
    assert_eq!(mode(&out), 0o666 & !umask());
    assert_eq!(
        mode(&w.dir.path().join("r.json.tlog-proof")),
        0o666 & !umask()
    );
    // A replaced file keeps its mode.
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    w.restore(T2, "r.json", &[]).ok();
    assert_eq!(mode(&out), 0o640);
    let before = std::fs::read(&out).unwrap();
    // A proof path that is a folder: refused before anything is replaced.
    std::fs::create_dir(w.dir.path().join("s.json.tlog-proof")).unwrap();
    std::fs::write(w.dir.path().join("s.json"), b"old").unwrap();
    w.restore(T3, "s.json", &[]).fails(2, "is a folder");
    assert_eq!(std::fs::read(w.dir.path().join("s.json")).unwrap(), b"old");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // No temporaries are left behind.
    let hidden: Vec<_> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".stackpin-"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn a_closed_pipe_ends_quietly_and_a_full_stdout_is_an_error_not_a_panic() {
    let w = World::new(&[]);
    w.three_releases();
    let command = || {
        let mut c = std::process::Command::new(stackpin_tests::bin("stackpin"));
        c.current_dir(w.dir.path())
            .env("STACKPIN_SERVER", w.server.url())
            .env("STACKPIN_STATE_DIR", w.dir.path().join(".stackpin-state"))
            .args(["history", "--env", "prod"]);
        c
    };
    // The reader closes its end before anything is written.
    let mut child = command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Standard output on a full device.
    let out = command()
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("writing to standard output") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn snapshot_tag_hashes_a_snapshot_larger_than_its_read_buffer() {
    let w = World::new(&[]);
    w.three_releases();
    // 3.5 MiB: several reads of the 1 MiB buffer, the last one partial.
    let body: Vec<u8> = (0..3_670_016u32).map(|i| (i % 251) as u8).collect();
    w.write("snap.db", &body);
    let out = w
        .cli(&[
            "--output",
            "json",
            "snapshot-tag",
            "--env",
            "prod",
            "--file",
            "snap.db",
        ])
        .json();
    assert_eq!(
        out["tag"]["snapshot_sha256"],
        stackpin_core::digest::Digest::of(&body).to_string()
    );
    let tag: serde_json::Value = serde_json::from_slice(&w.read("snap.db.stackpin.json")).unwrap();
    assert_eq!(tag, out["tag"]);
    // The snapshot entry records the same size and digest.
    assert_eq!(out["entry"]["sha256"], tag["snapshot_sha256"]);
    assert_eq!(out["entry"]["size"], body.len());
    assert_eq!(tag["log_index"], out["log_index"]);
}

#[test]
fn a_retried_pin_is_recorded_once_and_found_by_its_request_id() {
    let w = World::new(&[]);
    w.write("a.json", b"{\"a\":1}");
    w.write("b.json", b"{\"b\":1}");
    for (file, release) in [("a.json", "a"), ("b.json", "b")] {
        w.cli(&["publish", file, "--release-id", release, "--key", "ci.pem"])
            .ok();
    }
    let pin = |release: &str, id: &str| {
        w.cli(&[
            "--output",
            "json",
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            release,
            "--request-id",
            id,
        ])
    };
    let first = pin("a", "deploy-42").json();
    let again = pin("a", "deploy-42").json();
    assert_eq!(first["log_index"], again["log_index"]);
    assert_eq!(first["seq"], again["seq"]);
    // The id of another request: refused (exit 4), nothing recorded.
    pin("b", "deploy-42").fails(4, "was used by a different request");
    pin("a", "not valid!").fails(2, "request id");
    let history = w
        .cli(&["--output", "json", "history", "--env", "prod"])
        .json();
    assert_eq!(history["pins"].as_array().unwrap().len(), 1);
    let found = w
        .cli(&[
            "history",
            "--env",
            "prod",
            "--request-id",
            "deploy-42",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(found["pins"][0]["log_index"], first["log_index"]);
    // Scoped to the write: one job id serves a publish and its pins.
    assert_eq!(found["pins"][0]["request_id"], "deploy-42:pin:prod");
    w.write("c.json", b"{\"c\":1}");
    w.cli(&[
        "--request-id",
        "deploy-42",
        "publish",
        "c.json",
        "--release-id",
        "c",
        "--key",
        "ci.pem",
    ])
    .ok();
    let staging = w
        .cli(&[
            "--output",
            "json",
            "--request-id",
            "deploy-42",
            "pin",
            "--env",
            "staging",
            "--new-env",
            "--release-id",
            "c",
        ])
        .json();
    assert_eq!(staging["request_id"], "deploy-42:pin:staging");
    assert_eq!(staging["replayed"], false);
    assert_eq!(again["replayed"], true);
    // Without --request-id each run is a new request.
    w.cli(&["pin", "--env", "prod", "--new-env", "--release-id", "b"])
        .ok();
    let history = w
        .cli(&["--output", "json", "history", "--env", "prod"])
        .json();
    assert_eq!(history["pins"].as_array().unwrap().len(), 2);
}

#[test]
fn pins_retried_after_short_deadlines_are_recorded_once_each() {
    let w = World::new(&[]);
    w.write("a.json", b"{\"a\":1}");
    w.cli(&["publish", "a.json", "--release-id", "a", "--key", "ci.pem"])
        .ok();
    // A 20 ms deadline: some attempts time out after the registry has
    // committed the pin; the CLI's retries carry the same request id.
    let mut ok = 0;
    for i in 0..20 {
        let id = format!("job-{i}");
        let run = w.cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "a",
            "--timeout",
            "20ms",
            "--retries",
            "8",
            "--request-id",
            &id,
        ]);
        assert!(run.code == 0 || run.code == 6, "{}", run.stderr);
        ok += usize::from(run.code == 0);
    }
    let history = w
        .cli(&[
            "--output", "json", "history", "--env", "prod", "--limit", "1000",
        ])
        .json();
    let pins = history["pins"].as_array().unwrap();
    let mut ids: Vec<&str> = pins
        .iter()
        .map(|p| p["request_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let recorded = ids.len();
    ids.dedup();
    assert_eq!(
        ids.len(),
        recorded,
        "a request id was recorded twice: {ids:?}"
    );
    assert!(
        recorded >= ok && recorded <= 20,
        "{ok} ok, {recorded} recorded"
    );
}

#[test]
fn an_unreachable_registry_is_retried_with_backoff_then_exits_6() {
    let w = World::new(&[]);
    let started = std::time::Instant::now();
    let run = stackpin_tests::stackpin(
        w.dir.path(),
        "http://127.0.0.1:9",
        &[
            "history",
            "--env",
            "prod",
            "--retries",
            "2",
            "--timeout",
            "1s",
        ],
    );
    run.fails(6, "cannot reach")
        .fails(6, "trying 2 more time(s)")
        .fails(6, "3 attempt(s)");
    assert!(!run.stderr.contains("retry 3"), "{run:#?}");
    // 250 ms, then 500 ms (plus jitter), and no more.
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(750), "{took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    w.cli(&["history", "--env", "prod", "--timeout", "0s"])
        .fails(2, "--timeout");
}

#[test]
fn completions_and_man_pages_describe_every_command() {
    let w = World::new(&[]);
    let bash = w.cli(&["completions", "bash"]).ok().to_owned();
    for word in [
        "publish",
        "restore",
        "snapshot-tag",
        "--request-id",
        "--timeout",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    w.write("stackpin.bash", bash.as_bytes());
    let syntax = std::process::Command::new("bash")
        .args(["-n", "stackpin.bash"])
        .current_dir(w.dir.path())
        .status()
        .unwrap();
    assert!(syntax.success(), "the bash completion does not parse");
    for shell in ["zsh", "fish"] {
        assert!(w.cli(&["completions", shell]).ok().contains("restore"));
    }
    w.cli(&["completions", "tcsh"]).fails(2, "invalid value");
    let page = w.cli(&["man"]).ok().to_owned();
    assert!(
        page.starts_with(".ie") && page.contains(".TH stackpin 1"),
        "{page}"
    );
    w.cli(&["man", "--out-dir", "man"]).ok();
    let publish = std::fs::read_to_string(w.dir.path().join("man/stackpin-publish.1")).unwrap();
    assert!(publish.contains("stackpin\\-publish") && publish.contains("request\\-id"));
    assert!(w.dir.path().join("man/stackpin-key-revoke.1").is_file());
}
