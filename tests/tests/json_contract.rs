//! The `--output json` contract (docs/json.md), walked over every command
//! with the real CLI: one object per command, every name documented, no
//! retired name, and failures as JSON errors on standard output.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use stackpin_tests::world::{T1, T2, T3, World};

/// The names docs/json.md lists: the backticked words of its "Names" table.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json.md"),
    )
    .unwrap();
    let table = doc.split("## Names").nth(1).unwrap();
    let table = table.split("\n## ").next().unwrap();
    let mut names = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        for name in first.split('`').skip(1).step_by(2) {
            names.insert(name.to_owned());
        }
    }
    assert!(names.len() > 50, "{names:?}");
    names
}

/// Every object key in `v`, with the command it came from; what a log
/// entry holds (under `entry`) is the log's format and is not walked.
fn keys(v: &Value, command: &str, out: &mut BTreeMap<String, BTreeSet<String>>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                out.entry(k.clone()).or_default().insert(command.to_owned());
                if k != "entry" {
                    keys(v, command, out);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                keys(v, command, out);
            }
        }
        _ => {}
    }
}

/// The one JSON object a run printed (or, for `watch`, one per line).
fn objects(stdout: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for item in serde_json::Deserializer::from_str(stdout).into_iter::<Value>() {
        out.push(item.unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}")));
    }
    out
}

#[test]
fn every_command_prints_one_object_of_documented_names() {
    let w = World::new(&[]);
    w.three_releases();
    w.write("snap.db", b"a database");
    let setup: &[&[&str]] = &[
        &[
            "snapshot-tag",
            "--env",
            "prod",
            "--file",
            "snap.db",
            "--at",
            T3,
        ],
        &[
            "drill",
            "record",
            "--env",
            "prod",
            "--driver",
            "sqlite",
            "--at",
            T3,
            "--rto",
            "1m",
            "--check-passed",
            "rows",
        ],
    ];
    let runs: &[&[&str]] = &[
        &[
            "publish",
            "a1.json",
            "--release-id",
            "rel-1",
            "--key",
            "ci.pem",
        ],
        &[
            "pin",
            "--env",
            "staging",
            "--new-env",
            "--release-id",
            "rel-1",
        ],
        &["resolve", "--env", "prod", "--at", T2],
        &["resolve", "--env", "prod", "--at", "2026-03-01T12:00:01Z"],
        &["history", "--env", "prod", "--limit", "2"],
        &["status"],
        &["fetch", "--release-id", "rel-1", "--out", "f.json"],
        &[
            "restore",
            "--env",
            "prod",
            "--at",
            T2,
            "--out",
            "r.json",
            "--trusted-keys",
            "trusted",
        ],
        &["restore", "--env", "prod", "--at", T1, "--plan"],
        // A stanza whose sets cannot be read here (`false` is no
        // pgbackrest): the pgBackRest target with its warning.
        &[
            "restore",
            "--env",
            "prod",
            "--at",
            T2,
            "--plan",
            "--pgbackrest-stanza",
            "main",
            "--pgbackrest",
            "false",
        ],
        &["list"],
        &["stat", "--release-id", "rel-1"],
        &["snapshot", "list", "--env", "prod"],
        &["drill", "list", "--env", "prod"],
        &["posture"],
        &["checkpoint"],
        &["verify", "r.json", "--trusted-keys", "trusted"],
        &["audit", "--trusted-keys", "trusted"],
        &["key", "list"],
        &["trust", "list"],
        &["rollback", "--env", "prod", "--dry-run"],
        &["rollback", "--env", "prod", "--yes"],
        &["keygen", "--out", "k2.pem"],
        &["watch", "--env", "prod", "--from", "0", "--count", "2"],
    ];
    for args in setup {
        w.cli(args).ok();
    }
    let mut seen = BTreeMap::new();
    let vkey = w.vkey.clone();
    let url = w.server.url();
    let later: Vec<Vec<&str>> = vec![
        vec!["mirror", &url, "mirror-dir"],
        vec![
            "restore",
            "--from",
            "mirror-dir",
            "--env",
            "prod",
            "--at",
            T2,
            "--plan",
        ],
        vec!["key", "add", "k2.pub.pem", "--reason", "rotation"],
        vec!["key", "revoke", "k2.pub.pem"],
        vec!["trust", "add", &vkey],
    ];
    let runs: Vec<&[&str]> = runs
        .iter()
        .copied()
        .chain(later.iter().map(Vec::as_slice))
        .collect();
    for args in &runs {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let run = w.cli(&all);
        // Posture is out of policy here (exit 8): its report is the result.
        let stdout = if args[0] == "posture" {
            assert!(matches!(run.code, 0 | 8), "{run:?}");
            run.stdout.as_str()
        } else {
            run.ok()
        };
        let printed = objects(stdout);
        assert!(!printed.is_empty(), "{args:?} printed nothing");
        if args[0] != "watch" {
            assert_eq!(printed.len(), 1, "{args:?}: {}", run.stdout);
        }
        for v in &printed {
            assert!(v.is_object(), "{args:?} printed {v}");
            keys(v, &args.join(" "), &mut seen);
        }
    }
    let doc = documented();
    let undocumented: Vec<String> = seen
        .iter()
        .filter(|(k, _)| !doc.contains(*k))
        .map(|(k, from)| format!("{k} (from {from:?})"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/json.md: {undocumented:#?}"
    );
    for retired in [
        "index",
        "prev_pin_hash",
        "signed_by",
        "already_recorded",
        "rpo_secs",
        "drill_age_secs",
        "postgres",
    ] {
        assert!(
            !seen.contains_key(retired),
            "{retired}: {:?}",
            seen[retired]
        );
    }
}

#[test]
fn failures_are_json_errors_on_standard_output_too() {
    let w = World::new(&[]);
    w.three_releases();
    let error = |args: &[&str], exit: i32| {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let run = w.cli(&all);
        assert_eq!(run.code, exit, "{run:?}");
        assert!(!run.stderr.is_empty(), "{run:?}");
        let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        assert_eq!(v["error"]["exit"], exit, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        v["error"].clone()
    };
    // The registry's refusal, with its reason.
    let e = error(
        &["resolve", "--env", "prod", "--at", "2020-01-01T00:00:00Z"],
        3,
    );
    assert_eq!(e["code"], "not_found");
    assert!(e["reason"].is_string(), "{e}");
    // A write the rules refuse: the reason reaches the script.
    let e = error(
        &[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "rel-1",
            "--activated-at",
            T1,
        ],
        4,
    );
    assert_eq!(e["code"], "conflict");
    assert_eq!(e["reason"], "ACTIVATION_ORDER", "{e}");
    // Input the CLI refuses before sending anything, and a usage error.
    let e = error(&["resolve", "--env", "prod", "--at", "yesterday"], 2);
    assert_eq!(e["code"], "invalid");
    let e = error(&["resolve", "--env", "prod", "--no-such-flag"], 2);
    assert!(
        e["message"].as_str().unwrap().contains("--no-such-flag"),
        "{e}"
    );
    // Without --output json, stdout stays empty on failure.
    let run = w.cli(&["resolve", "--env", "prod", "--at", "2020-01-01T00:00:00Z"]);
    assert_eq!(run.code, 3);
    assert!(run.stdout.is_empty(), "{run:?}");
}
