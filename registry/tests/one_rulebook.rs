//! One rulebook: random logs, valid or with one entry broken in each way the
//! rules name, are applied through the registry's index path (the rebuild
//! from storage) and through the audit. Both must accept the same entries
//! and refuse the same entry for the same rule.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use stackpin_core::audit::Audit;
use stackpin_core::digest::Digest;
use stackpin_core::entry::{
    DrillCheck, DrillEntry, Driver, Entry, KeyAction, KeyEntry, Live, PinEntry, PublishEntry,
    SnapshotEntry,
};
use stackpin_core::ids::ReleaseId;
use stackpin_core::layout;
use stackpin_core::merkle;
use stackpin_core::position::{DbPosition, Lsn};
use stackpin_core::signing::{self, KeyId, PublicKey, TrustedKeys};
use stackpin_core::state::Rules;
use stackpin_core::time::Timestamp;
use stackpin_registry::index::Index;

const SECOND: i64 = 1_000_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600 * SECOND;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Every way to break an entry that the rules name, by its reason.
const BREAKS: [&str; 23] = [
    "MALFORMED_ENTRY",
    "RELEASE_BOUND",
    "BAD_SIGNATURE",
    "PREDICATE_TYPE",
    "KEY_NOT_VALID",
    "RELEASE_UNPUBLISHED",
    "DIGEST_MISMATCH",
    "PIN_SEQUENCE",
    "PIN_CHAIN",
    "ACTIVATION_ORDER",
    "ACTIVATION_SKEW",
    "POSITION_ORDER",
    "KEY_MISMATCH",
    "KEY_ADDED_TWICE",
    "KEY_REVOKED_TWICE",
    "NOTHING_LIVE",
    "LIVE_MISMATCH",
    "FUTURE_INSTANT",
    "SNAPSHOT_REF",
    "DRILL_VERDICT",
    "EVIDENCE_RANGE",
    "EVIDENCE_TEXT",
    "PROMOTION",
];

#[derive(Clone)]
struct Head {
    seq: u64,
    at: i64,
    hash: String,
    lsn: u64,
}

/// Writes valid entries, keeping the state it needs to: the clock, the
/// releases, the environments' heads and the second publisher key.
struct Writer {
    entries: Vec<Bytes>,
    now: i64,
    releases: Vec<(ReleaseId, Digest)>,
    heads: HashMap<&'static str, Head>,
    second_added: bool,
    second_revoked: bool,
    rng: u64,
    /// Every pin so far, per environment: (activation, the pin).
    pins: HashMap<&'static str, Vec<(Timestamp, Live)>>,
    /// Every snapshot so far: (log index, environment, instant, its pin).
    snapshots: Vec<(u64, &'static str, Timestamp, Live)>,
}

impl Writer {
    fn new(seed: u64) -> Self {
        Self {
            entries: Vec::new(),
            now: T0,
            releases: Vec::new(),
            heads: HashMap::new(),
            second_added: false,
            second_revoked: false,
            rng: seed | 1,
            pins: HashMap::new(),
            snapshots: Vec::new(),
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        // xorshift64: reproducible from the proptest seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn tick(&mut self) -> Timestamp {
        self.now += SECOND;
        Timestamp::from_micros(self.now).unwrap()
    }

    fn push(&mut self, entry: &Entry) {
        self.entries.push(entry.to_bytes());
    }

    fn publish_entry(
        &mut self,
        release: &str,
        body: &[u8],
        signer: &SigningKey,
        signed: &Digest,
    ) -> Entry {
        let release_id: ReleaseId = release.parse().unwrap();
        let envelope =
            signing::sign_envelope(&signing::publish_statement(&release_id, signed), signer);
        Entry::Publish(PublishEntry {
            release_id,
            digest: Digest::of(body),
            size: body.len() as u64,
            media_type: "application/json".into(),
            key_id: KeyId::of(&signer.verifying_key()),
            envelope: serde_json::from_slice(&envelope).unwrap(),
            recorded_at: self.tick(),
            request_id: None,
            predicate_type: Some(signing::PUBLISH_PREDICATE.into()),
        })
    }

    fn publish(&mut self) {
        let n = self.releases.len();
        let body = format!("[{n}]");
        let signer = if self.second_added && !self.second_revoked && self.rand(2) == 0 {
            key(2)
        } else {
            key(1)
        };
        let e = self.publish_entry(
            &format!("r{n}"),
            body.as_bytes(),
            &signer,
            &Digest::of(body.as_bytes()),
        );
        self.releases.push((
            format!("r{n}").parse().unwrap(),
            Digest::of(body.as_bytes()),
        ));
        self.push(&e);
    }

    fn pin_entry(&mut self, env: &'static str, with_lsn: bool) -> PinEntry {
        let pick = self.rand(self.releases.len() as u64) as usize;
        let (release_id, digest) = self.releases[pick].clone();
        let recorded_at = self.tick();
        let head = self.heads.get(env).cloned();
        let lsn = head.as_ref().map_or(100, |h| h.lsn + self.rand(3));
        PinEntry {
            env: env.parse().unwrap(),
            seq: head.as_ref().map_or(1, |h| h.seq + 1),
            release_id,
            digest,
            activated_at: recorded_at,
            recorded_at,
            actor: "pipeline".into(),
            reason: String::new(),
            prev_pin: head.map(|h| h.hash),
            db_position: with_lsn.then(|| DbPosition::lsn(&Lsn(lsn).to_string()).unwrap()),
            request_id: None,
            runtime_image: None,
        }
    }

    fn pin(&mut self) {
        let env = ["a", "b", "c"][self.rand(3) as usize];
        let p = self.pin_entry(env, true);
        self.push_pin(env, p);
    }

    fn push_pin(&mut self, env: &'static str, p: PinEntry) {
        self.pins.entry(env).or_default().push((
            p.activated_at,
            Live {
                seq: p.seq,
                release_id: p.release_id.clone(),
                digest: p.digest,
            },
        ));
        let e = Entry::Pin(p.clone());
        let bytes = e.to_bytes();
        self.heads.insert(
            env,
            Head {
                seq: p.seq,
                at: p.activated_at.as_micros(),
                hash: hex::encode(merkle::leaf_hash(&bytes)),
                lsn: self
                    .heads
                    .get(env)
                    .map_or(100, |h| h.lsn)
                    .max(match &p.db_position {
                        Some(DbPosition::PostgresLsn { lsn }) => lsn.parse::<Lsn>().unwrap().0,
                        _ => 0,
                    }),
            },
        );
        self.entries.push(bytes);
    }

    fn key_entry(&mut self, action: KeyAction, signer: &SigningKey, pem_of: &SigningKey) -> Entry {
        let at = self.tick();
        Entry::Key(KeyEntry {
            action,
            key_id: KeyId::of(&signer.verifying_key()),
            public_key: (action == KeyAction::Add)
                .then(|| PublicKey::new(pem_of.verifying_key()).to_pem().unwrap()),
            at,
            recorded_at: at,
            actor: "admin".into(),
            reason: String::new(),
            request_id: None,
        })
    }

    fn add_second(&mut self) {
        let e = self.key_entry(KeyAction::Add, &key(2), &key(2));
        self.second_added = true;
        self.push(&e);
    }

    fn revoke_second(&mut self) {
        let e = self.key_entry(KeyAction::Revoke, &key(2), &key(2));
        self.second_revoked = true;
        self.push(&e);
    }

    /// A pin of a pinned environment, picked at random, with its instant:
    /// the snapshot or drill of that instant pairs with it.
    fn some_pin(&mut self) -> (&'static str, Timestamp, Live) {
        let mut envs: Vec<&'static str> = self.pins.keys().copied().collect();
        envs.sort_unstable();
        let env = envs[self.rand(envs.len() as u64) as usize];
        let n = self.pins[env].len() as u64;
        let pick = self.rand(n) as usize;
        let (at, live) = self.pins[env][pick].clone();
        (env, at, live)
    }

    fn snapshot_entry(&mut self, env: &'static str, at: Timestamp, live: Live) -> SnapshotEntry {
        SnapshotEntry {
            env: env.parse().unwrap(),
            driver: Driver::Litestream,
            location: "s3://backups/db".into(),
            db_time: at,
            db_position: None,
            size: Some(4096),
            sha256: None,
            live,
            recorded_at: self.tick(),
            actor: "backup".into(),
            request_id: None,
        }
    }

    fn snapshot(&mut self) {
        let (env, at, live) = self.some_pin();
        let index = self.entries.len() as u64;
        let s = self.snapshot_entry(env, at, live.clone());
        self.snapshots.push((index, env, at, live));
        self.push(&Entry::Snapshot(s));
    }

    fn drill_entry(
        &mut self,
        env: &'static str,
        target: Timestamp,
        live: Live,
        snapshot: Option<u64>,
        passed: bool,
    ) -> DrillEntry {
        let recorded_at = self.tick();
        DrillEntry {
            env: env.parse().unwrap(),
            driver: Driver::Litestream,
            snapshot,
            target,
            live,
            checks: vec![DrillCheck {
                name: "PRAGMA integrity_check".into(),
                passed,
                detail: String::new(),
            }],
            steps: Vec::new(),
            rto_millis: Some(1200),
            rpo_millis: None,
            passed,
            failure: (!passed).then(|| "a check failed".into()),
            started_at: recorded_at,
            recorded_at,
            actor: "drill".into(),
            request_id: None,
        }
    }

    fn drill(&mut self) {
        let passed = self.rand(4) != 0;
        let d = if !self.snapshots.is_empty() && self.rand(2) == 0 {
            let pick = self.rand(self.snapshots.len() as u64) as usize;
            let (index, env, at, live) = self.snapshots[pick].clone();
            self.drill_entry(env, at, live, Some(index), passed)
        } else {
            let (env, at, live) = self.some_pin();
            self.drill_entry(env, at, live, None, passed)
        };
        self.push(&Entry::Drill(d));
    }

    /// One more valid entry, of a random kind.
    fn any(&mut self) {
        match self.rand(8) {
            0 | 1 => self.publish(),
            6 => self.snapshot(),
            7 => self.drill(),
            _ => self.pin(),
        }
    }

    /// An entry that breaks the rule named `reason` at this point of the log.
    fn broken(&mut self, reason: &str) -> Bytes {
        let env = "a";
        let entry = match reason {
            "MALFORMED_ENTRY" => return Bytes::from_static(br#"{"type":"delete","index":0}"#),
            "RELEASE_BOUND" => {
                let (rid, _) = self.releases[0].clone();
                let body = b"[\"other bytes\"]";
                self.publish_entry(rid.as_str(), body, &key(1), &Digest::of(body))
            }
            "BAD_SIGNATURE" => {
                let body = b"[\"signed\"]";
                self.publish_entry("forged", b"[\"sent\"]", &key(1), &Digest::of(body))
            }
            "PREDICATE_TYPE" => {
                // Another attestation by a trusted key, recorded as what it is.
                let body = b"[\"provenance\"]";
                let statement = String::from_utf8(signing::publish_statement(
                    &"provenance".parse().unwrap(),
                    &Digest::of(body),
                ))
                .unwrap()
                .replace(signing::PUBLISH_PREDICATE, "https://slsa.dev/provenance/v1");
                let mut e = self.publish_entry("provenance", body, &key(1), &Digest::of(body));
                if let Entry::Publish(p) = &mut e {
                    p.envelope = serde_json::from_slice(&signing::sign_envelope(
                        statement.as_bytes(),
                        &key(1),
                    ))
                    .unwrap();
                    p.predicate_type = Some("https://slsa.dev/provenance/v1".into());
                }
                e
            }
            "KEY_NOT_VALID" => {
                let body = b"[\"unknown key\"]";
                self.publish_entry("stranger", body, &key(9), &Digest::of(body))
            }
            "RELEASE_UNPUBLISHED" => {
                let mut p = self.pin_entry(env, false);
                p.release_id = "never-published".parse().unwrap();
                Entry::Pin(p)
            }
            "DIGEST_MISMATCH" => {
                let mut p = self.pin_entry(env, false);
                p.digest = Digest::of(b"something else");
                Entry::Pin(p)
            }
            "PIN_SEQUENCE" => {
                let mut p = self.pin_entry(env, false);
                p.seq += 1;
                Entry::Pin(p)
            }
            "PIN_CHAIN" => {
                let mut p = self.pin_entry(env, false);
                p.prev_pin = Some(hex::encode([7u8; 32]));
                Entry::Pin(p)
            }
            "ACTIVATION_ORDER" => {
                let head_at = self.heads[env].at;
                let mut p = self.pin_entry(env, false);
                p.activated_at = Timestamp::from_micros(head_at - 1).unwrap();
                Entry::Pin(p)
            }
            "ACTIVATION_SKEW" => {
                let mut p = self.pin_entry(env, false);
                p.activated_at = p.recorded_at.saturating_add_micros(3600 * SECOND);
                Entry::Pin(p)
            }
            "POSITION_ORDER" => {
                let last = self.heads[env].lsn;
                let mut p = self.pin_entry(env, false);
                p.db_position = Some(DbPosition::lsn(&Lsn(last - 1).to_string()).unwrap());
                Entry::Pin(p)
            }
            "KEY_MISMATCH" => self.key_entry(KeyAction::Add, &key(3), &key(4)),
            "KEY_ADDED_TWICE" => self.key_entry(KeyAction::Add, &key(2), &key(2)),
            "KEY_REVOKED_TWICE" => self.key_entry(KeyAction::Revoke, &key(2), &key(2)),
            "NOTHING_LIVE" => {
                let (_, at, live) = self.some_pin();
                Entry::Snapshot(self.snapshot_entry("never-pinned", at, live))
            }
            "LIVE_MISMATCH" => {
                let (env, at, mut live) = self.some_pin();
                live.digest = Digest::of(b"another artifact");
                Entry::Snapshot(self.snapshot_entry(env, at, live))
            }
            "FUTURE_INSTANT" => {
                let (env, _, live) = self.some_pin();
                let mut s = self.snapshot_entry(env, Timestamp::from_micros(0).unwrap(), live);
                s.db_time = s.recorded_at.saturating_add_micros(3600 * SECOND);
                Entry::Snapshot(s)
            }
            "SNAPSHOT_REF" => {
                // Entry 0 is a publish, not a snapshot.
                let (env, at, live) = self.some_pin();
                Entry::Drill(self.drill_entry(env, at, live, Some(0), true))
            }
            "DRILL_VERDICT" => {
                let (env, at, live) = self.some_pin();
                let mut d = self.drill_entry(env, at, live, None, false);
                d.passed = true;
                d.failure = None;
                if self.rand(2) == 0 {
                    // Passed, with nothing checked.
                    d.checks.clear();
                }
                Entry::Drill(d)
            }
            "EVIDENCE_RANGE" => {
                let (env, at, live) = self.some_pin();
                let mut d = self.drill_entry(env, at, live, None, true);
                match self.rand(3) {
                    0 => d.rto_millis = Some(u64::MAX),
                    1 => d.rpo_millis = Some(u64::MAX),
                    _ => {
                        d.started_at =
                            Timestamp::from_micros((-62_135_596_800 + 86_400) * SECOND).unwrap()
                    }
                }
                Entry::Drill(d)
            }
            "EVIDENCE_TEXT" => {
                let (env, at, live) = self.some_pin();
                if self.rand(2) == 0 {
                    let mut s = self.snapshot_entry(env, at, live);
                    s.location = "s3://backups/\u{202E}bd.etavirp".into();
                    Entry::Snapshot(s)
                } else {
                    let mut d = self.drill_entry(env, at, live, None, true);
                    d.checks[0].name = "rows\u{1b}[2Kcount".into();
                    Entry::Drill(d)
                }
            }
            "PROMOTION" => {
                // A previous checkpoint of another size than the entry's
                // index (the fixed start puts every broken entry past 2),
                // or of an epoch not just before the one it begins.
                let body = stackpin_core::note::Checkpoint {
                    origin: "x/log".into(),
                    size: 1,
                    root: stackpin_core::merkle::Hash::from_slice(&[7; 32]).unwrap(),
                }
                .body();
                Entry::Promotion(stackpin_core::entry::PromotionEntry {
                    epoch: 2 + self.rand(2),
                    previous: format!("{body}\n\u{2014} x/log AAAA\n"),
                    promoted_at: Timestamp::from_micros(T0).unwrap(),
                    actor: "oncall".into(),
                    request_id: None,
                })
            }
            other => panic!("no way to break {other}"),
        };
        entry.to_bytes()
    }
}

/// A log of `len` valid entries after a fixed start (a publish, a pin of
/// `a` with an LSN, the second key added), with the entry at `at` broken by
/// `reason` when given. Returns the entries.
fn log(seed: u64, len: usize, broken: Option<(usize, &str)>) -> Vec<Bytes> {
    let mut w = Writer::new(seed);
    w.publish();
    let p = w.pin_entry("a", true);
    w.push_pin("a", p);
    w.add_second();
    if broken.is_some_and(|(_, r)| r == "KEY_REVOKED_TWICE") {
        w.revoke_second();
    }
    for i in 0..len {
        if let Some((at, reason)) = broken
            && at == i
        {
            let bytes = w.broken(reason);
            w.entries.push(bytes);
            continue;
        }
        w.any();
    }
    w.entries
}

/// Splits `entries` into log objects of 1 to 4 entries, as group commit does.
fn objects(seed: u64, entries: &[Bytes]) -> Vec<(u64, Vec<Bytes>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut rng = seed | 1;
    while start < entries.len() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (1 + (rng % 4) as usize).min(entries.len() - start);
        out.push((start as u64, entries[start..start + n].to_vec()));
        start += n;
    }
    out
}

fn rules() -> Rules {
    Rules::new(TrustedKeys::new([PublicKey::new(key(1).verifying_key())]))
}

/// What the index path did: entries applied, and the refused entry's
/// index and rule.
fn through_the_index(objects: &[(u64, Vec<Bytes>)]) -> (u64, Option<(u64, String)>) {
    let index = Index::temporary().unwrap();
    let rules = rules();
    for (start, entries) in objects {
        if let Err(e) = index.apply_object(&rules, *start, entries, 0) {
            let refused = e
                .message()
                .strip_prefix("log entry ")
                .and_then(|m| m.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a refusal of the rules: {e}"));
            return (
                index.applied().unwrap(),
                Some((refused, e.reason().to_owned())),
            );
        }
    }
    (index.applied().unwrap(), None)
}

/// What the audit found: the first failure's entry index and rule.
fn through_the_audit(objects: &[(u64, Vec<Bytes>)]) -> Option<(u64, String)> {
    let mut audit = Audit::with_rules(rules());
    for (start, entries) in objects {
        audit.object(*start, Ok(&layout::join(entries)));
    }
    let report = audit.finish();
    let first = report.failures.first()?;
    let index = first
        .message
        .strip_prefix("entry ")
        .and_then(|m| m.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an entry's failure: {}", first.message));
    Some((index, first.rule.unwrap_or("none").to_owned()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_index_and_the_audit_accept_the_same_valid_logs(seed in any::<u64>(), len in 0usize..40) {
        let entries = log(seed, len, None);
        let objects = objects(seed, &entries);
        let (applied, refused) = through_the_index(&objects);
        prop_assert_eq!(refused, None);
        prop_assert_eq!(applied, entries.len() as u64);
        prop_assert_eq!(through_the_audit(&objects), None);
    }

    #[test]
    fn the_index_and_the_audit_refuse_the_same_entry_for_the_same_rule(
        seed in any::<u64>(),
        len in 1usize..30,
        at in any::<prop::sample::Index>(),
        rule in prop::sample::select(BREAKS.to_vec()),
    ) {
        let at = at.index(len);
        let entries = log(seed, len, Some((at, rule)));
        let broken = entries.len() as u64 - (len - at) as u64;
        let objects = objects(seed, &entries);
        let (applied, refused) = through_the_index(&objects);
        let expected = Some((broken, rule.to_owned()));
        prop_assert_eq!(&refused, &expected);
        prop_assert_eq!(through_the_audit(&objects), expected);
        // A log object is applied whole or not at all: the index stops at
        // the start of the object holding the broken entry.
        let (start, _) = objects.iter().rev().find(|(s, _)| *s <= broken).unwrap();
        prop_assert_eq!(applied, *start);
    }
}

#[test]
fn every_rule_has_a_way_to_break_it_here() {
    // The table above and the rules' reasons name the same rules.
    for reason in BREAKS {
        assert!(
            stackpin_core::state::kind_of_reason(reason).is_some(),
            "{reason} is not a rule"
        );
    }
    // A request id reused is refused per request, before any entry exists.
    for reason in stackpin_core::state::reasons() {
        assert!(
            BREAKS.contains(&reason) || reason == "REQUEST_ID_REUSED",
            "no way to break {reason} here"
        );
    }
}

#[test]
fn each_rule_tells_a_request_the_kind_its_reason_names() {
    use stackpin_core::state::{Empty, Overlay, Refused, kind_of_reason};
    for rule in BREAKS {
        let entries = log(7, 12, Some((11, rule)));
        let empty = Empty;
        let mut state = Overlay::new(&empty);
        let rules = rules();
        let refused = entries
            .iter()
            .enumerate()
            .find_map(|(i, bytes)| state.apply(&rules, i as u64, bytes).err())
            .unwrap_or_else(|| panic!("{rule}: nothing was refused"));
        // The empty state cannot fail: every refusal is a rule's.
        let Refused::Violation(v) = refused;
        assert_eq!(v.reason(), rule);
        assert_eq!(Some(v.kind()), kind_of_reason(rule), "{rule}");
    }
}
