//! A read-only registry over a mirror, with the real binaries: it answers
//! resolve, history, status, checkpoints and tiles from the log another
//! process writes, serves the stored checkpoint as stored (it holds no
//! signing key), follows the mirror as it grows, refuses every write with
//! FAILED_PRECONDITION naming the mode, and leaves the storage exactly as
//! it found it. Settings that cannot work are refused at start.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use stackpin_tests::world::{T2, World};
use stackpin_tests::{Server, bin};

/// Every file under `dir` with its bytes, for comparing before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
#[allow(clippy::too_many_lines)]
fn a_read_only_registry_serves_a_mirror_follows_it_and_refuses_writes() {
    let w = World::new(&[]);
    w.three_releases();
    let mirror = w.dir.path().join("mirror");
    let dest = mirror.to_str().unwrap().to_owned();
    let url = w.server.url();
    w.cli(&["mirror", &url, &dest]).ok();
    let before = snapshot(&mirror);

    let ro_data = w.dir.path().join("ro-data");
    let trusted = w.dir.path().join("trusted");
    let storage = format!("file://{dest}");
    let ro = Server::start(
        &ro_data,
        &[
            "--read-only",
            "--storage",
            &storage,
            "--log-vkey",
            &w.vkey,
            "--trusted-keys",
            trusted.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    // The CLI, against the read-only registry, with the log's key.
    let on_ro = |args: &[&str]| {
        stackpin_tests::stackpin_with(
            w.dir.path(),
            &ro.url(),
            args,
            &[("STACKPIN_LOG_VKEY", w.vkey.as_str())],
        )
    };
    // Reads, proved like any registry's.
    let resolved = on_ro(&["--output", "json", "resolve", "--env", "prod", "--at", T2]).json();
    assert_eq!(resolved["pin"]["release_id"], "rel-2", "{resolved}");
    let history = on_ro(&["--output", "json", "history", "--env", "prod"]).json();
    assert_eq!(history["pins"].as_array().unwrap().len(), 3, "{history}");
    let status = on_ro(&["--output", "json", "status"]).json();
    assert_eq!(status["environments"][0]["live"]["release_id"], "rel-3");
    // The checkpoint it serves is the one stored, byte for byte: it signs
    // nothing (and holds no key).
    let stored = std::fs::read_to_string(mirror.join("log/checkpoint")).unwrap();
    let served = stackpin_tests::oci::get(ro.tiles_addr(), "/checkpoint");
    assert_eq!(String::from_utf8(served.body).unwrap(), stored);
    // The OCI read API too: what it derives stays in memory.
    let manifest = stackpin_tests::oci::request(
        ro.tiles_addr(),
        "GET",
        "/v2/objectstack/manifests/prod",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(manifest.status, 200, "{manifest:?}");
    assert!(!ro_data.join("log-key.pem").exists());
    // Every write is refused, naming the mode.
    w.write("a9.json", b"{\"release\":9}\n");
    for write in [
        vec![
            "publish",
            "a9.json",
            "--release-id",
            "rel-9",
            "--key",
            "ci.pem",
        ],
        vec!["pin", "--env", "prod", "--release-id", "rel-1"],
        vec!["key", "add", "trusted/ci.pub.pem", "--reason", "x"],
    ] {
        let refused = on_ro(&write);
        assert_eq!(refused.code, 4, "{write:?}: {refused:?}");
        assert!(
            refused.stderr.contains("read-only"),
            "{write:?}: {refused:?}"
        );
    }
    assert_eq!(
        snapshot(&mirror),
        before,
        "the read-only registry wrote to storage"
    );

    // It follows the mirror as it grows, and a watch on it sees the new pin.
    let mut watcher = std::process::Command::new(bin("stackpin"))
        .current_dir(w.dir.path())
        .env("STACKPIN_SERVER", ro.url())
        .arg("--state-dir")
        .arg(w.dir.path().join("watch-state"))
        .args(["--output", "json", "watch", "--env", "prod", "--count", "1"])
        .args(["--log-key", &w.vkey])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The watch starts from the size it finds: let it connect first.
    std::thread::sleep(Duration::from_millis(500));
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--release-id",
        "rel-1",
        "--reason",
        "back",
    ])
    .ok();
    w.cli(&["mirror", &url, &dest]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = on_ro(&["--output", "json", "status"]);
        if status.code == 0 {
            let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
            if v["environments"][0]["pins"] == 4 {
                assert_eq!(v["environments"][0]["live"]["release_id"], "rel-1");
                break;
            }
        }
        assert!(Instant::now() < deadline, "not followed: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while watcher.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the watch saw nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = watcher.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&seen.stdout);
    let event: serde_json::Value = serde_json::from_str(line.lines().next().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {line} {}", String::from_utf8_lossy(&seen.stderr)));
    assert_eq!(event["entry"]["release_id"], "rel-1", "{event}");
    assert_eq!(event["entry"]["seq"], 4, "{event}");
    let after = snapshot(&mirror);
    ro.stop();
    assert_eq!(snapshot(&mirror), after, "stopping wrote to storage");

    // Settings that cannot work are refused before anything starts.
    for (flags, names) in [
        (
            vec!["--read-only", "--storage", storage.as_str()],
            "log_vkey",
        ),
        (
            vec!["--read-only", "--log-vkey", w.vkey.as_str()],
            "storage",
        ),
    ] {
        let out = std::process::Command::new(bin("stackpin-registry"))
            .args(["--data-dir", w.dir.path().join("refused").to_str().unwrap()])
            .args(&flags)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?}: {stderr}");
        assert!(stderr.contains(names), "{flags:?}: {stderr}");
    }
}
