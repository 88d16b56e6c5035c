//! pgBackRest (Debian's `pgbackrest`) with a real PostgreSQL 15: a
//! primary archiving through `pgbackrest archive-push`, two backup sets
//! taken between pins, one recorded with `snapshot-tag
//! --pgbackrest-stanza` (and the pairing read back from pgBackRest's own
//! `info`), then the `pgbackrest restore` that `stackpin restore` prints,
//! run as printed into scratch folders, by time and by LSN: each copy must
//! promote holding exactly the rows up to its release. `drill run
//! --pgbackrest-stanza` and a drill of the recorded set do the same
//! themselves and record it.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use stackpin_tests::pg::{BIN, Cluster, as_postgres, chown_postgres, is_root, ok, rows};
use stackpin_tests::world::World;

#[test]
#[allow(clippy::too_many_lines)]
fn pgbackrest_sets_are_paired_restored_as_printed_and_drilled() {
    let world = World::new(&[]);
    world.three_releases();
    let tmp = tempfile::Builder::new().prefix("pgbr").tempdir().unwrap();
    let dir = tmp.path();
    for sub in ["sock", "repo", "lock"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let mut perms = std::fs::metadata(dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir, perms).unwrap();
    let primary = Cluster {
        data: dir.join("primary"),
        sock: dir.join("sock"),
        port: 5621,
    };
    let conf = dir.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={d}/repo\nlock-path={d}/lock\nlog-path={d}/lock\n\
             log-level-console=warn\nlog-level-file=off\nstart-fast=y\nrepo1-retention-full=9\n\
             [main]\npg1-path={d}/primary\npg1-socket-path={d}/sock\npg1-port={}\n",
            primary.port,
            d = dir.display()
        ),
    )
    .unwrap();
    chown_postgres(dir);
    let conf = conf.to_str().unwrap().to_owned();
    let env = [("PGBACKREST_CONFIG", conf.as_str())];
    let pgbackrest = |args: &[&str]| {
        let (code, out, err) = as_postgres(Path::new("pgbackrest"), args, &env);
        assert_eq!(code, 0, "pgbackrest {args:?}:\n{out}\n{err}");
        out
    };
    primary.init(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = 'pgbackrest \
         --config={conf} --stanza=main archive-push %p'\n"
    ));
    ok(primary.start_env(&env), "starting the primary");
    pgbackrest(&["--stanza=main", "stanza-create"]);
    primary.sql("CREATE TABLE rows (release text NOT NULL, n int NOT NULL)");
    primary.sql("CREATE TABLE ticks (n int)");

    // Each release pinned with its LSN, then its rows; an instant and an
    // LSN inside its interval kept for the restores. Set A is taken while
    // rel-1 is live, set B while rel-3 is (before its rows).
    let pin = |release: &str| {
        let lsn = primary.sql("SELECT pg_current_wal_lsn()");
        world
            .cli(&[
                "pin",
                "--env",
                "pgb",
                "--new-env",
                "--release-id",
                release,
                "--db-lsn",
                &lsn,
            ])
            .ok();
        // Clear of the boundary margin (2 s).
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
    // pgBackRest's repository belongs to postgres: stackpin runs
    // pgbackrest as postgres too.
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
                ("PGBACKREST_CONFIG", conf.as_str()),
                ("STACKPIN_SERVER", server.as_str()),
                ("TMPDIR", tmpdir),
            ],
        )
    };
    pin("rel-1");
    insert("rel-1");
    pgbackrest(&["--stanza=main", "--type=full", "backup"]);
    // pgBackRest records whole seconds: the next instants are clear of
    // set A's stop second.
    std::thread::sleep(Duration::from_millis(1100));

    // Set A recorded, paired with rel-1, and the pairing written back.
    let (code, stdout, stderr) = stackpin_pg(&[
        "snapshot-tag",
        "--env",
        "pgb",
        "--pgbackrest-stanza",
        "main",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let tagged: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let entry = &tagged["entry"];
    assert_eq!(entry["driver"], "pgbackrest", "{tagged}");
    assert_eq!(entry["live"]["release_id"], "rel-1", "{tagged}");
    let location = entry["location"].as_str().unwrap();
    let set_a = location
        .strip_prefix("pgbackrest:main/repo1/")
        .unwrap_or_else(|| panic!("{location}"))
        .to_owned();
    let info: serde_json::Value =
        serde_json::from_str(&pgbackrest(&["--stanza=main", "--output=json", "info"])).unwrap();
    let a = &info[0]["backup"][0];
    assert_eq!(a["label"], set_a.as_str(), "{info}");
    assert_eq!(
        entry["db_position"]["lsn"], a["lsn"]["stop"],
        "the snapshot's position is the set's stop LSN"
    );
    let index = tagged["log_index"].as_u64().unwrap().to_string();
    let shown = pgbackrest(&["--stanza=main", "info", &format!("--set={set_a}")]);
    for line in [
        "stackpin-release: rel-1".to_owned(),
        "stackpin-env: pgb".to_owned(),
        format!("stackpin-log-index: {index}"),
        format!(
            "stackpin-digest: {}",
            entry["live"]["digest"].as_str().unwrap()
        ),
    ] {
        assert!(shown.contains(&line), "{line} not in:\n{shown}");
    }
    // Tagging the set again records nothing; nor does root, whose
    // annotation would leave repository files postgres cannot read.
    let (code, _, stderr) = stackpin_pg(&[
        "snapshot-tag",
        "--env",
        "pgb",
        "--pgbackrest-stanza",
        "main",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already recorded"), "{stderr}");
    if is_root() {
        let root = world.cli_with(
            &[
                "snapshot-tag",
                "--env",
                "pgb",
                "--pgbackrest-stanza",
                "main",
            ],
            &env,
        );
        assert_eq!(root.code, 2, "{root:?}");
        assert!(root.stderr.contains("as root"), "{root:?}");
    }
    let listed = world
        .cli(&["--output", "json", "snapshot", "list", "--env", "pgb"])
        .json();
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1, "{listed}");
    let (code, _, stderr) = stackpin_pg(&[
        "snapshot-tag",
        "--env",
        "pgb",
        "--pgbackrest-stanza",
        "main",
        "--pgbackrest-set",
        "20990101-000000F",
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&set_a), "{stderr}");

    pin("rel-2");
    insert("rel-2");
    let (t2, l2) = mark();
    pin("rel-3");
    pgbackrest(&["--stanza=main", "--type=incr", "backup"]);
    std::thread::sleep(Duration::from_millis(1100));
    insert("rel-3");
    let (t3, l3) = mark();
    // A later commit (recovery by time stops at the first commit after its
    // target), then everything archived (`check` switches the WAL and
    // waits for it to reach the repository).
    primary.sql("INSERT INTO rows VALUES ('later', 0)");
    pgbackrest(&["--stanza=main", "check"]);
    primary.stop();
    let info: serde_json::Value =
        serde_json::from_str(&pgbackrest(&["--stanza=main", "--output=json", "info"])).unwrap();
    let set_b = info[0]["backup"][1]["label"].as_str().unwrap().to_owned();

    // `restore` prints the pgbackrest restore of each target, from the set
    // that precedes it; run as printed (into a scratch folder, with
    // archiving off so the copies leave the repository alone) it recovers
    // exactly the release's rows.
    let cases = [
        ("rel-2", "--at", t2.as_str(), &set_a, 2),
        ("rel-2", "--db-lsn", l2.as_str(), &set_a, 2),
        ("rel-3", "--at", t3.as_str(), &set_b, 3),
        ("rel-3", "--db-lsn", l3.as_str(), &set_b, 3),
    ];
    for (i, (release, flag, value, set, upto)) in cases.into_iter().enumerate() {
        let plan = world
            .cli_with(
                &[
                    "--output",
                    "json",
                    "restore",
                    "--env",
                    "pgb",
                    flag,
                    value,
                    "--plan",
                    "--log-key",
                    &world.vkey,
                    "--pgbackrest-stanza",
                    "main",
                ],
                &env,
            )
            .json();
        assert_eq!(plan["pin"]["release_id"], release, "{flag} {value}");
        let target = &plan["database"]["pgbackrest"];
        assert_eq!(target["set"], set.as_str(), "{flag} {value}: {target}");
        let command = target["command"].as_str().unwrap();
        let want = if flag == "--at" {
            let t = value.replacen('T', " ", 1).replace('Z', "+00");
            format!(
                "pgbackrest --stanza=main restore --set={set} --type=time '--target={t}' \
                 --target-action=promote"
            )
        } else {
            format!(
                "pgbackrest --stanza=main restore --set={set} --type=lsn --target={value} \
                 --target-action=promote"
            )
        };
        assert_eq!(command, want);
        let copy = Cluster {
            data: dir.join(format!("copy-{i}")),
            sock: dir.join("sock"),
            port: 5621,
        };
        let script = format!(
            "{command} --pg1-path={} --archive-mode=off",
            copy.data.display()
        );
        let (code, out, err) = as_postgres(Path::new("bash"), &["-c", &script], &env);
        assert_eq!(code, 0, "{script}\n{out}\n{err}");
        let started = copy.start_env(&env);
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
    // A stanza whose sets cannot be read: the artifact side is answered,
    // the command names no set, and says why.
    let plan = world
        .cli(&[
            "--output",
            "json",
            "restore",
            "--env",
            "pgb",
            "--at",
            &t2,
            "--plan",
            "--log-key",
            &world.vkey,
            "--pgbackrest-stanza",
            "nosuch",
        ])
        .json();
    let target = &plan["database"]["pgbackrest"];
    assert!(target.get("set").is_none(), "{target}");
    assert!(
        target["warning"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{target}"
    );

    // `drill run` restores with pgBackRest itself, as postgres.
    let trusted = dir.join("trusted");
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
            "pgb",
            "--pg-bin",
            BIN,
            "--trusted-keys",
            trusted.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        stackpin_pg(&args)
    };
    let check = "SELECT count(*) FROM rows WHERE release = '{release_id}' => 100";
    let (code, stdout, stderr) =
        drill(&["--pgbackrest-stanza", "main", "--at", &t2, "--check", check]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let ran: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(ran["entry"]["driver"], "pgbackrest", "{ran}");
    assert_eq!(ran["entry"]["passed"], true, "{ran}");
    assert_eq!(ran["entry"]["live"]["release_id"], "rel-2", "{ran}");
    assert!(
        stderr.contains("pgbackrest restore and recovery: done"),
        "{stderr}"
    );
    // The recorded set, drilled by its log index: restored to its
    // consistency point, it holds rel-1's rows.
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
    // An instant no set precedes: refused, nothing run or recorded.
    let before = world
        .cli(&["--output", "json", "drill", "list", "--env", "pgb"])
        .json()["entries"]
        .as_array()
        .unwrap()
        .len();
    let early = world
        .cli(&["--output", "json", "history", "--env", "pgb"])
        .json();
    let first_pin = early["pins"].as_array().unwrap().last().unwrap()["activated_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, stdout, stderr) = drill(&["--pgbackrest-stanza", "main", "--at", &first_pin]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no backup of stanza main is consistent before"),
        "{stderr}"
    );
    let after = world
        .cli(&["--output", "json", "drill", "list", "--env", "pgb"])
        .json()["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}
