//! `stackpin rollback` with the real binaries: the release before the live
//! one (or N pins back, or a named one) found in proved history, shown
//! with what changes, recorded once as a pin, and proved by `resolve`.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use stackpin_tests::world::{T2, T3, World};

/// Now by this machine's clock, for resolving what is live after a
/// rollback (pins activate at the registry's now).
fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// `2026-03-01T11:00:00Z` as the log writes it, to the microsecond.
fn micros(t: &str) -> String {
    t.replace('Z', ".000000Z")
}

fn live_release(w: &World) -> String {
    w.release_at(&now())
}

#[test]
fn a_rollback_after_three_pins_restores_the_second_release_and_resolve_proves_it() {
    let w = World::new(&[]);
    w.three_releases();
    assert_eq!(live_release(&w), "rel-3");

    // What would change, recorded nowhere.
    let plan = w
        .cli(&["--output", "json", "rollback", "--env", "prod", "--dry-run"])
        .json();
    assert_eq!(plan["to"]["release_id"], "rel-2");
    assert!(plan.get("pin").is_none());
    assert_eq!(live_release(&w), "rel-3");

    let out = w
        .cli(&[
            "--output",
            "json",
            "rollback",
            "--env",
            "prod",
            "--reason",
            "checkout broken",
            "--yes",
            "--db-lsn",
            "0/16B3748",
        ])
        .json();
    assert_eq!(out["from"]["release_id"], "rel-3");
    assert_eq!(out["to"]["release_id"], "rel-2");
    assert_eq!(out["to"]["seq"], 2);
    assert_eq!(out["to"]["live_from"], micros(T2));
    assert_eq!(out["to"]["live_until"], micros(T3));
    // {"release":3,…} → {"release":2,…}: one value changed.
    assert_eq!(out["changes"]["changed"], 1);
    assert_eq!(out["changes"]["added"], 0);
    assert_eq!(out["changes"]["paths"][0], "~ release: 3 → 2");
    assert_eq!(out["database"]["rolled_back"], false);
    assert_eq!(out["database"]["recorded"], "LSN 0/16B3748");
    assert_eq!(out["pin"]["seq"], 4);
    assert_eq!(
        out["pin"]["reason"],
        "rollback of rel-3 to rel-2 (pin #2): checkout broken"
    );
    assert_eq!(live_release(&w), "rel-2");

    // The text form says plainly that the database stays.
    w.write("a4.json", b"{\"release\":4,\"objects\":[]}\n");
    w.cli(&[
        "publish",
        "a4.json",
        "--release-id",
        "rel-4",
        "--key",
        "ci.pem",
    ])
    .ok();
    w.cli(&["pin", "--env", "prod", "--new-env", "--release-id", "rel-4"])
        .ok();
    let text = w.cli(&["rollback", "--env", "prod", "--yes"]);
    let text = text.ok();
    assert!(text.contains("NOT rolled back"), "{text}");
    assert!(
        text.contains("rolled back prod to rel-2 as pin #6"),
        "{text}"
    );
}

#[test]
fn steps_to_refusals_and_a_retried_rollback_recorded_once() {
    let w = World::new(&[]);
    w.three_releases();

    // --steps 2: two pins back from rel-3 is rel-1.
    let out = w
        .cli(&[
            "--output", "json", "rollback", "--env", "prod", "--steps", "2", "--yes",
        ])
        .json();
    assert_eq!(out["to"]["release_id"], "rel-1");
    assert_eq!(live_release(&w), "rel-1");

    // --to a release that was live before.
    let out = w
        .cli(&[
            "--output", "json", "rollback", "--env", "prod", "--to", "rel-3", "--yes",
        ])
        .json();
    assert_eq!(out["to"]["release_id"], "rel-3");
    assert_eq!(live_release(&w), "rel-3");

    // Refusals, each writing nothing.
    let pins = || {
        w.cli(&["--output", "json", "history", "--env", "prod"])
            .json()["pins"]
            .clone()
    };
    let before = pins();
    w.cli(&["rollback", "--env", "prod", "--to", "rel-3", "--yes"])
        .fails(2, "is the live release");
    w.write("x.json", b"{\"release\":\"x\"}\n");
    w.cli(&[
        "publish",
        "x.json",
        "--release-id",
        "rel-x",
        "--key",
        "ci.pem",
    ])
    .ok();
    w.cli(&["rollback", "--env", "prod", "--to", "rel-x", "--yes"])
        .fails(3, "was never live in prod");
    w.cli(&["rollback", "--env", "prod", "--steps", "9", "--yes"])
        .fails(3, "there is no pin 9 before the live one");
    // Without a terminal and without --yes: asks for --yes.
    w.cli(&["rollback", "--env", "prod"]).fails(2, "pass --yes");
    w.cli(&["rollback", "--env", "staging", "--yes"])
        .fails(3, "staging has no pins");
    w.cli(&["pin", "--env", "solo", "--new-env", "--release-id", "rel-1"])
        .ok();
    w.cli(&["rollback", "--env", "solo", "--yes"])
        .fails(3, "nothing to roll back to");
    assert_eq!(pins(), before);

    // A pipeline retrying with its request id records the rollback once.
    let retry = || {
        w.cli(&[
            "--output",
            "json",
            "--request-id",
            "deploy-77-rollback",
            "rollback",
            "--env",
            "prod",
            "--yes",
        ])
        .json()
    };
    let first = retry();
    assert_eq!(first["replayed"], false);
    assert_eq!(first["to"]["release_id"], "rel-1");
    let second = retry();
    assert_eq!(second["replayed"], true);
    assert_eq!(second["pin"]["seq"], first["pin"]["seq"]);
    assert_eq!(second["pin"]["log_index"], first["pin"]["log_index"]);
    assert_eq!(live_release(&w), "rel-1");
    let history = w
        .cli(&["--output", "json", "history", "--env", "prod"])
        .json();
    let rollbacks = history["pins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["request_id"] == "deploy-77-rollback:rollback:prod")
        .count();
    assert_eq!(rollbacks, 1);
}

#[test]
fn a_rollback_needs_the_log_key() {
    let w = World::new(&[]);
    w.three_releases();
    // A fresh state folder: nothing remembered of this server's key.
    stackpin_tests::stackpin(
        w.dir.path(),
        &w.server.url(),
        &[
            "--state-dir",
            "fresh-state",
            "rollback",
            "--env",
            "prod",
            "--yes",
        ],
    )
    .fails(5, "needs the log's key");
    assert_eq!(live_release(&w), "rel-3");
}
