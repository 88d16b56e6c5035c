//! Databases stackpin pairs restores for without running them here, with
//! the real binaries: MongoDB oplog timestamps as positions (recorded with
//! pins, never going backwards within an environment, resolved by, and
//! turned into `mongorestore` and Atlas point-in-time targets), and
//! Turso's point-in-time restore. No MongoDB server or Turso platform is
//! reachable from these machines, so what is tested is the parsing, the
//! ordering, the resolution and the printed commands.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use stackpin_tests::world::{T1, T2, T3, World};

#[test]
fn oplog_timestamps_are_recorded_ordered_resolved_and_printed_as_restore_targets() {
    let w = World::new(&[]);
    w.publish_releases(3);
    for (i, (at, ts)) in [
        (T1, "Timestamp(1772359200, 1)"),
        (T2, "1772362800:7"),
        (T3, "Timestamp({ t: 1772366400, i: 2 })"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = w
            .cli(&[
                "--output",
                "json",
                "pin",
                "--env",
                "prod",
                "--new-env",
                "--release-id",
                &format!("rel-{}", i + 1),
                "--activated-at",
                at,
                "--db-oplog-ts",
                ts,
            ])
            .json();
        assert!(
            out["db_position"]
                .as_str()
                .unwrap()
                .starts_with("MongoDB oplog Timestamp("),
            "{out}"
        );
    }
    // Never backwards within the environment; the refusal names both.
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--release-id",
        "rel-1",
        "--db-oplog-ts",
        "1772366400:1",
    ])
    .fails(4, "Timestamp(1772366400, 2)");
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--release-id",
        "rel-1",
        "--db-oplog-ts",
        "yesterday",
    ])
    .fails(2, "SECONDS:INCREMENT");

    // Resolved by position: the pin with the greatest timestamp at or
    // below it (same second, a later increment; and between pins).
    let by = |ts: &str| {
        w.cli(&[
            "--output",
            "json",
            "resolve",
            "--env",
            "prod",
            "--db-oplog-ts",
            ts,
        ])
        .json()["pin"]["release_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(by("1772362800:7"), "rel-2");
    assert_eq!(by("1772362800:8"), "rel-2");
    assert_eq!(by("1772362800:6"), "rel-1");
    assert_eq!(by("Timestamp(1772399999, 0)"), "rel-3");

    // The restore targets: exactly through the recorded operation
    // (--oplogLimit excludes its own timestamp, so it names the next).
    let plan = w
        .cli(&[
            "--output",
            "json",
            "restore",
            "--env",
            "prod",
            "--db-oplog-ts",
            "1772362800:9",
            "--plan",
            "--mongo-dump",
            "/backups/dump",
            "--atlas-cluster",
            "orders",
        ])
        .json();
    let mongo = &plan["database"]["mongodb"];
    assert_eq!(
        mongo["mongorestore"],
        "mongorestore --oplogReplay --oplogLimit=1772362800:10 /backups/dump"
    );
    assert!(
        mongo["atlas"]
            .as_str()
            .unwrap()
            .contains("--clusterName orders --oplogTs 1772362800 --oplogInc 9"),
        "{mongo}"
    );
    // What rel-2 recorded when it went live.
    assert_eq!(
        plan["database"]["at_activation"]["mongodb"]["mongorestore"],
        "mongorestore --oplogReplay --oplogLimit=1772362800:8 /backups/dump"
    );
    // By time: Atlas by seconds, mongorestore through the end of T's second.
    let plan = w
        .cli(&[
            "--output",
            "json",
            "restore",
            "--env",
            "prod",
            "--at",
            "2026-03-01T11:30:00Z",
            "--plan",
            "--turso-db",
            "orders",
        ])
        .json();
    assert_eq!(
        plan["database"]["turso"]["command"],
        "turso db create orders-restored --from-db orders --timestamp 2026-03-01T11:30:00.000000Z"
    );
    let mongo = plan["database"]["mongodb"].to_string();
    assert!(mongo.contains("--oplogLimit=1772364601:0"), "{mongo}");
    assert!(
        mongo.contains("--pointInTimeUTCSeconds 1772364600"),
        "{mongo}"
    );
}
