//! Every log has its own identity: an origin unique to it, kept for good,
//! and a CLI that remembers each log it met under its origin and key.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use stackpin_tests::{Server, stackpin};
use tempfile::TempDir;

/// `stackpin-registry key` on `data`: (vkey, what it says of the origin).
fn key(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["key", "--create"])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env_remove("STACKPIN_LOG_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn origin(vkey: &str) -> &str {
    vkey.split('+').next().unwrap()
}

/// `stackpin checkpoint` with a shared state folder.
fn checkpoint(dir: &Path, server: &Server, vkey: &str) -> stackpin_tests::Run {
    stackpin(
        dir,
        &server.url(),
        &["--state-dir", "state", "checkpoint", "--log-key", vkey],
    )
}

#[test]
fn two_new_registries_have_their_own_origins_and_the_cli_remembers_both() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let (a_data, b_data) = (dir.join("a"), dir.join("b"));
    let (a_key, said) = key(&a_data, &[], &[]);
    assert!(said.contains("derived from the log key"), "{said}");
    let (b_key, _) = key(&b_data, &[], &[]);
    assert!(origin(&a_key).starts_with("stackpin.local/log/"), "{a_key}");
    assert_ne!(origin(&a_key), origin(&b_key));

    // One after the other, as a new user tries them: both are accepted.
    let a = Server::start(&a_data, &[]);
    checkpoint(dir, &a, &a_key).ok();
    a.stop();
    let b = Server::start(&b_data, &[]);
    checkpoint(dir, &b, &b_key).ok();
    b.stop();

    let list = stackpin(
        dir,
        "http://127.0.0.1:1",
        &["--state-dir", "state", "--output", "json", "trust", "list"],
    )
    .json();
    let mut origins: Vec<&str> = list["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["origin"].as_str().unwrap())
        .collect();
    origins.sort_unstable();
    let mut expected = vec![origin(&a_key), origin(&b_key)];
    expected.sort_unstable();
    assert_eq!(origins, expected);

    // The origin is stored with the log: the next start reports it as the
    // log's own, and a setting naming another one is refused.
    let (again, said) = key(&a_data, &[], &[]);
    assert_eq!(again, a_key);
    assert!(said.contains("the origin this log has signed as"), "{said}");
    let refused = Server::try_start(&a_data, &["--log-origin", "other.example/log"])
        .err()
        .unwrap();
    assert!(
        refused.contains("log_origin") && refused.contains(origin(&a_key)),
        "{refused}"
    );
}

#[test]
fn a_log_met_under_another_key_is_refused_until_forgotten_on_purpose() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let same = ["--log-origin", "shared.example/log"];
    let (a_data, b_data) = (dir.join("a"), dir.join("b"));
    let (a_key, said) = key(&a_data, &same, &[]);
    assert!(said.contains("from the log_origin setting"), "{said}");
    let (b_key, _) = key(&b_data, &same, &[]);
    assert_eq!(origin(&a_key), origin(&b_key));
    assert_ne!(a_key, b_key);

    let a = Server::start(&a_data, &same);
    checkpoint(dir, &a, &a_key).ok();
    a.stop();
    let b = Server::start(&b_data, &same);
    checkpoint(dir, &b, &b_key).fails(5, "trust forget shared.example/log");

    let forget = [
        "--state-dir",
        "state",
        "trust",
        "forget",
        "shared.example/log",
    ];
    let out = stackpin(dir, "http://127.0.0.1:1", &forget);
    assert!(out.ok().contains("forgot shared.example/log"), "{out:?}");
    stackpin(dir, "http://127.0.0.1:1", &forget).fails(3, "trust list");
    checkpoint(dir, &b, &b_key).ok();
    let list = stackpin(
        dir,
        "http://127.0.0.1:1",
        &["--state-dir", "state", "trust", "list"],
    );
    assert!(list.ok().contains("shared.example/log"), "{list:?}");
    b.stop();
}

#[test]
fn the_server_and_the_cli_read_their_keys_from_different_variables() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let (vkey, _) = key(&data, &[], &[]);

    // A shell that exported the verifier key for the CLI (the old name)
    // still starts the server: the server leaves a vkey alone.
    let server = Server::start_with_env(&data, &[], &[("STACKPIN_LOG_KEY", vkey.clone())]);
    // Each run with a state folder of its own: a key verified once is
    // remembered for the server, and the last run must know none.
    let runs = std::cell::Cell::new(0);
    let run = |env: &[(&str, &str)]| {
        runs.set(runs.get() + 1);
        let state = format!("state-{}", runs.get());
        let out = Command::new(stackpin_tests::bin("stackpin"))
            .current_dir(dir)
            .env("STACKPIN_SERVER", server.url())
            .env_remove("STACKPIN_LOG_KEY")
            .env_remove("STACKPIN_LOG_VKEY")
            .envs(env.iter().copied())
            .args(["--state-dir", &state, "checkpoint"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[("STACKPIN_LOG_VKEY", &vkey)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let (code, stderr) = run(&[("STACKPIN_LOG_KEY", &vkey)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("STACKPIN_LOG_VKEY"), "{stderr}");
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--log-key"), "{stderr}");
    server.stop();

    // The server's own variable, and its old spelling holding a path (read
    // with a warning).
    let pem = data.join("log-key.pem").to_str().unwrap().to_owned();
    let (same, _) = key(dir, &[], &[("STACKPIN_LOG_SIGNING_KEY", &pem)]);
    assert_eq!(same, vkey);
    let (same, said) = key(dir, &[], &[("STACKPIN_LOG_KEY", &pem)]);
    assert_eq!(same, vkey);
    assert!(said.contains("old name of log_signing_key"), "{said}");
}

#[test]
fn another_log_at_a_remembered_address_is_refused_and_the_refusal_names_the_remembered_key() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let (a_data, b_data) = (dir.join("a"), dir.join("b"));
    let (a_key, _) = key(&a_data, &[], &[]);
    let (b_key, _) = key(&b_data, &[], &[]);

    let a = Server::start(&a_data, &[]);
    let url = a.url();
    checkpoint(dir, &a, &a_key).ok();
    a.stop();
    // Another registry at the very same address, with a key of its own.
    let listen = url.trim_start_matches("http://").to_owned();
    let b = Server::start(&b_data, &["--listen", &listen]);
    assert_eq!(b.url(), url);
    let plain = ["--state-dir", "state", "checkpoint"];
    let refused = stackpin(dir, &url, &plain);
    refused.fails(5, "remembered for");
    assert!(refused.stderr.contains("trust add"), "{refused:?}");

    let add = ["--state-dir", "state", "trust", "add", b_key.as_str()];
    assert!(stackpin(dir, &url, &add).ok().contains("replacing"));
    stackpin(dir, &url, &plain).ok();
    b.stop();
}
