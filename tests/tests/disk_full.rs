//! The data folder on a small tmpfs that fills up mid-publish: a clear
//! error, nothing partial written, reads still served, and writes working
//! again once space is freed. Needs permission to mount a tmpfs (root, as
//! in CI).

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::process::Command;

use stackpin_tests::{Server, stackpin};
use tempfile::TempDir;

#[test]
fn a_full_disk_fails_clearly_writes_nothing_partial_and_recovers() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let _mount = stackpin_tests::Tmpfs::mount(&data, 24);

    std::fs::create_dir(dir.join("trusted")).unwrap();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem")).unwrap();
    let trusted = dir.join("trusted").display().to_string();
    let server = Server::start(&data, &["--trusted-keys", &trusted]);
    let cli = |args: &[&str]| stackpin(dir, &server.url(), args);
    std::fs::write(dir.join("small.json"), "{\"small\":true}").unwrap();
    cli(&[
        "publish",
        "small.json",
        "--release-id",
        "small",
        "--key",
        "ci.pem",
    ])
    .ok();
    cli(&["pin", "--env", "prod", "--new-env", "--release-id", "small"]).ok();

    // Ballast takes most of the space; 1 MiB artifacts fill the rest.
    let ballast = data.join("ballast");
    let free = || {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap_or("0")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let ballast_size = free().saturating_sub(6 * 1024 * 1024);
    std::fs::write(&ballast, vec![0u8; usize::try_from(ballast_size).unwrap()]).unwrap();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    let mut full = None;
    for i in 0..40 {
        let file = format!("big-{i}.json");
        std::fs::write(
            dir.join(&file),
            big.replace("\"pad\"", &format!("\"pad{i}\"")),
        )
        .unwrap();
        let run = cli(&[
            "publish",
            &file,
            "--release-id",
            &format!("big-{i}"),
            "--key",
            "ci.pem",
        ]);
        if run.code != 0 {
            full = Some(run);
            break;
        }
    }
    let run = full.expect("the disk never filled up");
    assert_eq!(
        run.code, 6,
        "a full disk is not the client's fault: {run:?}"
    );
    assert!(
        run.stderr.contains("full"),
        "the error should say the disk is full: {run:?}"
    );

    // Nothing partial: every blob file is complete and no staging file is left.
    stackpin_tests::assert_blobs_whole(&data);
    // Reads keep working while the disk is full.
    let v = cli(&[
        "--output",
        "json",
        "resolve",
        "--env",
        "prod",
        "--at",
        "2999-01-01T00:00:00Z",
    ])
    .json();
    assert_eq!(v["pin"]["release_id"], "small");
    cli(&["fetch", "--release-id", "small", "--out", "small-back.json"]).ok();

    // Free the space: writes work again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    cli(&[
        "publish",
        "big-0.json",
        "--release-id",
        "after-full",
        "--key",
        "ci.pem",
    ])
    .ok();
    cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "after-full",
    ])
    .ok();
    let list = cli(&["--output", "json", "list"]).json();
    assert!(
        list["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["release_id"] == "after-full")
    );
    let w = server.stop();
    assert!(w.success());
}
