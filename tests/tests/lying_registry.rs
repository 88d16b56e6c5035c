//! A lying registry: the real registry behind a proxy that rewrites its
//! answers ([`stackpin_tests::lying`]), driven by the real CLI with the
//! log's real key and state folder. Every command must refuse a forged
//! answer with exit 5 and print none of the forged values; the honest proxy
//! must change nothing, so a refusal is the forgery's doing.
//!
//! Long because each lie a registry can tell gets its own case against
//! the one proxy.

#![allow(clippy::unwrap_used)] // tests: failing loudly is the point

use std::sync::{Arc, Mutex};

use stackpin_proto::v1 as pb;
use stackpin_tests::lying::{Filter, Lying, Rewrite};
use stackpin_tests::world::World;
use stackpin_tests::{Run, stackpin_with};

/// A release id, a digest and an LSN the log never recorded.
const FORGED_RELEASE: &str = "rel-FORGED";
const FORGED_DIGEST: &str =
    "sha256:deaddeaddeaddeaddeaddeaddeaddeaddeaddeaddeaddeaddeaddeaddeaddead";
const FORGED_LSN: &str = "DE/ADBEEF";
const FORGED: [&str; 3] = [FORGED_RELEASE, FORGED_DIGEST, FORGED_LSN];

/// After the last switch (pin #3 still live) and between the first two.
const AFTER_LAST: &str = "2026-03-01T12:30:00Z";
const IN_FIRST: &str = "2026-03-01T10:30:00Z";
const IN_SECOND: &str = "2026-03-01T11:30:00Z";
/// One second after the switch to pin #3, inside the default 2s margin.
const NEAR_THIRD: &str = "2026-03-01T12:00:01Z";

/// A registry with three pins in prod, and a proxy in front of it.
struct Setup {
    world: World,
    proxy: Lying,
}

impl Setup {
    fn new() -> Self {
        let world = World::new(&[]);
        world.three_releases();
        let proxy = Lying::start(&world.server.url());
        Self { world, proxy }
    }

    /// The CLI through the proxy, with the log's key and the world's state
    /// folder (which remembers the newest checkpoint seen).
    fn cli(&self, args: &[&str]) -> Run {
        self.cli_in("state", args, &[("STACKPIN_LOG_VKEY", &self.world.vkey)])
    }

    fn cli_in(&self, state: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let state = self.world.dir.path().join(state);
        let mut all = vec!["--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        stackpin_with(self.world.dir.path(), &self.proxy.url(), &all, env)
    }

    /// `resolve`, `restore --plan` and `restore` of prod at `at`.
    fn resolve_and_restore(&self, at: &str) -> [Run; 3] {
        let restore = |extra: &[&str]| {
            let mut args = vec![
                "restore",
                "--env",
                "prod",
                "--at",
                at,
                "--out",
                "restored.json",
                "--trusted-keys",
                "trusted",
            ];
            args.extend_from_slice(extra);
            self.cli(&args)
        };
        [
            self.cli(&["resolve", "--env", "prod", "--at", at]),
            restore(&["--plan"]),
            restore(&[]),
        ]
    }
}

/// Asserts a refusal as verification failed (exit 5) with none of the
/// forged values on stdout.
#[track_caller]
fn refused(run: &Run, what: &str) {
    assert_eq!(run.code, 5, "{what}: expected exit 5:\n{run:#?}");
    for forged in FORGED {
        assert!(
            !run.stdout.contains(forged),
            "{what}: the forged {forged} was printed:\n{run:#?}"
        );
    }
}

fn rewrite<T>(f: impl Fn(&mut T) + Send + Sync + 'static) -> Option<Rewrite<T>> {
    Some(Arc::new(f))
}

fn filter<T>(f: impl Fn(T) -> Option<T> + Send + Sync + 'static) -> Option<Filter<T>> {
    Some(Arc::new(f))
}

/// A hook that keeps a copy of each answer, and where it keeps the last.
fn recorder<T: Clone + Send + 'static>() -> (Arc<Mutex<Option<T>>>, Option<Rewrite<T>>) {
    let kept = Arc::new(Mutex::new(None));
    let sink = kept.clone();
    (
        kept,
        rewrite(move |answer: &mut T| *sink.lock().unwrap() = Some(answer.clone())),
    )
}

/// Entry bytes with `from` replaced by `to` (a forged edit of the JSON).
fn edited(bytes: &[u8], from: &str, to: &str) -> bytes::Bytes {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains(from), "{from} is not in {text}");
    text.replace(from, to).into()
}

fn forged_lsn() -> Option<pb::DbPosition> {
    Some(pb::DbPosition {
        position: Some(pb::db_position::Position::PostgresLsn(FORGED_LSN.into())),
    })
}

#[test]
fn the_honest_proxy_changes_nothing() {
    let s = Setup::new();
    for at in [AFTER_LAST, IN_FIRST] {
        for run in s.resolve_and_restore(at) {
            run.ok();
        }
    }
    let near = s.cli(&["resolve", "--env", "prod", "--at", NEAR_THIRD]);
    assert!(near.ok().contains("warning"), "{near:#?}");
    assert!(
        s.cli(&["history", "--env", "prod"]).ok().contains("rel-2"),
        "history lists every pin"
    );
    assert!(s.cli(&["status"]).ok().contains("rel-3"));
    s.cli(&["checkpoint"]).ok();
    let watched = s.cli(&[
        "watch",
        "--env",
        "prod",
        "--from",
        "0",
        "--count",
        "3",
        "--log-key",
        &s.world.vkey,
    ]);
    assert_eq!(watched.ok().lines().count(), 3, "{watched:#?}");
}

#[test]
fn a_fabricated_pin_in_the_answer_is_refused() {
    let s = Setup::new();
    let forgeries: [(&str, Rewrite<pb::ResolveResponse>); 3] = [
        (
            "release",
            Arc::new(|r: &mut pb::ResolveResponse| {
                r.pin.as_mut().unwrap().release_id = FORGED_RELEASE.into();
            }),
        ),
        (
            "digest",
            Arc::new(|r: &mut pb::ResolveResponse| {
                r.pin.as_mut().unwrap().digest = FORGED_DIGEST.into();
            }),
        ),
        (
            "seq",
            Arc::new(|r: &mut pb::ResolveResponse| r.pin.as_mut().unwrap().seq = 99),
        ),
    ];
    for (what, hook) in forgeries {
        s.proxy.set(|h| h.resolve = Some(hook));
        for run in s.resolve_and_restore(AFTER_LAST) {
            refused(&run, what);
            assert!(run.stderr.contains("`pin."), "{what}: {run:#?}");
        }
    }
    assert!(!s.world.dir.path().join("restored.json").exists());
}

#[test]
fn a_pin_entry_edited_to_match_fails_inclusion() {
    let s = Setup::new();
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            let entry = r.pin_entry.as_mut().unwrap();
            entry.entry = edited(&entry.entry, "rel-3", FORGED_RELEASE);
            r.pin.as_mut().unwrap().release_id = FORGED_RELEASE.into();
        });
    });
    for run in s.resolve_and_restore(AFTER_LAST) {
        refused(&run, "edited pin entry");
        assert!(run.stderr.contains("not in the checkpoint"), "{run:#?}");
    }
}

#[test]
fn a_fabricated_position_or_a_hidden_successor_is_refused() {
    let s = Setup::new();
    // The LSN in the convenience field only.
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.pin.as_mut().unwrap().db_position = forged_lsn();
        });
    });
    for run in s.resolve_and_restore(AFTER_LAST) {
        refused(&run, "fabricated db_position");
        assert!(run.stderr.contains("db_position"), "{run:#?}");
    }
    // The successor removed, so pin #1 looks live up to the checkpoint,
    // and a position invented for it.
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.live_until = None;
            r.next = None;
            r.next_entry = None;
            r.pin.as_mut().unwrap().db_position = forged_lsn();
        });
    });
    for run in s.resolve_and_restore(IN_FIRST) {
        refused(&run, "hidden successor, fabricated position");
    }
    // The successor removed and the position left alone: only the proof
    // of "still live" can catch it.
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.live_until = None;
            r.next = None;
            r.next_entry = None;
        });
    });
    for run in s.resolve_and_restore(IN_FIRST) {
        refused(&run, "hidden successor");
        assert!(run.stderr.contains("left out the pin"), "{run:#?}");
    }
    // ... and also hidden from the entries read to prove it.
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.live_until = None;
            r.next = None;
            r.next_entry = None;
        });
        h.list_entries = filter(|e: pb::LogEntry| {
            let text = String::from_utf8_lossy(&e.entry);
            (!text.contains("\"pin\"") || text.contains("rel-1")).then_some(e)
        });
    });
    for run in s.resolve_and_restore(IN_FIRST) {
        refused(&run, "successor hidden from ListEntries too");
    }
    // ... or rewritten there into a pin of another environment.
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.live_until = None;
            r.next = None;
            r.next_entry = None;
        });
        h.list_entries = filter(|mut e: pb::LogEntry| {
            let text = String::from_utf8_lossy(&e.entry);
            if text.contains("\"prod\"") && !text.contains("rel-1") {
                e.entry = edited(&e.entry, "\"prod\"", "\"elsewhere\"");
            }
            Some(e)
        });
    });
    for run in s.resolve_and_restore(IN_FIRST) {
        refused(&run, "successor rewritten in ListEntries");
    }
}

#[test]
fn an_older_truly_included_pin_with_its_successor_hidden_is_refused() {
    let s = Setup::new();
    let (kept, record) = recorder::<pb::ResolveResponse>();
    s.proxy.set(|h| h.resolve = record);
    s.cli(&["resolve", "--env", "prod", "--at", IN_FIRST]).ok();
    let earlier = kept.lock().unwrap().clone().unwrap();
    // Asked about 11:30 (pin #2), answered with the real answer for 10:30.
    let replay = earlier.clone();
    s.proxy
        .set(|h| h.resolve = rewrite(move |r: &mut pb::ResolveResponse| *r = replay.clone()));
    for run in s.resolve_and_restore(IN_SECOND) {
        refused(&run, "an earlier answer");
        assert!(run.stderr.contains("was not live at"), "{run:#?}");
    }
    // The same real, signed, included pin #1, its successor left out.
    s.proxy.set(|h| {
        h.resolve = rewrite(move |r: &mut pb::ResolveResponse| {
            *r = earlier.clone();
            r.live_until = None;
            r.next = None;
            r.next_entry = None;
        });
    });
    for run in s.resolve_and_restore(IN_SECOND) {
        refused(&run, "an earlier pin with its successor hidden");
    }
}

#[test]
fn an_older_checkpoint_is_refused() {
    let s = Setup::new();
    let (kept, record) = recorder::<pb::ResolveResponse>();
    s.proxy.set(|h| h.resolve = record);
    s.cli(&["resolve", "--env", "prod", "--at", AFTER_LAST])
        .ok();
    let earlier = kept.lock().unwrap().clone().unwrap();
    // More pins; the state folder remembers the newer checkpoint.
    s.proxy.honest();
    s.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "rel-1",
        "--activated-at",
        "2026-03-01T12:10:00Z",
    ])
    .ok();
    s.proxy
        .set(|h| h.resolve = rewrite(move |r: &mut pb::ResolveResponse| *r = earlier.clone()));
    for run in s.resolve_and_restore(AFTER_LAST) {
        refused(&run, "an older checkpoint");
        assert!(run.stderr.contains("older than the size"), "{run:#?}");
    }
}

#[test]
fn an_answer_without_proofs_is_refused() {
    let s = Setup::new();
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            for e in [&mut r.pin_entry, &mut r.next_entry, &mut r.publish_entry]
                .into_iter()
                .flatten()
            {
                e.proof.clear();
            }
        });
    });
    for run in s.resolve_and_restore(AFTER_LAST) {
        refused(&run, "proofs removed");
    }
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.pin_entry = None;
            r.publish_entry = None;
        });
    });
    for run in s.resolve_and_restore(AFTER_LAST) {
        refused(&run, "proved entries removed");
    }
}

#[test]
fn a_dropped_near_switch_is_refused() {
    let s = Setup::new();
    let near = s.cli(&["resolve", "--env", "prod", "--at", NEAR_THIRD]);
    assert!(near.ok().contains("warning"), "{near:#?}");
    s.proxy
        .set(|h| h.resolve = rewrite(|r: &mut pb::ResolveResponse| r.near_switch = None));
    for run in s.resolve_and_restore(NEAR_THIRD) {
        refused(&run, "near_switch dropped");
        assert!(run.stderr.contains("near_switch"), "{run:#?}");
    }
    // With the previous pin left out too, so the switch cannot be computed.
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.near_switch = None;
            r.prev_entry = None;
        });
    });
    for run in s.resolve_and_restore(NEAR_THIRD) {
        refused(&run, "near_switch and prev_entry dropped");
    }
}

#[test]
fn a_fabricated_history_is_refused() {
    let s = Setup::new();
    let forgeries: [(&str, Rewrite<pb::HistoryResponse>); 4] = [
        (
            "a pin rewritten",
            Arc::new(|r: &mut pb::HistoryResponse| {
                r.pins[1].release_id = FORGED_RELEASE.into();
                r.pins[1].db_position = forged_lsn();
            }),
        ),
        (
            "a pin entry edited to match",
            Arc::new(|r: &mut pb::HistoryResponse| {
                r.pins[1].release_id = FORGED_RELEASE.into();
                r.entries[1].entry = edited(&r.entries[1].entry, "rel-2", FORGED_RELEASE);
            }),
        ),
        (
            "a pin dropped from the middle",
            Arc::new(|r: &mut pb::HistoryResponse| {
                r.pins.remove(1);
                r.entries.remove(1);
            }),
        ),
        (
            "the newest pin dropped",
            Arc::new(|r: &mut pb::HistoryResponse| {
                r.pins.remove(0);
                r.entries.remove(0);
            }),
        ),
    ];
    for (what, hook) in forgeries {
        s.proxy.set(|h| h.history = Some(hook));
        refused(&s.cli(&["history", "--env", "prod"]), what);
    }
}

#[test]
fn a_fabricated_status_is_refused() {
    let s = Setup::new();
    let (kept, record) = recorder::<pb::HistoryResponse>();
    s.proxy.set(|h| h.history = record);
    s.cli(&["history", "--env", "prod"]).ok();
    let history = kept.lock().unwrap().clone().unwrap();
    s.proxy.set(|h| {
        h.list_environments = rewrite(|r: &mut pb::ListEnvironmentsResponse| {
            let latest = r.environments[0].latest.as_mut().unwrap();
            latest.release_id = FORGED_RELEASE.into();
            latest.db_position = forged_lsn();
        });
    });
    refused(&s.cli(&["status"]), "latest rewritten");
    // The latest replaced by pin #1, truly included, with its proof in the
    // same checkpoint.
    s.proxy.set(|h| {
        h.list_environments = rewrite(move |r: &mut pb::ListEnvironmentsResponse| {
            r.environments[0].latest = Some(history.pins[2].clone());
            r.entries[0] = history.entries[2].clone();
            r.checkpoint = history.checkpoint.clone();
        });
    });
    let run = s.cli(&["status"]);
    refused(&run, "latest replaced by an older pin");
    assert!(run.stderr.contains("misreported"), "{run:#?}");
}

/// Records a snapshot and a drill of prod through the proxy, verified.
fn record_evidence(s: &Setup, location: &str) {
    let key = s.world.vkey.as_str();
    s.cli(&[
        "snapshot-tag",
        "--env",
        "prod",
        "--location",
        location,
        "--at",
        AFTER_LAST,
        "--log-key",
        key,
    ])
    .ok();
    s.cli(&[
        "drill",
        "record",
        "--env",
        "prod",
        "--driver",
        "postgresql",
        "--at",
        AFTER_LAST,
        "--check-passed",
        "row count",
        "--log-key",
        key,
    ])
    .ok();
}

/// `snapshot list` or `drill list` of prod, with the log key.
fn list_evidence(s: &Setup, kind: &str) -> Run {
    s.cli(&[kind, "list", "--env", "prod", "--log-key", &s.world.vkey])
}

#[test]
fn fabricated_evidence_is_refused() {
    let s = Setup::new();
    let (kept, recording) = recorder::<pb::Checkpoint>();
    s.proxy.set(|h| h.get_checkpoint = recording);
    s.cli(&["checkpoint"]).ok();
    let before = kept.lock().unwrap().clone().unwrap();
    s.proxy.honest();
    record_evidence(&s, "s3://backups/prod/one");
    for kind in ["snapshot", "drill"] {
        assert!(list_evidence(&s, kind).ok().contains("verified"), "{kind}");
    }
    let forgeries: [(&str, Rewrite<pb::ListEvidenceResponse>); 3] = [
        (
            "an entry rewritten",
            Arc::new(|r: &mut pb::ListEvidenceResponse| {
                let e = &mut r.entries[0];
                e.entry = edited(&e.entry, "rel-3", FORGED_RELEASE);
            }),
        ),
        (
            "an unsigned checkpoint",
            Arc::new(|r: &mut pb::ListEvidenceResponse| {
                r.checkpoint = r.checkpoint.split("\n\n").next().unwrap().to_owned() + "\n\n";
            }),
        ),
        (
            "an older signed checkpoint",
            Arc::new(move |r: &mut pb::ListEvidenceResponse| r.checkpoint = before.note.clone()),
        ),
    ];
    for (what, hook) in forgeries {
        s.proxy.set(|h| h.list_evidence = Some(hook));
        for kind in ["snapshot", "drill"] {
            refused(&list_evidence(&s, kind), &format!("{kind} list: {what}"));
        }
    }
}

#[test]
fn an_older_evidence_list_is_refused() {
    let s = Setup::new();
    record_evidence(&s, "s3://backups/prod/one");
    let (kept, recording) = recorder::<pb::ListEvidenceResponse>();
    s.proxy.set(|h| h.list_evidence = recording);
    list_evidence(&s, "snapshot").ok();
    let one_snapshot = kept.lock().unwrap().clone().unwrap();
    // A second snapshot; the state folder remembers the newer checkpoint.
    s.proxy.honest();
    record_evidence(&s, "s3://backups/prod/two");
    s.cli(&["checkpoint"]).ok();
    s.proxy.set(|h| {
        h.list_evidence =
            rewrite(move |r: &mut pb::ListEvidenceResponse| *r = one_snapshot.clone());
    });
    refused(&list_evidence(&s, "snapshot"), "an older snapshot list");
}

#[test]
fn a_fabricated_artifact_record_is_refused() {
    let s = Setup::new();
    s.cli(&["stat", "--release-id", "rel-2"]).ok();
    s.proxy.set(|h| {
        h.stat_artifact = rewrite(|a: &mut pb::Artifact| a.digest = FORGED_DIGEST.into());
    });
    refused(&s.cli(&["stat", "--release-id", "rel-2"]), "stat");
    s.proxy.set(|h| {
        h.stat_artifact = rewrite(|a: &mut pb::Artifact| a.release_id = FORGED_RELEASE.into());
    });
    refused(&s.cli(&["stat", "--release-id", "rel-2"]), "stat");
}

#[test]
fn a_fabricated_posture_is_refused() {
    let s = Setup::new();
    s.proxy.set(|h| {
        h.get_posture = rewrite(|r: &mut pb::GetPostureResponse| {
            for e in &mut r.environments {
                e.class = FORGED_RELEASE.into();
                e.pins = 99;
                e.findings.clear();
            }
        });
    });
    refused(&s.cli(&["posture"]), "posture");
}

#[test]
fn require_verified_refuses_evidence_and_posture_when_no_key_is_known() {
    let s = Setup::new();
    for args in [
        &["snapshot", "list", "--env", "prod"][..],
        &["drill", "list", "--env", "prod"],
        &["posture"],
    ] {
        let mut strict = vec!["--require-verified"];
        strict.extend_from_slice(args);
        let run = s.cli_in("fresh-state", &strict, &[]);
        assert_eq!(run.code, 5, "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
}

#[test]
fn a_rolled_back_checkpoint_is_refused() {
    let world = World::new(&[]);
    let proxy = Lying::start(&world.server.url());
    let s = Setup { world, proxy };
    let (kept, record) = recorder::<pb::Checkpoint>();
    s.proxy.set(|h| h.get_checkpoint = record.clone());
    s.cli(&["checkpoint"]).ok();
    let empty = kept.lock().unwrap().clone().unwrap();
    assert_eq!(empty.size, 0, "a new log is empty");
    s.world.three_releases();
    s.cli(&["checkpoint"]).ok();
    let small = kept.lock().unwrap().clone().unwrap();
    assert!(small.size > 0);
    s.proxy.honest();
    s.world
        .cli(&["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"])
        .ok();
    s.cli(&["checkpoint"]).ok();
    for (what, old) in [("the empty log", empty), ("a smaller log", small)] {
        s.proxy
            .set(|h| h.get_checkpoint = rewrite(move |c: &mut pb::Checkpoint| *c = old.clone()));
        let run = s.cli(&["checkpoint"]);
        assert_eq!(run.code, 5, "{what}: {run:#?}");
        assert!(run.stdout.is_empty(), "{what}: {run:#?}");
    }
}

#[test]
fn a_watch_stream_that_rewrites_an_event_is_refused() {
    let s = Setup::new();
    let key = s.world.vkey.clone();
    let watch = |count: &str| {
        s.cli(&[
            "watch",
            "--env",
            "prod",
            "--from",
            "0",
            "--count",
            count,
            "--log-key",
            &key,
        ])
    };
    s.proxy.set(|h| {
        h.watch_log = filter(|mut e: pb::WatchEvent| {
            if String::from_utf8_lossy(&e.entry).contains("rel-2") {
                e.entry = edited(&e.entry, "rel-2", FORGED_RELEASE);
            }
            Some(e)
        });
    });
    let run = watch("3");
    refused(&run, "a rewritten event");
    assert!(
        run.stdout.contains("rel-1"),
        "the event before it was shown"
    );
}

#[test]
fn a_watch_stream_that_skips_a_pin_is_refused() {
    let s = Setup::new();
    let key = s.world.vkey.clone();
    s.proxy.set(|h| {
        h.watch_log = filter(|e: pb::WatchEvent| {
            (!String::from_utf8_lossy(&e.entry).contains("rel-2")).then_some(e)
        });
    });
    let run = s.cli(&[
        "watch",
        "--env",
        "prod",
        "--from",
        "0",
        "--count",
        "2",
        "--log-key",
        &key,
    ]);
    assert_eq!(run.code, 5, "{run:#?}");
    assert!(!run.stdout.contains("rel-3"), "{run:#?}");
}

#[test]
fn with_no_key_known_answers_say_unverified_or_are_refused() {
    let s = Setup::new();
    let run = s.cli_in(
        "fresh-state",
        &["resolve", "--env", "prod", "--at", AFTER_LAST],
        &[],
    );
    assert!(
        run.ok().lines().any(|l| l.contains("UNVERIFIED")),
        "{run:#?}"
    );
    for args in [&["history", "--env", "prod"][..], &["status"]] {
        let run = s.cli_in("fresh-state", args, &[]);
        assert!(run.ok().contains("UNVERIFIED"), "{args:?}: {run:#?}");
    }
    for args in [
        &["resolve", "--env", "prod", "--at", AFTER_LAST][..],
        &["history", "--env", "prod"],
        &["status"],
    ] {
        let mut strict = vec!["--require-verified"];
        strict.extend_from_slice(args);
        for run in [
            s.cli_in("fresh-state", &strict, &[]),
            s.cli_in("fresh-state", args, &[("STACKPIN_REQUIRE_VERIFIED", "1")]),
        ] {
            assert_eq!(run.code, 5, "{args:?}: {run:#?}");
            assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        }
    }
}

#[test]
fn a_fabricated_pin_answer_is_refused() {
    let s = Setup::new();
    let pin = |at: &str| {
        s.cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "rel-2",
            "--activated-at",
            at,
        ])
    };
    s.proxy.set(|h| {
        h.pin = rewrite(|r: &mut pb::PinResponse| {
            let p = r.pin.as_mut().unwrap();
            p.release_id = FORGED_RELEASE.into();
            p.digest = FORGED_DIGEST.into();
        });
    });
    refused(&pin("2026-03-01T13:00:00Z"), "pin: summary rewritten");
    s.proxy.set(|h| {
        h.pin = rewrite(|r: &mut pb::PinResponse| {
            r.pin.as_mut().unwrap().db_position = forged_lsn();
            let e = r.entry.as_mut().unwrap();
            e.entry = edited(
                &e.entry,
                "\"seq\":",
                "\"db_position\":{\"postgres_lsn\":\"DE/ADBEEF\"},\"seq\":",
            );
        });
    });
    refused(&pin("2026-03-01T14:00:00Z"), "pin: entry edited to match");
}

#[test]
fn a_watch_stream_under_an_older_checkpoint_is_refused() {
    let s = Setup::new();
    let key = s.world.vkey.clone();
    let watch = || {
        s.cli(&[
            "watch",
            "--env",
            "prod",
            "--from",
            "0",
            "--count",
            "3",
            "--log-key",
            &key,
        ])
    };
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = kept.clone();
    s.proxy.set(|h| {
        h.watch_log = filter(move |e: pb::WatchEvent| {
            sink.lock().unwrap().push(e.clone());
            Some(e)
        });
    });
    watch().ok();
    let earlier: Vec<pb::WatchEvent> = kept.lock().unwrap().clone();
    // A newer pin; the state folder remembers the newer checkpoint.
    s.proxy.honest();
    s.cli(&["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"])
        .ok();
    s.proxy.set(|h| {
        h.watch_log = filter(move |e: pb::WatchEvent| {
            earlier
                .iter()
                .find(|old| old.index == e.index && !old.entry.is_empty())
                .cloned()
                .or(Some(e))
        });
    });
    refused(&watch(), "a watch under an older checkpoint");
}

#[test]
fn a_resolve_by_position_with_its_doubt_removed_is_refused() {
    let s = Setup::new();
    // Pin #4 records an LSN, pin #5 none: an LSN past #4's is uncertain.
    s.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "rel-1",
        "--activated-at",
        "2026-03-01T13:00:00Z",
        "--db-lsn",
        "0/100",
    ])
    .ok();
    s.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "rel-2",
        "--activated-at",
        "2026-03-01T14:00:00Z",
    ])
    .ok();
    let by_lsn = ["resolve", "--env", "prod", "--db-lsn", "0/200"];
    let honest = s.cli(&by_lsn);
    assert!(honest.ok().contains("rel-1"), "{honest:#?}");
    s.proxy
        .set(|h| h.resolve = rewrite(|r: &mut pb::ResolveResponse| r.uncertain.clear()));
    let run = s.cli(&by_lsn);
    refused(&run, "uncertain removed");
    assert!(run.stderr.contains("uncertain"), "{run:#?}");
    s.proxy.set(|h| {
        h.resolve = rewrite(|r: &mut pb::ResolveResponse| {
            r.pin.as_mut().unwrap().db_position = forged_lsn();
        });
    });
    refused(&s.cli(&by_lsn), "position rewritten");
}

#[test]
fn evidence_is_verified_with_the_remembered_key() {
    let s = Setup::new();
    record_evidence(&s, "s3://backups/prod/one");
    s.cli_in("trusted-state", &["trust", "add", &s.world.vkey], &[])
        .ok();
    let resolved = s.cli_in(
        "trusted-state",
        &["resolve", "--env", "prod", "--at", AFTER_LAST],
        &[],
    );
    assert!(!resolved.ok().contains("UNVERIFIED"), "{resolved:#?}");
    for kind in ["snapshot", "drill"] {
        let run = s.cli_in("trusted-state", &[kind, "list", "--env", "prod"], &[]);
        assert!(!run.ok().contains("not verified"), "{kind}: {run:#?}");
    }
}
