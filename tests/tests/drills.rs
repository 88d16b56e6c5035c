//! Evidence that restores work, with real tools: a SQLite database written
//! while Litestream replicates it, three releases pinned over time, a
//! snapshot recorded in each live interval, and `stackpin drill run`
//! restoring each snapshot with Litestream and the paired artifact with
//! `stackpin restore`, checking them and recording the drill. A replica
//! that lost its newest segments fails its drill, which is recorded as
//! failed. `stackpin posture` judges the evidence as of injected instants,
//! the metrics show it, and the audit checks the new entries by the log's
//! rules (a drill tampered with in storage is caught).
//!
//! Long because one drill scenario (snapshots, restores, posture) is set
//! up once and walked through end to end.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use stackpin_core::time::Timestamp;
use stackpin_tests::copy_dir;
use stackpin_tests::litestream::{litestream, replicate};
use stackpin_tests::world::World;

fn now() -> Timestamp {
    Timestamp::now()
}

fn later(by: Duration) -> String {
    now()
        .saturating_add_micros(i64::try_from(by.as_micros()).unwrap())
        .to_string()
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// Every `.ltx` file under `dir`, by name (Litestream names them by
/// transaction id, so the newest sort last within a level).
fn ltx_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(ltx_files(&p));
        } else if p.extension().is_some_and(|x| x == "ltx") {
            out.push(p);
        }
    }
    out
}

#[test]
fn drills_restore_recorded_snapshots_and_posture_judges_the_evidence() {
    let metrics = format!("127.0.0.1:{}", stackpin_tests::s3::free_port());
    let tmp = tempfile::TempDir::new().unwrap();
    let cfg = tmp.path().join("registry.toml");
    std::fs::write(
        &cfg,
        "[[posture]]\nclass = \"evaluation\"\n\n[[posture]]\nenv = \"prod\"\nclass = \"single-node\"\n",
    )
    .unwrap();
    let w = World::new(&[
        "--config",
        cfg.to_str().unwrap(),
        "--metrics-listen",
        &metrics,
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let dir = w.dir.path().to_path_buf();
    let vkey = w.vkey.clone();
    w.publish_releases(3);
    let (db, live, stop) = (dir.join("app.db"), dir.join("live"), dir.join("stop"));
    let replica = format!("file://{}", dir.join("replica").display());
    std::fs::write(&live, "none").unwrap();
    let (writer, replicating) = replicate(&db, &live, &stop, &replica);
    std::thread::sleep(Duration::from_secs(1));

    // Three releases, each live ~3 s, a snapshot of the replica recorded in
    // the middle of each interval.
    let mut snapshots = Vec::new();
    for i in 1..=3 {
        w.cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            &format!("rel-{i}"),
        ])
        .ok();
        std::fs::write(&live, format!("rel-{i}")).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let at = now().to_string();
        let tagged = w
            .cli(&[
                "--output",
                "json",
                "snapshot-tag",
                "--env",
                "prod",
                "--location",
                &replica,
                "--driver",
                "litestream",
                "--at",
                &at,
                "--log-key",
                &vkey,
            ])
            .json();
        assert_eq!(tagged["verified"], true, "{tagged}");
        assert_eq!(tagged["entry"]["type"], "snapshot");
        // The registry paired it with the pin live then, not the client.
        assert_eq!(tagged["entry"]["live"]["release_id"], format!("rel-{i}"));
        snapshots.push((i, at, tagged["log_index"].as_u64().unwrap()));
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(2)); // let Litestream ship the last WAL
    std::fs::write(&stop, "").unwrap();
    drop(writer);
    drop(replicating);

    let listed = w
        .cli(&[
            "--output",
            "json",
            "snapshot",
            "list",
            "--env",
            "prod",
            "--log-key",
            &vkey,
        ])
        .json();
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{listed}");
    assert!(entries.iter().all(|e| e["verified"] == true));
    assert_eq!(entries[0]["log_index"], snapshots[2].2, "newest first");

    // A drill of each recorded snapshot passes and is recorded.
    let drill = |extra: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "drill",
            "run",
            "--env",
            "prod",
            "--check",
            "SELECT release FROM rows ORDER BY id DESC LIMIT 1 => {release_id}",
            "--check",
            "SELECT count(*) FROM rows",
            "--rpo-query",
            "SELECT max(at) FROM rows",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &vkey,
        ];
        args.extend_from_slice(extra);
        let lt = litestream();
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend(["--litestream".to_owned(), lt.display().to_string()]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        w.cli(&refs)
    };
    for (i, at, index) in &snapshots {
        let ran = drill(&["--snapshot", &index.to_string()]);
        assert_eq!(ran.code, 0, "drill of snapshot {index}: {ran:#?}");
        let ran = ran.json();
        let entry = &ran["entry"];
        assert_eq!(ran["verified"], true);
        assert_eq!(entry["type"], "drill");
        assert_eq!(entry["passed"], true, "{ran}");
        assert_eq!(entry["target"].as_str().unwrap(), at.as_str());
        assert_eq!(entry["snapshot"], *index);
        assert_eq!(entry["live"]["release_id"], format!("rel-{i}"));
        let checks = entry["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4, "{ran}"); // artifact, integrity, two queries
        assert!(checks.iter().all(|c| c["passed"] == true), "{ran}");
        assert_eq!(checks[1]["name"], "PRAGMA integrity_check");
        assert!(
            checks[2]["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("rel-{i}")),
            "{ran}"
        );
        assert!(entry["rto_millis"].as_u64().is_some(), "{ran}");
        assert!(entry["rpo_millis"].as_u64().is_some(), "{ran}");
        let steps: Vec<&str> = entry["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(steps[..2], ["stackpin restore", "litestream restore"]);
    }
    // A snapshot restores to its own instant: another --at is refused
    // before anything runs.
    drill(&[
        "--snapshot",
        &snapshots[1].2.to_string(),
        "--at",
        &snapshots[0].1,
    ])
    .fails(2, "drop --at to drill the snapshot");
    // A mistyped environment is not in policy: it is not found.
    w.cli(&["posture", "--env", "prdo"]).fails(3, "has no pins");
    // Nothing is left behind in the temporary folder.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("stackpin-drill-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // By TXID (`litestream restore -txid`): the newest transaction holds
    // rel-3's rows; the first one, written before anything was pinned,
    // holds none of them, so the release check fails even though the
    // instant (rel-3 live) is the same: the TXID, not the instant, chose
    // what was restored.
    let txids: Vec<String> = {
        let mut ends: Vec<String> = ltx_files(&dir.join("replica"))
            .iter()
            .filter_map(|p| {
                let stem = p.file_stem()?.to_str()?;
                Some(stem.split_once('-')?.1.to_owned())
            })
            .collect();
        ends.sort();
        ends.dedup();
        ends
    };
    assert!(txids.len() > 2, "{txids:?}");
    let newest = drill(&[
        "--replica",
        &replica,
        "--at",
        &snapshots[2].1,
        "--litestream-txid",
        txids.last().unwrap(),
    ]);
    assert_eq!(newest.code, 0, "{newest:#?}");
    let newest = newest.json();
    assert_eq!(newest["entry"]["live"]["release_id"], "rel-3", "{newest}");
    let first = drill(&[
        "--replica",
        &replica,
        "--at",
        &snapshots[2].1,
        "--litestream-txid",
        &txids[0],
    ]);
    assert_eq!(first.code, 8, "{first:#?}");
    let first: Value = serde_json::from_str(&first.stdout).unwrap();
    let release_check = &first["entry"]["checks"][2];
    assert_eq!(release_check["passed"], false, "{first}");
    assert!(
        !release_check["detail"]
            .as_str()
            .unwrap()
            .starts_with("rel-3"),
        "{first}"
    );

    // A replica that lost its newest segments: the drill fails, clearly,
    // and is recorded as failed.
    let damaged = dir.join("damaged");
    copy_dir(&dir.join("replica"), &damaged);
    let mut files = ltx_files(&damaged);
    files.sort_by_key(|p| p.file_name().unwrap().to_owned());
    assert!(files.len() > 10, "{files:?}");
    for f in &files[files.len() - 10..] {
        std::fs::remove_file(f).unwrap();
    }
    let url = format!("file://{}", damaged.display());
    let failed = drill(&["--replica", &url, "--at", &snapshots[2].1]);
    assert_eq!(failed.code, 8, "{failed:#?}");
    assert!(failed.stderr.contains("the drill failed"), "{failed:#?}");
    let failed: Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(failed["entry"]["passed"], false, "{failed}");
    assert!(failed["entry"]["failure"].as_str().is_some(), "{failed}");

    let drills = w
        .cli(&["--output", "json", "drill", "list", "--env", "prod"])
        .json();
    let list = drills["entries"].as_array().unwrap();
    assert_eq!(list.len(), 6, "{drills}");
    assert_eq!(list[0]["entry"]["passed"], false);
    let text = w.cli(&["drill", "list", "--env", "prod"]).ok().to_owned();
    assert!(text.contains("FAILED") && text.contains("PASSED"), "{text}");

    // Posture now: the newest snapshot and the newest passing drill are
    // fresh, so prod (single-node) is in policy.
    let posture = |at: Option<&str>| {
        let mut args = vec!["--output", "json", "posture", "--env", "prod"];
        if let Some(at) = at {
            args.extend(["--at", at]);
        }
        w.cli(&args)
    };
    let p = posture(None);
    assert_eq!(p.code, 0, "{p:#?}");
    let p = p.json();
    let prod = &p["environments"][0];
    assert_eq!(prod["class"], "single-node");
    assert_eq!(prod["rpo_seconds"], 3600);
    assert_eq!(prod["drill_interval_seconds"], 90 * 86_400);
    assert_eq!(prod["last_drill_failed"], true);
    assert_eq!(prod["pins"], 3);
    assert_eq!(prod["pins_without_snapshot_count"], 0);
    assert!(prod["measured_rto_millis"].as_u64().is_some());
    // The web view's overview says the same.
    let overview = get(&w.server.tiles_addr().to_string(), "/");
    assert!(overview.contains("single-node: in policy"), "{overview}");

    // Half a second after the second snapshot was tagged (before the third
    // pin) only what existed then counts: two pins, both with a snapshot
    // recorded, and no drill yet.
    let then: Timestamp = snapshots[1].1.parse().unwrap();
    let then = then.saturating_add_micros(500_000).to_string();
    let past = posture(Some(&then));
    assert_eq!(past.code, 8, "{past:#?}");
    let past: Value = serde_json::from_str(&past.stdout).unwrap();
    let then = &past["environments"][0];
    assert_eq!(then["pins"], 2, "{past}");
    assert_eq!(then["pins_without_snapshot_count"], 0, "{past}");
    assert_eq!(then["findings"].as_array().unwrap().len(), 1, "{past}");
    assert!(
        then["findings"][0]
            .as_str()
            .unwrap()
            .contains("no passing restore drill"),
        "{past}"
    );

    // Two hours on, the newest snapshot is older than the RPO.
    let two_hours = later(Duration::from_secs(2 * 3600));
    let p = posture(Some(&two_hours));
    assert_eq!(p.code, 8, "{p:#?}");
    let p: Value = serde_json::from_str(&p.stdout).unwrap();
    let findings = p["environments"][0]["findings"].clone();
    assert_eq!(findings.as_array().unwrap().len(), 1, "{findings}");
    assert!(findings[0].as_str().unwrap().contains("RPO"), "{findings}");

    // A quarter and a day on, the drill interval has passed too.
    let quarter = later(Duration::from_secs(91 * 86_400));
    let p = posture(Some(&quarter));
    assert_eq!(p.code, 8, "{p:#?}");
    let p: Value = serde_json::from_str(&p.stdout).unwrap();
    let text = p["environments"][0]["findings"].to_string();
    assert!(text.contains("drill interval"), "{text}");
    let human = w.cli(&["posture", "--at", &quarter]);
    assert_eq!(human.code, 8);
    assert!(
        human.stdout.contains("prod (single-node): OUT OF POLICY"),
        "{human:#?}"
    );
    assert!(human.stderr.contains("out of policy: prod"), "{human:#?}");

    // Another environment, held to the evaluation class by the default
    // table, is never out of policy.
    w.cli(&["pin", "--env", "demo", "--new-env", "--release-id", "rel-1"])
        .ok();
    let demo = w.cli(&[
        "--output", "json", "posture", "--env", "demo", "--at", &quarter,
    ]);
    assert_eq!(demo.code, 0, "{demo:#?}");
    assert_eq!(
        demo.json()["environments"][0]["pins_without_snapshot_count"],
        1
    );

    // The same posture in metrics.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = get(&metrics, "/metrics");
        if body.contains("stackpin_posture_in_policy{env=\"prod\"")
            || body.contains("stackpin_posture_in_policy{class=\"single-node\",env=\"prod\"")
        {
            assert!(
                body.contains("stackpin_posture_drill_age_seconds{env=\"prod\"}"),
                "{body}"
            );
            assert!(
                body.contains("stackpin_posture_pins_without_snapshot{env=\"prod\"} 0"),
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no posture metrics: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The audit applies the rules to the new entries.
    let audit = |extra: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "audit",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &vkey,
        ];
        args.extend_from_slice(extra);
        w.cli(&args)
    };
    let report = audit(&[]);
    assert_eq!(report.code, 0, "{report:#?}");
    let report = report.json();
    assert_eq!(report["snapshots"], 3, "{report}");
    assert_eq!(report["drills"], 6, "{report}");

    // A drill rewritten in storage to claim another artifact is caught by
    // the rule, not only by the changed hash.
    let data = w.data();
    let World { server, .. } = w;
    server.stop();
    let mut tampered = false;
    let (from, to) = (
        "\"live\":{\"seq\":1,\"release_id\":\"rel-1\"",
        "\"live\":{\"seq\":2,\"release_id\":\"rel-2\"",
    );
    for e in std::fs::read_dir(data.join("log/entries")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if tampered || !text.contains(from) {
            continue;
        }
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| {
                if !tampered && l.contains("\"type\":\"drill\"") && l.contains(from) {
                    tampered = true;
                    l.replacen(from, to, 1)
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
    }
    assert!(tampered);
    let offline = stackpin_tests::stackpin(
        &dir,
        "http://127.0.0.1:1",
        &[
            "--output",
            "json",
            "audit",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &vkey,
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_ne!(offline.code, 0, "{offline:#?}");
    let report: Value = serde_json::from_str(&offline.stdout).unwrap();
    let evidence: Vec<&Value> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["class"] == "evidence")
        .collect();
    assert_eq!(evidence.len(), 1, "{report}");
    assert_eq!(evidence[0]["rule"], "LIVE_MISMATCH", "{report}");
    assert!(
        evidence[0]["message"]
            .as_str()
            .unwrap()
            .contains("names pin #2 (rel-2) as live in prod"),
        "{report}"
    );
    drop(tmp);
}

/// An instant after the third of `three_releases`' pins.
const T3_AFTER: &str = "2026-06-01T00:00:00Z";

#[test]
fn drills_and_snapshots_refuse_what_they_cannot_pair_and_record_nothing() {
    let w = World::new(&[]);
    let vkey = w.vkey.clone();
    // three_releases pins at T1, T2 and T3.
    let before_pins = "2026-03-01T09:00:00Z";
    w.three_releases();
    let size = |w: &World| {
        w.cli(&["--output", "json", "checkpoint", "--log-key", &vkey])
            .json()["size"]
            .as_u64()
            .unwrap()
    };
    let entries = size(&w);

    // Nothing was live before the first pin: refused, nothing written.
    w.cli(&[
        "snapshot-tag",
        "--env",
        "prod",
        "--location",
        "s3://backups/prod/early",
        "--at",
        before_pins,
    ])
    .fails(4, "nothing was live in prod");
    w.cli(&[
        "drill",
        "record",
        "--env",
        "prod",
        "--driver",
        "postgresql",
        "--at",
        before_pins,
        "--check-passed",
        "row count",
    ])
    .fails(4, "nothing was live in prod");
    // Bad input, refused before anything is sent.
    w.cli(&["snapshot-tag", "--env", "prod"]).fails(2, "--file");
    let kept = w.dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    std::fs::write(kept.join("old"), "").unwrap();
    let relative = [
        "restore", "--env", "prod", "--at", T3_AFTER, "--out", "x.json",
    ];
    for (extra, needle) in [
        (
            &["--file", "app.db", "--litestream-txid", "10"][..],
            "--litestream-txid restores a Litestream",
        ),
        (
            &[
                "--replica",
                "file:///nowhere",
                "--at",
                T3_AFTER,
                "--wal-archive",
                "/tmp",
            ][..],
            "--wal-archive is for a PostgreSQL",
        ),
        (
            &["--file", "app.db", "--keep", kept.to_str().unwrap()][..],
            "is not empty",
        ),
        (
            &[
                "--pg-base",
                "/tmp",
                "--wal-archive",
                "no-such-archive",
                "--at",
                T3_AFTER,
            ][..],
            "--wal-archive no-such-archive",
        ),
    ] {
        let mut args = vec![
            "drill",
            "run",
            "--env",
            "prod",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &vkey,
        ];
        args.extend_from_slice(extra);
        w.cli(&args).fails(2, needle);
    }
    w.cli(&[&relative[..], &["--plan", "--wal-archive", "wal"]].concat())
        .fails(2, "not an absolute path");
    w.cli(&[
        "drill",
        "record",
        "--env",
        "prod",
        "--driver",
        "postgresql",
        "--at",
        T3_AFTER,
    ])
    .fails(2, "a drill with no checks proves nothing");
    w.cli(&[
        "snapshot-tag",
        "--env",
        "prod",
        "--location",
        "x",
        "--driver",
        "tape",
    ])
    .fails(2, "driver");
    w.cli(&[
        "drill",
        "run",
        "--env",
        "prod",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &vkey,
    ])
    .fails(2, "say what to restore");
    w.cli(&[
        "drill",
        "run",
        "--env",
        "prod",
        "--snapshot",
        "0",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &vkey,
    ])
    .fails(2, "is a publish, not a snapshot");
    w.cli(&[
        "snapshot-tag",
        "--env",
        "prod",
        "--location",
        "x",
        "--at",
        &later(Duration::from_secs(3600)),
    ])
    .fails(4, "in the future");
    assert_eq!(size(&w), entries, "a refused request wrote an entry");

    // A PostgreSQL drill done by other means, recorded.
    let at = now().to_string();
    let recorded = w
        .cli(&[
            "--output",
            "json",
            "drill",
            "record",
            "--env",
            "prod",
            "--driver",
            "postgresql",
            "--at",
            &at,
            "--check-passed",
            "orders count",
            "--rto",
            "4m",
            "--log-key",
            &vkey,
        ])
        .json();
    assert_eq!(recorded["verified"], true);
    assert_eq!(recorded["entry"]["passed"], true);
    assert_eq!(recorded["entry"]["rto_millis"], 240_000);
    assert_eq!(recorded["entry"]["live"]["release_id"], "rel-3");
    // A failed one exits 8 and is recorded as failed.
    let failed = w.cli(&[
        "drill",
        "record",
        "--env",
        "prod",
        "--driver",
        "postgresql",
        "--at",
        &at,
        "--check-failed",
        "orders count",
    ]);
    assert_eq!(failed.code, 8, "{failed:#?}");
    assert!(failed.stdout.contains("FAILED"), "{failed:#?}");
    assert_eq!(size(&w), entries + 2);

    // Without a snapshot, posture says so and is out of policy (the
    // default class is single-node).
    let p = w.cli(&["--output", "json", "posture"]);
    assert_eq!(p.code, 8, "{p:#?}");
    let p: Value = serde_json::from_str(&p.stdout).unwrap();
    let text = p["environments"][0]["findings"].to_string();
    assert!(text.contains("no snapshot is recorded"), "{text}");

    // Watching drills: the entries stream, verified.
    let watched = w.cli(&[
        "watch",
        "--from",
        "0",
        "--type",
        "drill",
        "--count",
        "2",
        "--log-key",
        &vkey,
    ]);
    let lines: Vec<&str> = watched.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("PASSED") && lines[1].contains("FAILED"),
        "{lines:?}"
    );
}
