//! Barman (Debian's `barman` 3.4) with a real PostgreSQL 15: a primary
//! streaming its WAL to Barman (`receive-wal`, started by `barman cron`),
//! two base backups taken between pins, one recorded with `snapshot-tag
//! --barman-server` (a second tag records nothing new), then the `barman
//! recover` that `stackpin restore` prints, run as printed into scratch
//! folders, by time and by LSN: each copy must promote holding exactly the
//! rows up to its release. `drill run --barman-server` and a drill of the
//! recorded backup do the same themselves and record it.
//!
//! Barman runs as `postgres` here (`barman_user`), with its home in the
//! test's folder; nothing listens on TCP.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stackpin_tests::pg::{BIN, Cluster, as_postgres, chown_postgres, ok, rows};
use stackpin_tests::world::World;

/// Stops Barman's WAL receiver however the test ends.
struct Receiver<'a> {
    conf: &'a str,
}

impl Drop for Receiver<'_> {
    fn drop(&mut self) {
        let _ = as_postgres(
            Path::new("barman"),
            &["-c", self.conf, "receive-wal", "--stop", "pg"],
            &[],
        );
    }
}

#[test]
#[allow(clippy::too_many_lines)]
fn barman_backups_are_recorded_recovered_as_printed_and_drilled() {
    let world = World::new(&[]);
    world.three_releases();
    let tmp = tempfile::Builder::new().prefix("barman").tempdir().unwrap();
    let dir = tmp.path();
    for sub in ["sock", "home", "conf.d"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let mut perms = std::fs::metadata(dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir, perms).unwrap();
    let primary = Cluster {
        data: dir.join("primary"),
        sock: dir.join("sock"),
        port: 5631,
    };
    let conf = dir.join("barman.conf");
    std::fs::write(
        &conf,
        format!(
            "[barman]\nbarman_user = postgres\nbarman_home = {d}/home\nlog_file = \
             {d}/home/barman.log\nlog_level = INFO\nconfiguration_files_directory = {d}/conf.d\n\
             [pg]\nconninfo = host={d}/sock port={p} user=postgres dbname=postgres\n\
             streaming_conninfo = host={d}/sock port={p} user=postgres\nbackup_method = \
             postgres\nstreaming_archiver = on\nslot_name = barman\npath_prefix = {BIN}\n",
            d = dir.display(),
            p = primary.port,
        ),
    )
    .unwrap();
    chown_postgres(dir);
    let conf = conf.to_str().unwrap().to_owned();
    let barman = |args: &[&str]| {
        let mut all = vec!["-c", conf.as_str()];
        all.extend_from_slice(args);
        let (code, out, err) = as_postgres(Path::new("barman"), &all, &[]);
        assert_eq!(code, 0, "barman {args:?}:\n{out}\n{err}");
        out
    };
    primary.init("wal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4\n");
    ok(primary.start(), "starting the primary");
    barman(&["receive-wal", "--create-slot", "pg"]);
    let _receiver = Receiver { conf: &conf };
    barman(&["cron"]);
    barman(&["switch-wal", "--force", "--archive", "pg"]);
    primary.sql("CREATE TABLE rows (release text NOT NULL, n int NOT NULL)");
    primary.sql("CREATE TABLE ticks (n int)");

    let server = world.server.url();
    let state = dir.join("state");
    let stackpin_pg = |args: &[&str]| {
        let mut all = vec!["--state-dir", state.to_str().unwrap(), "--output", "json"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--log-key", &world.vkey]);
        let tmpdir = dir.to_str().unwrap();
        as_postgres(
            &stackpin_tests::bin("stackpin"),
            &all,
            &[
                ("STACKPIN_BARMAN_CONFIG", conf.as_str()),
                ("STACKPIN_SERVER", server.as_str()),
                ("TMPDIR", tmpdir),
            ],
        )
    };
    let pin = |release: &str| {
        let lsn = primary.sql("SELECT pg_current_wal_lsn()");
        world
            .cli(&[
                "pin",
                "--env",
                "brm",
                "--new-env",
                "--release-id",
                release,
                "--db-lsn",
                &lsn,
            ])
            .ok();
        std::thread::sleep(Duration::from_millis(2200));
    };
    let mark = || {
        let at = primary.now();
        let lsn = primary.sql("SELECT pg_current_wal_lsn()");
        primary.sql("INSERT INTO ticks VALUES (1)");
        std::thread::sleep(Duration::from_millis(2200));
        (at, lsn)
    };
    let insert = |release: &str| {
        primary.sql(&format!(
            "INSERT INTO rows SELECT '{release}', g FROM generate_series(1, 100) g"
        ));
    };
    pin("rel-1");
    insert("rel-1");
    barman(&["backup", "--wait", "pg"]);
    std::thread::sleep(Duration::from_millis(1100));

    // The newest backup recorded, paired with rel-1; a second tag of it is
    // the same entry, replayed.
    let tag = || {
        let (code, stdout, stderr) =
            stackpin_pg(&["snapshot-tag", "--env", "brm", "--barman-server", "pg"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let tagged = tag();
    let entry = &tagged["entry"];
    assert_eq!(entry["driver"], "barman", "{tagged}");
    assert_eq!(entry["live"]["release_id"], "rel-1", "{tagged}");
    let backup_a = entry["location"]
        .as_str()
        .unwrap()
        .strip_prefix("barman:pg/")
        .unwrap()
        .to_owned();
    let shown: serde_json::Value =
        serde_json::from_str(&barman(&["-f", "json", "show-backup", "pg", &backup_a])).unwrap();
    assert_eq!(
        entry["db_position"]["lsn"], shown["pg"]["base_backup_information"]["end_lsn"],
        "the snapshot's position is the backup's end LSN"
    );
    assert_eq!(tagged["replayed"], false);
    let again = tag();
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["log_index"], tagged["log_index"]);
    let listed = world
        .cli(&["--output", "json", "snapshot", "list", "--env", "brm"])
        .json();
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1, "{listed}");
    let index = tagged["log_index"].as_u64().unwrap().to_string();

    pin("rel-2");
    insert("rel-2");
    let (t2, l2) = mark();
    pin("rel-3");
    barman(&["backup", "--wait", "pg"]);
    std::thread::sleep(Duration::from_millis(1100));
    insert("rel-3");
    let (t3, l3) = mark();
    primary.sql("INSERT INTO rows VALUES ('later', 0)");
    barman(&["switch-wal", "--force", "--archive", "pg"]);
    primary.stop();
    let listed: serde_json::Value =
        serde_json::from_str(&barman(&["-f", "json", "list-backups", "pg"])).unwrap();
    let mut ids: Vec<String> = listed["pg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 2, "{listed}");
    let backup_b = ids[1].clone();
    assert_eq!(ids[0], backup_a);

    let cases = [
        ("rel-2", "--at", t2.as_str(), &backup_a, 2),
        ("rel-2", "--db-lsn", l2.as_str(), &backup_a, 2),
        ("rel-3", "--at", t3.as_str(), &backup_b, 3),
        ("rel-3", "--db-lsn", l3.as_str(), &backup_b, 3),
    ];
    for (i, (release, flag, value, backup, upto)) in cases.into_iter().enumerate() {
        let copy = Cluster {
            data: dir.join(format!("copy-{i}")),
            sock: dir.join("sock"),
            port: primary.port,
        };
        let destination = copy.data.to_str().unwrap();
        let (code, stdout, stderr) = stackpin_pg(&[
            "restore",
            "--env",
            "brm",
            flag,
            value,
            "--plan",
            "--barman-server",
            "pg",
            "--barman-destination",
            destination,
        ]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(plan["pin"]["release_id"], release, "{flag} {value}");
        let target = &plan["database"]["barman"];
        assert_eq!(target["set"], backup.as_str(), "{flag} {value}: {target}");
        let command = target["command"].as_str().unwrap();
        let how = if flag == "--at" {
            format!(
                "--target-time '{}'",
                value.replacen('T', " ", 1).replace('Z', "+00")
            )
        } else {
            format!("--target-lsn {value}")
        };
        assert_eq!(
            command,
            format!("barman recover {how} --target-action promote pg {backup} {destination}")
        );
        // Run as printed, with Barman's configuration named.
        let script = command.replacen("barman ", &format!("barman -c {conf} "), 1);
        let (code, out, err) = as_postgres(Path::new("bash"), &["-c", &script], &[]);
        assert_eq!(code, 0, "{script}\n{out}\n{err}");
        let started = copy.start();
        assert!(
            started.status.success(),
            "{script}: PostgreSQL did not start:\n{}",
            copy.log()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while copy.sql("SELECT pg_is_in_recovery()") != "f" {
            assert!(Instant::now() < deadline, "no promotion:\n{}", copy.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let want: Vec<String> = (1..=upto).map(|j| format!("rel-{j}:100")).collect();
        assert_eq!(rows(&copy), want.join(","), "{flag} {value} ({release})");
        copy.stop();
    }

    // `drill run` recovers with Barman itself, as postgres.
    let trusted: PathBuf = dir.join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    for e in std::fs::read_dir(world.dir.path().join("trusted")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), trusted.join(e.file_name())).unwrap();
    }
    chown_postgres(dir);
    let drill = |extra: &[&str]| {
        let mut args = vec![
            "drill",
            "run",
            "--env",
            "brm",
            "--pg-bin",
            BIN,
            "--trusted-keys",
            trusted.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        stackpin_pg(&args)
    };
    let check = "SELECT count(*) FROM rows WHERE release = '{release_id}' => 100";
    let (code, stdout, stderr) = drill(&["--barman-server", "pg", "--at", &t2, "--check", check]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let ran: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(ran["entry"]["driver"], "barman", "{ran}");
    assert_eq!(ran["entry"]["passed"], true, "{ran}");
    assert_eq!(ran["entry"]["live"]["release_id"], "rel-2", "{ran}");
    assert!(
        stderr.contains("barman recover and recovery: done"),
        "{stderr}"
    );
    let (code, stdout, stderr) = drill(&[
        "--snapshot",
        &index,
        "--check",
        "SELECT count(*) FROM rows WHERE release = 'rel-1' => 100",
        "--check",
        "SELECT count(*) FROM rows WHERE release = 'rel-2' => 0",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let ran: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(ran["entry"]["snapshot"], index.parse::<u64>().unwrap());
    assert_eq!(ran["entry"]["live"]["release_id"], "rel-1", "{ran}");
}
