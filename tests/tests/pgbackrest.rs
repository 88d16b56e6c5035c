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
use std::time::Duration;

use stackpin_tests::pg::{Cluster, Scenario, as_postgres, chown_postgres, is_root};
use stackpin_tests::world::World;

#[test]
#[allow(clippy::too_many_lines)]
fn pgbackrest_sets_are_paired_restored_as_printed_and_drilled() {
    let world = World::new(&[]);
    world.three_releases();
    let tmp = tempfile::Builder::new().prefix("pgbr").tempdir().unwrap();
    let dir = tmp.path();
    let mut s = Scenario::new(&world, dir, 5621, "pgb");
    for sub in ["repo", "lock"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let conf = dir.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={d}/repo\nlock-path={d}/lock\nlog-path={d}/lock\n\
             log-level-console=warn\nlog-level-file=off\nstart-fast=y\nrepo1-retention-full=9\n\
             [main]\npg1-path={d}/primary\npg1-socket-path={d}/sock\npg1-port={}\n",
            s.primary.port,
            d = dir.display()
        ),
    )
    .unwrap();
    chown_postgres(dir);
    let conf = conf.to_str().unwrap().to_owned();
    s.vars = vec![("PGBACKREST_CONFIG".into(), conf.clone())];
    let env = [("PGBACKREST_CONFIG", conf.as_str())];
    let pgbackrest = |args: &[&str]| {
        let (code, out, err) = as_postgres(Path::new("pgbackrest"), args, &env);
        assert_eq!(code, 0, "pgbackrest {args:?}:\n{out}\n{err}");
        out
    };
    let info = || -> serde_json::Value {
        serde_json::from_str(&pgbackrest(&["--stanza=main", "--output=json", "info"])).unwrap()
    };
    s.primary.init(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = 'pgbackrest \
         --config={conf} --stanza=main archive-push %p'\n"
    ));
    s.start();
    pgbackrest(&["--stanza=main", "stanza-create"]);

    // Set A is taken while rel-1 is live, set B while rel-3 is (before its
    // rows).
    s.pin("rel-1");
    s.insert("rel-1");
    pgbackrest(&["--stanza=main", "--type=full", "backup"]);
    // pgBackRest records whole seconds: the next instants are clear of
    // set A's stop second.
    std::thread::sleep(Duration::from_millis(1100));

    // Set A recorded, paired with rel-1, and the pairing written back
    // (stackpin runs pgbackrest as postgres, whose repository it is).
    let tag = [
        "snapshot-tag",
        "--env",
        "pgb",
        "--pgbackrest-stanza",
        "main",
    ];
    let tagged = s.stackpin_json(&tag);
    let entry = &tagged["entry"];
    assert_eq!(entry["driver"], "pgbackrest", "{tagged}");
    assert_eq!(entry["live"]["release_id"], "rel-1", "{tagged}");
    let location = entry["location"].as_str().unwrap();
    let set_a = location
        .strip_prefix("pgbackrest:main/repo1/")
        .unwrap_or_else(|| panic!("{location}"))
        .to_owned();
    let listed = info();
    let a = &listed[0]["backup"][0];
    assert_eq!(a["label"], set_a.as_str(), "{listed}");
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
    // annotation would leave repository files postgres cannot read; nor a
    // set the stanza does not have.
    let (code, _, stderr) = s.stackpin(&tag);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already recorded"), "{stderr}");
    if is_root() {
        let root = world.cli_with(&tag, &env);
        assert_eq!(root.code, 2, "{root:?}");
        assert!(root.stderr.contains("as root"), "{root:?}");
    }
    let mut unknown = tag.to_vec();
    unknown.extend(["--pgbackrest-set", "20990101-000000F"]);
    let (code, _, stderr) = s.stackpin(&unknown);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&set_a), "{stderr}");
    assert_eq!(s.count("snapshot"), 1);

    s.pin("rel-2");
    s.insert("rel-2");
    let (t2, l2) = s.mark();
    s.pin("rel-3");
    pgbackrest(&["--stanza=main", "--type=incr", "backup"]);
    std::thread::sleep(Duration::from_millis(1100));
    s.insert("rel-3");
    let (t3, l3) = s.mark();
    // A later commit (recovery by time stops at the first commit after its
    // target), then everything archived (`check` switches the WAL and
    // waits for it to reach the repository).
    s.primary.sql("INSERT INTO rows VALUES ('later', 0)");
    pgbackrest(&["--stanza=main", "check"]);
    s.primary.stop();
    let set_b = info()[0]["backup"][1]["label"].as_str().unwrap().to_owned();

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
        let plan = s.stackpin_json(&[
            "restore",
            "--env",
            "pgb",
            flag,
            value,
            "--plan",
            "--pgbackrest-stanza",
            "main",
        ]);
        assert_eq!(plan["pin"]["release_id"], release, "{flag} {value}");
        let target = &plan["database"]["pgbackrest"];
        assert_eq!(target["set"], set.as_str(), "{flag} {value}: {target}");
        let command = target["command"].as_str().unwrap();
        let how = if flag == "--at" {
            let t = value.replacen('T', " ", 1).replace('Z', "+00");
            format!("--type=time '--target={t}'")
        } else {
            format!("--type=lsn --target={value}")
        };
        assert_eq!(
            command,
            format!("pgbackrest --stanza=main restore --set={set} {how} --target-action=promote")
        );
        let copy = Cluster {
            data: dir.join(format!("copy-{i}")),
            sock: dir.join("sock"),
            port: s.primary.port,
        };
        let script = format!(
            "{command} --pg1-path={} --archive-mode=off",
            copy.data.display()
        );
        s.recovers(&script, &copy, upto);
    }
    // A stanza whose sets cannot be read: the artifact side is answered,
    // the command names no set, and says why.
    let plan = s.stackpin_json(&[
        "restore",
        "--env",
        "pgb",
        "--at",
        &t2,
        "--plan",
        "--pgbackrest-stanza",
        "nosuch",
    ]);
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
    let check = "SELECT count(*) FROM rows WHERE release = '{release_id}' => 100";
    let drill = ["--pgbackrest-stanza", "main", "--at", &t2, "--check", check];
    s.drill_passes(&drill, "pgbackrest", "rel-2");
    // The recorded set, drilled by its log index: restored to its
    // consistency point, it holds rel-1's rows.
    let ran = s.drill_passes(
        &[
            "--snapshot",
            &index,
            "--check",
            "SELECT count(*) FROM rows WHERE release = 'rel-1' => 100",
            "--check",
            "SELECT count(*) FROM rows WHERE release = 'rel-2' => 0",
        ],
        "pgbackrest",
        "rel-1",
    );
    assert_eq!(ran["entry"]["snapshot"], index.parse::<u64>().unwrap());
    // An instant no set precedes: refused, nothing run or recorded.
    let before = s.count("drill");
    let history = world
        .cli(&["--output", "json", "history", "--env", "pgb"])
        .json();
    let first_pin = history["pins"].as_array().unwrap().last().unwrap()["activated_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, stdout, stderr) = s.drill(&["--pgbackrest-stanza", "main", "--at", &first_pin]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no backup of stanza main is consistent before"),
        "{stderr}"
    );
    assert_eq!(s.count("drill"), before);
}
