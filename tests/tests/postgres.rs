//! The PostgreSQL recovery settings `stackpin restore` prints, applied
//! exactly as printed to a real PostgreSQL 15: a primary archiving its WAL,
//! three releases pinned with their LSNs while rows are written, then
//! copies of one base backup recovered by time and by LSN. Each copy must
//! start (no refused setting), promote, and hold exactly the rows written
//! up to the instant, under the release `restore` paired with it.
//!
//! `stackpin drill run --pg-base` then performs such a recovery itself,
//! checks it and records the drill; without the WAL it fails and records
//! that.
//!
//! The servers run as the unprivileged `postgres` user (initdb refuses
//! root) on unix sockets in a temporary folder; nothing listens on TCP.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stackpin_tests::pg::{BIN, Cluster, append, chown_postgres, is_root, ok, pg};
use stackpin_tests::world::World;

#[test]
fn printed_postgresql_settings_recover_a_real_server_by_time_and_by_lsn() {
    let world = World::new(&[]);
    world.three_releases(); // publishes rel-1..3 (and pins them in prod)
    let tmp = tempfile::Builder::new().prefix("pg").tempdir().unwrap();
    let dir = tmp.path();
    for sub in ["sock", "archive"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let mut perms = std::fs::metadata(dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir, perms).unwrap();
    chown_postgres(dir);
    let archive = dir.join("archive");

    let primary = Cluster {
        data: dir.join("primary"),
        sock: dir.join("sock"),
        port: 5491,
    };
    primary.init(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = 'cp %p {}/%f'\n",
        archive.display()
    ));
    ok(primary.start(), "starting the primary");
    primary.sql("CREATE TABLE rows (release text NOT NULL, n int NOT NULL)");
    primary.sql("CREATE TABLE ticks (n int)");
    let base = dir.join("base");
    ok(
        pg(
            "pg_basebackup",
            &[
                "-h",
                primary.sock.to_str().unwrap(),
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                base.to_str().unwrap(),
                "--no-sync",
            ],
        ),
        "pg_basebackup",
    );

    // Each release pinned with the LSN at activation, then its rows; an
    // instant and an LSN inside its interval are kept for the restores.
    let mut targets = Vec::new();
    for i in 1..=3 {
        let release = format!("rel-{i}");
        let lsn = primary.sql("SELECT pg_current_wal_lsn()");
        world
            .cli(&[
                "pin",
                "--env",
                "pg",
                "--new-env",
                "--release-id",
                &release,
                "--db-lsn",
                &lsn,
            ])
            .ok();
        // Clear of the boundary margin (2 s) on both sides of the instant.
        std::thread::sleep(Duration::from_millis(2200));
        primary.sql(&format!(
            "INSERT INTO rows SELECT '{release}', g FROM generate_series(1, 100) g"
        ));
        let at = primary.now();
        let after = primary.sql("SELECT pg_current_wal_lsn()");
        targets.push((release, at, after));
        // WAL moves on before the next activation, so its recorded LSN is
        // past this target (at an equal LSN the next release would be the
        // one live, by the rule "the greatest at or below").
        primary.sql("INSERT INTO ticks VALUES (1)");
        std::thread::sleep(Duration::from_millis(2200));
    }
    // A later commit: recovery by time stops at the first commit after its
    // target, so the last target needs one after it.
    primary.sql("INSERT INTO rows VALUES ('later', 0)");
    // Everything archived before the restores.
    let last = primary.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !archive.join(&last).exists() {
        assert!(Instant::now() < deadline, "{last} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    primary.stop();

    let mut port = 5500;
    for (release, at, lsn) in &targets {
        for query in [["--at", at.as_str()], ["--db-lsn", lsn.as_str()]] {
            port += 1;
            let out = format!("pg-{port}.json");
            let restore = world
                .cli(&[
                    "--output",
                    "json",
                    "restore",
                    "--env",
                    "pg",
                    query[0],
                    query[1],
                    "--out",
                    &out,
                    "--trusted-keys",
                    "trusted",
                    "--log-key",
                    &world.vkey,
                    "--wal-archive",
                    archive.to_str().unwrap(),
                ])
                .json();
            assert_eq!(restore["pin"]["release_id"], release.as_str(), "{query:?}");
            let settings: Vec<&str> = restore["database"]["postgresql"]["settings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();

            // A copy of the base backup with exactly the printed settings.
            let copy = Cluster {
                data: dir.join(format!("copy-{port}")),
                sock: dir.join("sock"),
                port,
            };
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&base)
                .arg(&copy.data)
                .status()
                .unwrap()
                .success();
            assert!(copied);
            append(
                &copy.data.join("postgresql.conf"),
                &format!("port = {port}\n{}", settings.join("\n")),
            );
            std::fs::write(copy.data.join("recovery.signal"), "").unwrap();
            chown_postgres(&copy.data);
            let started = copy.start();
            assert!(
                started.status.success(),
                "the printed settings {settings:?} did not start PostgreSQL:\n{}",
                copy.log()
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while copy.sql("SELECT pg_is_in_recovery()") != "f" {
                assert!(
                    Instant::now() < deadline,
                    "the copy did not promote:\n{}",
                    copy.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let want: Vec<String> = (1..=release[4..].parse::<u32>().unwrap())
                .map(|j| format!("rel-{j}:100"))
                .collect();
            let got = copy.sql(
                "SELECT string_agg(release || ':' || c, ',' ORDER BY release) FROM \
                 (SELECT release, count(*) AS c FROM rows GROUP BY release) r",
            );
            assert_eq!(
                got,
                want.join(","),
                "{query:?}: the database restored to the target must hold the rows up to \
                 {release}, the release restore paired with it"
            );
            copy.stop();
        }
    }

    // `stackpin drill run` does the same recovery itself, checks the
    // result and records the drill (as postgres: PostgreSQL refuses root).
    let trusted = dir.join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    for e in std::fs::read_dir(world.dir.path().join("trusted")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), trusted.join(e.file_name())).unwrap();
    }
    let empty_archive = dir.join("empty-archive");
    std::fs::create_dir(&empty_archive).unwrap();
    chown_postgres(dir);
    let drill = |archive: &Path, at: &str| {
        let stackpin = stackpin_tests::bin("stackpin");
        let args = [
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "--output",
            "json",
            "drill",
            "run",
            "--env",
            "pg",
            "--pg-base",
            base.to_str().unwrap(),
            "--wal-archive",
            archive.to_str().unwrap(),
            "--pg-bin",
            BIN,
            "--at",
            at,
            "--check",
            "SELECT count(*) FROM rows WHERE release = '{release_id}' => 100",
            "--trusted-keys",
            trusted.to_str().unwrap(),
            "--log-key",
            &world.vkey,
        ]
        .map(str::to_owned);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&stackpin);
            c
        } else {
            Command::new(&stackpin)
        };
        let out = command
            .current_dir(dir)
            .env("STACKPIN_SERVER", world.server.url())
            .env("TMPDIR", dir)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (release, at, _) = &targets[1];
    let (code, stdout, stderr) = drill(&archive, at);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let ran: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let entry = &ran["entry"];
    assert_eq!(entry["driver"], "postgresql");
    assert_eq!(entry["passed"], true, "{ran}");
    assert_eq!(entry["live"]["release_id"], release.as_str());
    let checks: Vec<(&str, bool)> = entry["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["passed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        checks,
        [
            ("artifact restored and verified", true),
            ("recovered and promoted", true),
            (
                "SELECT count(*) FROM rows WHERE release = '{release_id}' => 100",
                true
            ),
        ]
    );
    assert!(stderr.contains("PostgreSQL recovery: done"), "{stderr}");
    // Without the WAL, recovery cannot reach the target: a failed drill,
    // recorded as failed, with PostgreSQL's reason.
    let (code, stdout, stderr) = drill(&empty_archive, at);
    assert_eq!(code, Some(8), "{stdout}\n{stderr}");
    let ran: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(ran["entry"]["passed"], false, "{ran}");
    assert!(
        ran["entry"]["failure"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL"),
        "{ran}"
    );
    // Where the backup is not at hand: the drill printed as commands. Run
    // as printed (up to the artifact restore), they recover the copy.
    let printed = stackpin_tests::stackpin(
        world.dir.path(),
        &world.server.url(),
        &[
            "--output",
            "json",
            "drill",
            "run",
            "--env",
            "pg",
            "--print-postgresql",
            "--pg-base",
            base.to_str().unwrap(),
            "--wal-archive",
            archive.to_str().unwrap(),
            "--at",
            at,
            "--check",
            "SELECT count(*) FROM rows WHERE release = '{release_id}'",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &world.vkey,
        ],
    )
    .json();
    assert_eq!(printed["release_id"], release.as_str(), "{printed}");
    let commands: Vec<&str> = printed["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("stackpin drill record --env pg"))
    );
    let check = commands
        .iter()
        .find(|c| c.starts_with("psql") && c.contains(release.as_str()))
        .unwrap_or_else(|| panic!("no check with the release filled in: {commands:?}"));
    let upto = commands
        .iter()
        .position(|c| c.starts_with("stackpin restore"))
        .unwrap();
    let script = format!(
        "set -e\nexport PATH={BIN}:$PATH TMPDIR={}\n{}\n{check}\npg_ctl -D \"$D/pgdata\" -m immediate -w stop\nrm -rf \"$D\"\n",
        dir.display(),
        commands[..upto].join("\n")
    );
    let mut bash = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "bash", "-c", &script]);
        c
    } else {
        let mut c = Command::new("bash");
        c.args(["-c", &script]);
        c
    };
    let out = bash.current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "the printed drill failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_ctl talks on stdout too; the check's answer is a line of its own.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "100"), "{script}\n{stdout}");

    // Nothing of either drill is left in the temporary folder.
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("stackpin-drill-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
