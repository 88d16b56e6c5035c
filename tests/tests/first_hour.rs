//! The first hour with stackpin, as a new operator and a release engineer
//! meet it, with the real binaries: no silent new identities, typos
//! caught before they are written for good, client errors that are not
//! evidence, errors that say what to do, keys after a rotation, times as
//! people type them, and the smaller traps.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::process::Command;

use stackpin_tests::world::{T2, T3, World};
use stackpin_tests::{bin, stackpin};
use tempfile::TempDir;

fn registry(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("stackpin-registry"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_log_key_is_never_made_by_asking_for_it() {
    let tmp = TempDir::new().unwrap();
    let out = registry(tmp.path(), &["key"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no log key here"), "{said}");
    assert!(said.contains("stackpin-data/log-key.pem"), "{said}");
    assert!(out.stdout.is_empty());
    assert!(!tmp.path().join("stackpin-data").exists());
    // With a registry running elsewhere on this machine, it names it.
    let elsewhere = TempDir::new().unwrap();
    let server = stackpin_tests::Server::start(&elsewhere.path().join("data"), &[]);
    let out = registry(tmp.path(), &["key"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("pid {}, data folder", server.pid())),
        "{said}"
    );
    assert!(
        said.contains(&elsewhere.path().join("data").display().to_string()),
        "{said}"
    );
    drop(server);
    assert!(!tmp.path().join("stackpin-data").exists());
    // On purpose, for a registry about to start there.
    let made = registry(tmp.path(), &["key", "--create"]);
    assert!(made.status.success(), "{made:?}");
    let again = registry(tmp.path(), &["key"]);
    assert_eq!(again.stdout, made.stdout);
}

#[test]
fn a_new_environment_needs_new_env_and_a_typo_gets_the_nearest_names() {
    let w = World::new(&[]);
    // Even the log's first environment needs the flag (checked before the
    // release is looked up).
    w.cli(&["pin", "--env", "prod", "--release-id", "rel-1"])
        .fails(2, "--new-env");
    w.three_releases();
    let before = w.cli(&["--output", "json", "status"]).json()["environments"].clone();
    w.cli(&["pin", "--env", "prdo", "--release-id", "rel-1"])
        .fails(2, "did you mean prod?")
        .fails(2, "--new-env");
    assert_eq!(
        w.cli(&["--output", "json", "status"]).json()["environments"],
        before
    );
    w.cli(&["resolve", "--env", "prdo", "--at", T3])
        .fails(3, "did you mean prod?");
    w.cli(&[
        "snapshot-tag",
        "--env",
        "prdo",
        "--location",
        "s3://backups/x",
    ])
    .fails(3, "did you mean prod?");
    w.cli(&[
        "pin",
        "--env",
        "staging",
        "--release-id",
        "rel-1",
        "--new-env",
    ])
    .ok();
    // Known now: no flag needed, and the flag is harmless.
    w.cli(&["pin", "--env", "staging", "--release-id", "rel-2"])
        .ok();
    w.cli(&[
        "pin",
        "--env",
        "staging",
        "--release-id",
        "rel-3",
        "--new-env",
    ])
    .ok();
}

#[test]
fn a_drill_refused_for_its_client_records_nothing() {
    let keys = TempDir::new().unwrap();
    let (deployer, deployer_entry) =
        stackpin_tests::create_token(keys.path(), "deployer", &["publish", "pin", "read"]);
    let (pinner, pinner_entry) = stackpin_tests::create_token(keys.path(), "pinner", &["pin"]);
    let cfg = keys.path().join("registry.toml");
    std::fs::write(&cfg, format!("{deployer_entry}\n{pinner_entry}")).unwrap();
    let w = World::new(&["--config", cfg.to_str().unwrap()]);
    w.write("a.json", b"{\"objects\":[]}");
    w.cli_as(
        &deployer,
        &["publish", "a.json", "--release-id", "r1", "--key", "ci.pem"],
    )
    .ok();
    w.cli_as(
        &deployer,
        &[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "r1",
            "--activated-at",
            T2,
        ],
    )
    .ok();
    w.write("snap.db", b"");
    w.cli_as(
        &pinner,
        &[
            "drill",
            "run",
            "--env",
            "prod",
            "--at",
            T3,
            "--file",
            "snap.db",
            "--trusted-keys",
            "trusted",
        ],
    )
    .fails(7, "nothing was run or recorded");
    let drills = w
        .cli_as(
            &deployer,
            &["--output", "json", "drill", "list", "--env", "prod"],
        )
        .json();
    assert_eq!(
        drills["entries"].as_array().map(Vec::len),
        Some(0),
        "{drills}"
    );
    // The new-environment check is the registry's, within the pin: a
    // token with only the pin role gets it too.
    w.cli_as(&pinner, &["pin", "--env", "prdo", "--release-id", "r1"])
        .fails(2, "did you mean prod?");
}

#[test]
fn errors_say_what_to_do_about_the_server() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    let http = format!("http://{}", w.server.tiles_addr());
    let r = stackpin(w.dir.path(), &http, &["list"]);
    r.fails(2, "not a stackpin gRPC endpoint");
    let port = w.server.addr.port();
    assert!(
        r.stderr.contains(&format!("did you mean port {port}")),
        "{r:?}"
    );
    // Nothing listening: said once, with the address and what to check.
    let port = stackpin_tests::s3::free_port();
    let gone = format!("http://127.0.0.1:{port}");
    let r = stackpin(w.dir.path(), &gone, &["--retries", "2", "list"]);
    r.fails(6, &format!("cannot reach the registry at {gone}"));
    assert_eq!(r.stderr.matches("connecting to").count(), 1, "{r:?}");
    assert!(r.stderr.contains("3 attempt(s)"), "{r:?}");
    assert!(
        !r.stderr.contains("tcp connect error: tcp connect error"),
        "{r:?}"
    );
}

#[test]
fn config_check_runs_the_checks_of_a_start_and_points_at_the_line() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let check = |text: &str| {
        std::fs::write(dir.join("stackpin.toml"), text).unwrap();
        registry(dir, &["config", "check", "stackpin.toml"])
    };
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let out = check("trusted_keys = \"no-such-folder\"\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(said(&out).contains("trusted_keys"), "{}", said(&out));
    let out = check("# limits\nmax_batch = 8\nmax_artifact_bytes = \"big\"\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(said(&out).contains("stackpin.toml:3"), "{}", said(&out));
    let out = check("trusted_key = \"keys\"\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        said(&out).contains("did you mean trusted_keys?"),
        "{}",
        said(&out)
    );
    let out = check("tls_cert = \"none.crt\"\ntls_key = \"none.key\"\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(said(&out).contains("tls_cert"), "{}", said(&out));
    std::fs::create_dir(dir.join("keys")).unwrap();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "k.pem"]).ok();
    std::fs::rename(dir.join("k.pub.pem"), dir.join("keys/k.pub.pem")).unwrap();
    let out = check("trusted_keys = \"keys\"\n");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn keys_after_a_rotation_are_named_when_missing_or_revoked() {
    let w = World::new(&[]);
    w.write("a.json", b"{\"objects\":[]}");
    w.cli(&[
        "publish",
        "a.json",
        "--release-id",
        "old",
        "--key",
        "ops.pem",
    ])
    .ok();
    w.cli(&[
        "key",
        "revoke",
        "trusted/ops.pub.pem",
        "--reason",
        "rotated",
    ])
    .ok();
    w.write("b.json", b"{\"objects\":[1]}");
    w.cli(&[
        "publish",
        "b.json",
        "--release-id",
        "new",
        "--key",
        "ops.pem",
    ])
    .fails(2, "was revoked at");
    w.cli(&[
        "publish",
        "b.json",
        "--release-id",
        "new",
        "--key",
        "ci.pem",
    ])
    .ok();
    // An auditor with only the current key lacks an input: exit 2, naming
    // the key; with both (repeated), the audit passes.
    let ops_id = w.cli(&["--output", "json", "key", "list"]).json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["revoked_at"].is_string())
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.cli(&["audit", "--trusted-keys", "trusted/ci.pub.pem"])
        .fails(2, &ops_id);
    w.cli(&[
        "audit",
        "--trusted-keys",
        "trusted/ci.pub.pem",
        "--trusted-keys",
        "trusted/ops.pub.pem",
    ])
    .ok();
}

#[test]
fn times_as_people_type_them_are_said_back() {
    let w = World::new(&[]);
    w.three_releases();
    for at in ["now", "2h ago", "now-90m"] {
        let r = w.cli(&["--output", "json", "resolve", "--env", "prod", "--at", at]);
        assert_eq!(r.json()["pin"]["release_id"], "rel-3", "{at}");
        assert!(r.stderr.contains(&format!("{at:?} is 20")), "{r:?}");
    }
    // 2026-03-01T11:30:00Z as Unix seconds: rel-2 was live.
    let unix = jiff::Timestamp::from_second(1_772_364_600).unwrap();
    assert_eq!(unix.to_string(), "2026-03-01T11:30:00Z");
    let r = w.cli(&[
        "--output",
        "json",
        "resolve",
        "--env",
        "prod",
        "--at",
        "@1772364600",
    ]);
    assert_eq!(r.json()["pin"]["release_id"], "rel-2");
    w.cli(&["resolve", "--env", "prod", "--at", "2026-03-01 11:30"])
        .fails(2, "did you mean 2026-03-01T11:30:00Z");
}

#[test]
fn the_smaller_traps() {
    let w = World::new(&[]);
    w.three_releases();
    // A plan needs neither --out nor --trusted-keys, and says what it did
    // not check.
    let plan = w.cli(&["restore", "--env", "prod", "--at", T3, "--plan"]);
    assert!(
        plan.ok().contains("not checked: no --trusted-keys"),
        "{plan:?}"
    );
    // --out - : fetch writes the artifact to standard output; restore
    // says why it cannot.
    let fetched = w.cli(&["fetch", "--release-id", "rel-2", "--out", "-"]);
    assert_eq!(fetched.ok(), "{\"release\":2,\"objects\":[]}\n");
    w.restore(T3, "-", &[]).fails(2, "needs a file name");
    // Replacing a file is said.
    w.restore(T3, "a.json", &[]).ok();
    let again = w.restore(T3, "a.json", &[]);
    assert!(
        again.stderr.contains("replacing the existing a.json"),
        "{again:?}"
    );
    // Near a switch, a script can make it an exit code: written, then 9.
    let near = w.restore("2026-03-01T12:00:01Z", "near.json", &["--fail-near-switch"]);
    assert_eq!(near.code, 9, "{near:?}");
    assert!(w.dir.path().join("near.json").exists());
    assert!(near.stderr.contains("within the margin"), "{near:?}");
}

#[test]
fn a_publish_to_a_registry_that_trusts_no_key_is_invalid_input() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    let server = stackpin_tests::Server::start(&dir.join("data"), &[]);
    assert!(server.log().contains("--trusted-keys"), "{}", server.log());
    std::fs::write(dir.join("a.json"), b"{}").unwrap();
    stackpin(
        dir,
        &server.url(),
        &["publish", "a.json", "--release-id", "r", "--key", "ci.pem"],
    )
    .fails(2, "trusts no publisher key");
}
