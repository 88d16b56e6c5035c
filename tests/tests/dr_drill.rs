//! The disaster-recovery drill with real tools: a SQLite database in WAL
//! mode, replicated by Litestream, written by a process that records in
//! each row the release that was live; three artifacts published and pinned
//! over time. For instants inside each interval, the database restored with
//! `litestream restore -timestamp T` and the artifact restored with
//! `stackpin restore --at T` must agree. Also a `VACUUM INTO` snapshot
//! tagged with `stackpin snapshot-tag`, restored from the tag.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use stackpin_tests::litestream::{litestream, replicate};
use stackpin_tests::world::World;

/// The newest row's release in a SQLite database (python3's sqlite3).
fn newest_release(db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select release from rows order by id desc limit 1').fetchone()[0])")
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn now() -> String {
    stackpin_core::time::Timestamp::now().to_string()
}

#[test]
fn litestream_and_stackpin_restore_the_same_moment() {
    let w = World::new(&[]);
    let dir = w.dir.path().to_path_buf();
    w.publish_releases(3);
    let (db, live, stop) = (dir.join("app.db"), dir.join("live"), dir.join("stop"));
    let replica = format!("file://{}", dir.join("replica").display());
    std::fs::write(&live, "none").unwrap();
    let (writer, _replicating) = replicate(&db, &live, &stop, &replica);
    std::thread::sleep(Duration::from_secs(1));

    // Pin each release for ~3 s; remember an instant in the middle of each.
    let mut middles = Vec::new();
    for i in 1..=3 {
        w.cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            &format!("rel-{i}"),
            "--reason",
            "drill",
        ])
        .ok();
        std::fs::write(&live, format!("rel-{i}")).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        middles.push((i, now()));
        if i == 2 {
            // A snapshot in the middle of rel-2's interval, tagged.
            let snap = dir.join("snap.db");
            let out = Command::new("python3")
                .arg("-c")
                .arg("import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute(\"vacuum into '\" + sys.argv[2] + \"'\")")
                .arg(&db)
                .arg(&snap)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            w.cli(&["snapshot-tag", "--env", "prod", "--file", "snap.db"])
                .ok();
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(2)); // let Litestream ship the last WAL
    std::fs::write(&stop, "").unwrap();
    drop(writer);

    for (i, at) in &middles {
        let restored_db = dir.join(format!("restored-{i}.db"));
        let out = Command::new(litestream())
            .args(["restore", "-timestamp", at, "-o"])
            .arg(&restored_db)
            .arg(&replica)
            .output()
            .unwrap();
        assert!(out.status.success(), "litestream restore at {at}: {out:?}");
        let file = format!("artifact-{i}.json");
        let restored = w.restore(at, &file, &["--output", "json"]).json();
        let release = restored["pin"]["release_id"].as_str().unwrap().to_owned();
        assert_eq!(release, format!("rel-{i}"));
        assert_eq!(
            newest_release(&restored_db),
            release,
            "database and artifact disagree at {at}"
        );
        assert!(
            restored["database"]["litestream"]["command"]
                .as_str()
                .unwrap()
                .contains(&format!("-timestamp {}", restored["at"].as_str().unwrap()))
        );
        assert_eq!(w.read(&file), w.read(&format!("r{i}.json")));
    }

    // The snapshot and its tag restore together.
    let tag: serde_json::Value = serde_json::from_slice(&w.read("snap.db.stackpin.json")).unwrap();
    assert_eq!(tag["release_id"], "rel-2");
    assert_eq!(newest_release(&dir.join("snap.db")), "rel-2");
    let digest = tag["digest"].as_str().unwrap();
    w.cli(&["fetch", "--digest", digest, "--out", "from-snapshot.json"])
        .ok();
    assert_eq!(w.read("from-snapshot.json"), w.read("r2.json"));
}

#[test]
fn pins_record_database_positions_and_resolve_by_them() {
    let w = World::new(&[]);
    w.three_releases(); // rel-1..3 pinned at T1..T3 without positions
    for i in 4..=6 {
        w.write(&format!("p{i}.json"), format!("{{\"p\":{i}}}").as_bytes());
        w.cli(&[
            "publish",
            &format!("p{i}.json"),
            "--release-id",
            &format!("rel-{i}"),
            "--key",
            "ci.pem",
        ])
        .ok();
    }
    let pin = |release: &str, position: &[&str]| {
        let mut args = vec!["pin", "--env", "pg", "--new-env", "--release-id", release];
        args.extend_from_slice(position);
        w.cli(&args)
    };
    pin("rel-4", &["--db-lsn", "0/16B3748"]).ok();
    pin(
        "rel-5",
        &["--db-lsn", "0/9000000", "--db-restore-point", "x"],
    )
    .fails(2, "cannot be used with");
    pin("rel-5", &["--db-lsn", "0/16B3747"]).fails(4, "never go backwards");
    pin("rel-5", &["--db-lsn", "0/9000000"]).ok();
    pin("rel-6", &["--db-restore-point", "before-migration"]).ok();
    pin("rel-4", &["--db-lsn", "zz"]).fails(2, "LSN");

    let by = |lsn: &str| {
        w.cli(&[
            "--output", "json", "resolve", "--env", "pg", "--db-lsn", lsn,
        ])
        .json()
    };
    // 0/9000000 > 0/16B3748 numerically, though not as text against "0/16B3748".
    assert_eq!(by("0/16B3748")["pin"]["release_id"], "rel-4");
    assert_eq!(by("0/8FFFFFF")["pin"]["release_id"], "rel-4");
    let v = by("1/0");
    assert_eq!(v["pin"]["release_id"], "rel-5");
    // rel-6 recorded no LSN: the answer says the restore may be uncertain.
    assert!(v["uncertain"].as_str().unwrap().contains("rel-6"), "{v}");
    w.cli(&["resolve", "--env", "pg", "--db-lsn", "0/1"])
        .fails(3, "no pin of pg recorded a LSN");

    // restore --plan explains without writing; restore prints the DB target.
    let plan = w.restore(
        "2999-01-01T00:00:00Z",
        "plan.json",
        &["--plan", "--output", "json"],
    );
    let plan = plan.json();
    assert_eq!(plan["plan"], true);
    assert!(
        !w.dir.path().join("plan.json").exists(),
        "a plan wrote the file"
    );
    // PostgreSQL refuses RFC 3339's Z; the real recovery is in postgres.rs.
    let settings: Vec<&str> = plan["database"]["postgresql"]["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        settings.contains(&"recovery_target_time = '2999-01-01 00:00:00.000000+00'"),
        "{settings:?}"
    );
    assert!(
        settings[0].starts_with("restore_command = 'cp "),
        "{settings:?}"
    );
    assert!(settings.contains(&"archive_mode = off"), "{settings:?}");
    let out = w.cli(&[
        "--output",
        "json",
        "restore",
        "--env",
        "pg",
        "--db-lsn",
        "0/A000000",
        "--out",
        "pg.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ]);
    let out = out.json();
    assert_eq!(out["pin"]["release_id"], "rel-5");
    assert_eq!(
        out["database"]["postgresql"]["settings"][1],
        "recovery_target_lsn = '0/A000000'"
    );
    assert_eq!(out["database"]["position"], "LSN 0/A000000");
    assert_eq!(
        out["database"]["at_activation"]["position"],
        "LSN 0/9000000"
    );
    assert_eq!(
        out["database"]["at_activation"]["postgresql"]["settings"][1],
        "recovery_target_lsn = '0/9000000'"
    );
    let text = w.cli(&[
        "restore",
        "--env",
        "pg",
        "--at",
        "2999-01-01T00:00:00Z",
        "--out",
        "rp.json",
        "--trusted-keys",
        "trusted",
        "--log-key",
        &w.vkey,
    ]);
    assert!(
        text.ok()
            .contains("recovery_target_name = 'before-migration'"),
        "{text:?}"
    );
}
