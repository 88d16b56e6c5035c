//! The recovery posture of an environment: whether its backups and restore
//! tests, as the log records them, meet its targets.
//!
//! The targets come from a class, with the RPO and RTO of the ObjectOS
//! backup guide's planning table as defaults, or from explicit settings:
//!
//! | class | RPO | RTO | drills |
//! |---|---|---|---|
//! | `evaluation` | best effort | best effort | best effort |
//! | `single-node` | 1 hour | 15 minutes ("minutes") | every 90 days |
//! | `single-tenant` | 15 minutes | 1 hour | every 90 days |
//! | `multi-tenant` | 5 minutes | 30 minutes | every 90 days |
//!
//! The drill interval is the guide's "at least once a quarter". An
//! environment is out of policy when its newest snapshot is older than the
//! RPO, its newest passing drill is older than the drill interval (or there
//! is none), or that drill's measured restore time exceeds the RTO. Pins
//! without a position or without a snapshot are reported, not judged: a
//! pin that went live minutes ago has no snapshot yet by nature.
//!
//! Evaluation is a pure function of the evidence and an instant, so a
//! report can be asked "as of" any time and tests inject the clock.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::time::Timestamp;

/// A deployment class of the ObjectOS planning table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Evaluation,
    SingleNode,
    SingleTenant,
    MultiTenant,
}

/// The drill interval of every class that has one: a quarter.
pub const DRILL_INTERVAL: Duration = Duration::from_secs(90 * 24 * 3600);

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Evaluation,
        Class::SingleNode,
        Class::SingleTenant,
        Class::MultiTenant,
    ];

    /// The class's name, as settings spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Evaluation => "evaluation",
            Class::SingleNode => "single-node",
            Class::SingleTenant => "single-tenant",
            Class::MultiTenant => "multi-tenant",
        }
    }

    /// The class's default targets.
    pub fn targets(self) -> Targets {
        let min = |m: u64| Some(Duration::from_secs(m * 60));
        let (rpo, rto, drill_interval) = match self {
            Class::Evaluation => (None, None, None),
            Class::SingleNode => (min(60), min(15), Some(DRILL_INTERVAL)),
            Class::SingleTenant => (min(15), min(60), Some(DRILL_INTERVAL)),
            Class::MultiTenant => (min(5), min(30), Some(DRILL_INTERVAL)),
        };
        Targets {
            class: self,
            rpo,
            rto,
            drill_interval,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Class {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "class {} is not one of evaluation, single-node, single-tenant, multi-tenant",
                    crate::error::shown(text)
                ))
            })
    }
}

/// What an environment is held to; `None` is best effort (not judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub class: Class,
    #[serde(with = "opt_secs")]
    pub rpo: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub rto: Option<Duration>,
    #[serde(with = "opt_secs")]
    pub drill_interval: Option<Duration>,
}

/// Durations as whole seconds in reports.
mod opt_secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
}

/// The targets of every environment: a default and any per environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub default: Targets,
    pub envs: std::collections::BTreeMap<EnvName, Targets>,
}

/// The class an environment no setting names is held to: the planning
/// table's smallest production class.
pub const DEFAULT_CLASS: Class = Class::SingleNode;

impl Default for Policy {
    fn default() -> Self {
        Self {
            default: DEFAULT_CLASS.targets(),
            envs: std::collections::BTreeMap::new(),
        }
    }
}

impl Policy {
    /// The targets of `env`.
    pub fn targets(&self, env: &EnvName) -> Targets {
        self.envs.get(env).copied().unwrap_or(self.default)
    }
}

/// What the log holds about an environment's backups and drills.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Its pins, and how many of them record a database position.
    pub pins: u64,
    pub positioned: u64,
    /// The newest snapshot's instant (what it restores to) and log index.
    pub newest_snapshot: Option<(Timestamp, u64)>,
    /// The newest passing drill: when it was recorded, its log index and
    /// its measured restore time.
    pub newest_passing_drill: Option<(Timestamp, u64, Option<Duration>)>,
    /// The newest drill, passing or not: when and whether it passed.
    pub newest_drill: Option<(Timestamp, bool)>,
    /// Sequence numbers of the pins no snapshot restores to, oldest first.
    pub pins_without_snapshot: Vec<u64>,
}

/// A snapshot as the posture counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotFact {
    /// The sequence number of the pin live at its instant.
    pub seq: u64,
    /// The instant it restores to.
    pub db_time: Timestamp,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// Its log index.
    pub index: u64,
}

/// A drill as the posture counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrillFact {
    pub recorded_at: Timestamp,
    pub passed: bool,
    /// Its log index.
    pub index: u64,
    pub rto_millis: Option<u64>,
}

/// Gathers an environment's evidence as of `as_of` (none: everything):
/// `pins` and `positioned` are its pins activated by then and how many of
/// them record a position; `snapshots` in log order, `drills` newest first.
/// Snapshots and drills recorded after `as_of` do not count. The one
/// derivation, for the registry's index and for the CLI over proved
/// entries alike.
pub fn gather(
    pins: u64,
    positioned: u64,
    snapshots: impl IntoIterator<Item = SnapshotFact>,
    drills: impl IntoIterator<Item = DrillFact>,
    as_of: Option<Timestamp>,
) -> Evidence {
    let counts = |t: Timestamp| as_of.is_none_or(|a| t <= a);
    let mut covered = std::collections::HashSet::new();
    let mut newest_snapshot: Option<(Timestamp, u64)> = None;
    for s in snapshots.into_iter().filter(|s| counts(s.recorded_at)) {
        covered.insert(s.seq);
        newest_snapshot = match newest_snapshot {
            Some((t, i)) if t > s.db_time => Some((t, i)),
            _ => Some((s.db_time, s.index)),
        };
    }
    let mut newest_drill = None;
    let mut newest_passing_drill = None;
    for d in drills.into_iter().filter(|d| counts(d.recorded_at)) {
        newest_drill.get_or_insert((d.recorded_at, d.passed));
        if d.passed {
            newest_passing_drill = Some((
                d.recorded_at,
                d.index,
                d.rto_millis.map(Duration::from_millis),
            ));
            break;
        }
    }
    Evidence {
        pins,
        positioned,
        newest_snapshot,
        newest_passing_drill,
        newest_drill,
        pins_without_snapshot: (1..=pins).filter(|s| !covered.contains(s)).collect(),
    }
}

/// One target an environment misses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `rpo`, `drill_interval` or `rto`.
    pub target: &'static str,
    pub message: String,
}

/// An environment's posture at an instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Posture {
    pub env: EnvName,
    pub at: Timestamp,
    pub targets: Targets,
    /// How old the newest snapshot's instant is, in seconds.
    pub snapshot_age_secs: Option<u64>,
    pub newest_snapshot_index: Option<u64>,
    /// How old the newest passing drill is, in seconds.
    pub drill_age_secs: Option<u64>,
    pub newest_passing_drill_index: Option<u64>,
    /// The newest passing drill's measured restore time, in milliseconds.
    pub measured_rto_millis: Option<u64>,
    /// Whether the newest drill failed (a failure after the last pass).
    pub last_drill_failed: bool,
    pub pins: u64,
    pub pins_with_position: u64,
    /// Pins no snapshot restores to (sequence numbers, the newest 20).
    pub pins_without_snapshot: Vec<u64>,
    pub pins_without_snapshot_count: u64,
    /// The targets missed; empty when in policy.
    pub findings: Vec<Finding>,
}

impl Posture {
    /// Whether the environment meets every target it has.
    pub fn in_policy(&self) -> bool {
        self.findings.is_empty()
    }

    /// The share of pins recording a database position, 0 to 1 (1 with no pins).
    pub fn position_share(&self) -> f64 {
        if self.pins == 0 {
            1.0
        } else {
            self.pins_with_position as f64 / self.pins as f64
        }
    }
}

/// A duration as people read it: `3d 4h`, `12m 5s`, `850ms`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    let micros = now.as_micros().saturating_sub(then.as_micros()).max(0);
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Judges `evidence` of `env` against `targets` as of `now`.
pub fn evaluate(env: &EnvName, evidence: &Evidence, targets: Targets, now: Timestamp) -> Posture {
    let mut findings = Vec::new();
    // An environment with nothing pinned yet (as of `now`) has nothing to
    // restore, so no backup or drill is due.
    let due = evidence.pins > 0;
    let snapshot_age = evidence.newest_snapshot.map(|(t, _)| age(now, t));
    if let Some(rpo) = targets.rpo.filter(|_| due) {
        match snapshot_age {
            None => findings.push(Finding {
                target: "rpo",
                message: format!(
                    "no snapshot is recorded; the RPO is {} (record one with `stackpin snapshot-tag`)",
                    human(rpo)
                ),
            }),
            Some(a) if a > rpo => findings.push(Finding {
                target: "rpo",
                message: format!(
                    "the newest snapshot is {} old, beyond the RPO of {}",
                    human(a),
                    human(rpo)
                ),
            }),
            Some(_) => {}
        }
    }
    let drill_age = evidence.newest_passing_drill.map(|(t, _, _)| age(now, t));
    if let Some(interval) = targets.drill_interval.filter(|_| due) {
        match drill_age {
            None => findings.push(Finding {
                target: "drill_interval",
                message: format!(
                    "no passing restore drill is recorded; drills are due every {} (`stackpin drill run`)",
                    human(interval)
                ),
            }),
            Some(a) if a > interval => findings.push(Finding {
                target: "drill_interval",
                message: format!(
                    "the newest passing drill is {} old, beyond the drill interval of {}",
                    human(a),
                    human(interval)
                ),
            }),
            Some(_) => {}
        }
    }
    let measured = evidence.newest_passing_drill.and_then(|(_, _, rto)| rto);
    if let (Some(rto), Some(m)) = (targets.rto, measured)
        && m > rto
    {
        findings.push(Finding {
            target: "rto",
            message: format!(
                "the newest passing drill took {} to restore, beyond the RTO of {}",
                human(m),
                human(rto)
            ),
        });
    }
    let without = &evidence.pins_without_snapshot;
    Posture {
        env: env.clone(),
        at: now,
        targets,
        snapshot_age_secs: snapshot_age.map(|a| a.as_secs()),
        newest_snapshot_index: evidence.newest_snapshot.map(|(_, i)| i),
        drill_age_secs: drill_age.map(|a| a.as_secs()),
        newest_passing_drill_index: evidence.newest_passing_drill.map(|(_, i, _)| i),
        measured_rto_millis: measured.map(|m| u64::try_from(m.as_millis()).unwrap_or(u64::MAX)),
        last_drill_failed: evidence.newest_drill.is_some_and(|(_, passed)| !passed),
        pins: evidence.pins,
        pins_with_position: evidence.positioned,
        pins_without_snapshot: without[without.len().saturating_sub(20)..].to_vec(),
        pins_without_snapshot_count: without.len() as u64,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn an_environment_with_nothing_pinned_yet_owes_no_backup_or_drill() {
        let env: EnvName = "prod".parse().unwrap();
        let none = Evidence::default();
        let p = evaluate(
            &env,
            &none,
            Class::MultiTenant.targets(),
            at("2026-01-01T00:00:00Z"),
        );
        assert!(p.in_policy(), "{:?}", p.findings);
        let pinned = Evidence {
            pins: 1,
            pins_without_snapshot: vec![1],
            ..Evidence::default()
        };
        let p = evaluate(
            &env,
            &pinned,
            Class::MultiTenant.targets(),
            at("2026-01-01T00:00:00Z"),
        );
        let targets: Vec<_> = p.findings.iter().map(|f| f.target).collect();
        assert_eq!(targets, ["rpo", "drill_interval"]);
    }

    #[test]
    fn a_drill_older_than_the_interval_puts_an_environment_out_of_policy() {
        let env: EnvName = "prod".parse().unwrap();
        let evidence = Evidence {
            pins: 2,
            positioned: 1,
            newest_snapshot: Some((at("2026-01-01T00:00:00Z"), 3)),
            newest_passing_drill: Some((
                at("2026-01-01T00:10:00Z"),
                4,
                Some(Duration::from_secs(30)),
            )),
            newest_drill: Some((at("2026-01-01T00:10:00Z"), true)),
            pins_without_snapshot: vec![1],
        };
        let targets = Class::SingleNode.targets();
        let fresh = evaluate(&env, &evidence, targets, at("2026-01-01T00:30:00Z"));
        assert!(fresh.in_policy(), "{:?}", fresh.findings);
        assert_eq!(fresh.position_share(), 0.5);
        assert_eq!(fresh.pins_without_snapshot, vec![1]);

        let later = evaluate(&env, &evidence, targets, at("2026-01-01T02:00:00Z"));
        let missed: Vec<_> = later.findings.iter().map(|f| f.target).collect();
        assert_eq!(missed, ["rpo"]);

        let quarter = evaluate(&env, &evidence, targets, at("2026-04-02T00:00:00Z"));
        let missed: Vec<_> = quarter.findings.iter().map(|f| f.target).collect();
        assert_eq!(missed, ["rpo", "drill_interval"]);

        // Evaluation environments are not judged.
        let eval = evaluate(
            &env,
            &Evidence::default(),
            Class::Evaluation.targets(),
            at("2027-01-01T00:00:00Z"),
        );
        assert!(eval.in_policy());
    }

    #[test]
    fn a_slow_restore_misses_the_rto() {
        let env: EnvName = "prod".parse().unwrap();
        let evidence = Evidence {
            newest_snapshot: Some((at("2026-01-01T00:00:00Z"), 1)),
            newest_passing_drill: Some((
                at("2026-01-01T00:00:00Z"),
                2,
                Some(Duration::from_secs(3600)),
            )),
            ..Evidence::default()
        };
        let p = evaluate(
            &env,
            &evidence,
            Class::MultiTenant.targets(),
            at("2026-01-01T00:01:00Z"),
        );
        let missed: Vec<_> = p.findings.iter().map(|f| f.target).collect();
        assert_eq!(missed, ["rto"]);
        assert!("multi-tenant".parse::<Class>().is_ok());
        assert!("huge".parse::<Class>().is_err());
    }
}
