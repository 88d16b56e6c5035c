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

use std::path::Path;
use std::time::Duration;

use stackpin_tests::pg::{Cluster, Scenario, as_postgres, chown_postgres};
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
    let mut s = Scenario::new(&world, dir, 5631, "brm");
    for sub in ["home", "conf.d"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let conf = dir.join("barman.conf");
    std::fs::write(
        &conf,
        format!(
            "[barman]\nbarman_user = postgres\nbarman_home = {d}/home\nlog_file = \
             {d}/home/barman.log\nlog_level = INFO\nconfiguration_files_directory = {d}/conf.d\n\
             [pg]\nconninfo = host={d}/sock port={p} user=postgres dbname=postgres\n\
             streaming_conninfo = host={d}/sock port={p} user=postgres\nbackup_method = \
             postgres\nstreaming_archiver = on\nslot_name = barman\npath_prefix = {bin}\n",
            d = dir.display(),
            p = s.primary.port,
            bin = stackpin_tests::pg::BIN,
        ),
    )
    .unwrap();
    chown_postgres(dir);
    let conf = conf.to_str().unwrap().to_owned();
    s.vars = vec![("STACKPIN_BARMAN_CONFIG".into(), conf.clone())];
    let barman = |args: &[&str]| {
        let mut all = vec!["-c", conf.as_str()];
        all.extend_from_slice(args);
        let (code, out, err) = as_postgres(Path::new("barman"), &all, &[]);
        assert_eq!(code, 0, "barman {args:?}:\n{out}\n{err}");
        out
    };
    s.primary
        .init("wal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4\n");
    s.start();
    barman(&["receive-wal", "--create-slot", "pg"]);
    let _receiver = Receiver { conf: &conf };
    // `cron` starts the WAL receiver in the background: wait until Barman
    // sees it running before asking for a WAL switch.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        barman(&["cron"]);
        let (_, out, _) = as_postgres(Path::new("barman"), &["-c", &conf, "check", "pg"], &[]);
        if out.contains("receive-wal running: OK") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Barman's WAL receiver did not start:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    barman(&["switch-wal", "--force", "--archive", "pg"]);

    s.pin("rel-1");
    s.insert("rel-1");
    barman(&["backup", "--wait", "pg"]);
    std::thread::sleep(Duration::from_millis(1100));

    // The newest backup recorded, paired with rel-1; a second tag of it is
    // the same entry, replayed.
    let tag = ["snapshot-tag", "--env", "brm", "--barman-server", "pg"];
    let tagged = s.stackpin_json(&tag);
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
    let again = s.stackpin_json(&tag);
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["log_index"], tagged["log_index"]);
    assert_eq!(s.count("snapshot"), 1);
    let index = tagged["log_index"].as_u64().unwrap().to_string();

    s.pin("rel-2");
    s.insert("rel-2");
    let (t2, l2) = s.mark();
    s.pin("rel-3");
    barman(&["backup", "--wait", "pg"]);
    std::thread::sleep(Duration::from_millis(1100));
    s.insert("rel-3");
    let (t3, l3) = s.mark();
    s.primary.sql("INSERT INTO rows VALUES ('later', 0)");
    barman(&["switch-wal", "--force", "--archive", "pg"]);
    s.primary.stop();
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
    assert_eq!(ids[0], backup_a);
    let backup_b = ids[1].clone();

    // `restore` prints the barman recover of each target, from the backup
    // that precedes it; run as printed (with Barman's configuration named)
    // it recovers exactly the release's rows.
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
            port: s.primary.port,
        };
        let destination = copy.data.to_str().unwrap();
        let plan = s.stackpin_json(&[
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
        assert_eq!(plan["pin"]["release_id"], release, "{flag} {value}");
        let target = &plan["database"]["barman"];
        assert_eq!(target["set"], backup.as_str(), "{flag} {value}: {target}");
        let command = target["command"].as_str().unwrap();
        let how = if flag == "--at" {
            let t = value.replacen('T', " ", 1).replace('Z', "+00");
            format!("--target-time '{t}'")
        } else {
            format!("--target-lsn {value}")
        };
        assert_eq!(
            command,
            format!("barman recover {how} --target-action promote pg {backup} {destination}")
        );
        let script = command.replacen("barman ", &format!("barman -c {conf} "), 1);
        s.recovers(&script, &copy, upto);
    }

    // `drill run` recovers with Barman itself, as postgres; and the
    // recorded backup, by its log index, to its consistency point.
    let check = "SELECT count(*) FROM rows WHERE release = '{release_id}' => 100";
    s.drill_passes(
        &["--barman-server", "pg", "--at", &t2, "--check", check],
        "barman",
        "rel-2",
    );
    let ran = s.drill_passes(
        &[
            "--snapshot",
            &index,
            "--check",
            "SELECT count(*) FROM rows WHERE release = 'rel-1' => 100",
            "--check",
            "SELECT count(*) FROM rows WHERE release = 'rel-2' => 0",
        ],
        "barman",
        "rel-1",
    );
    assert_eq!(ran["entry"]["snapshot"], index.parse::<u64>().unwrap());
}
