//! Evidence that restores work: snapshot entries (a backup exists) and
//! drill entries (a restore was tested), each paired with the pin live at
//! its instant as this registry's timeline has it when the entry is
//! committed, and the recovery posture they add up to.

use stackpin_core::entry::{DrillCheck, DrillEntry, DrillStep, Driver, Live, SnapshotEntry};
use stackpin_core::posture::{self, Posture};
use stackpin_core::state::State as _;

use super::Registry;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::ids::EnvName;
use crate::log::Entry;
use crate::position::DbPosition;
use crate::time::Timestamp;

/// Longest snapshot location, check name or detail, and failure text.
const MAX_TEXT: usize = 4096;
/// Most checks and steps one drill records.
const MAX_ITEMS: usize = 256;

/// A backup to record: everything but the pair, which the registry finds.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRequest {
    pub env: EnvName,
    pub driver: Driver,
    pub location: String,
    /// Unset: the registry's clock at commit.
    pub db_time: Option<Timestamp>,
    pub db_position: Option<DbPosition>,
    pub size: Option<u64>,
    pub sha256: Option<Digest>,
}

/// A restore test to record: everything but the pair, which the registry
/// finds at `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillRequest {
    pub env: EnvName,
    pub driver: Driver,
    pub snapshot: Option<u64>,
    pub target: Timestamp,
    pub checks: Vec<DrillCheck>,
    pub steps: Vec<DrillStep>,
    pub rto_millis: Option<u64>,
    pub rpo_millis: Option<u64>,
    pub passed: bool,
    pub failure: Option<String>,
    pub started_at: Timestamp,
}

fn text(what: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TEXT {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; at most {MAX_TEXT}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{what} holds a control character")));
    }
    Ok(())
}

impl SnapshotRequest {
    fn check(&self) -> Result<()> {
        if self.location.trim().is_empty() {
            return Err(Error::invalid(
                "a snapshot needs its location (a URL or path where the backup is)",
            ));
        }
        text("the location", &self.location)
    }
}

impl DrillRequest {
    fn check(&self) -> Result<()> {
        if self.checks.len() > MAX_ITEMS || self.steps.len() > MAX_ITEMS {
            return Err(Error::invalid(format!(
                "a drill records at most {MAX_ITEMS} checks and {MAX_ITEMS} steps"
            )));
        }
        for c in &self.checks {
            if c.name.trim().is_empty() {
                return Err(Error::invalid("a drill check needs a name"));
            }
            text("a check name", &c.name)?;
            text("a check detail", &c.detail)?;
        }
        for s in &self.steps {
            text("a step name", &s.name)?;
        }
        if let Some(f) = &self.failure {
            text("the failure", f)?;
        }
        Ok(())
    }
}

/// The pin live in `env` at `at`, as the rules will check it.
fn live_at(view: &crate::committer::View<'_>, env: &EnvName, at: Timestamp) -> Result<Live> {
    view.live_at(env, at)?.ok_or_else(|| {
        Error::from(
            stackpin_core::state::Violation::NothingLive {
                index: 0,
                env: env.clone(),
                at,
            }
            .to_error(),
        )
    })
}

impl Registry {
    /// Records that a backup of `req.env` exists, paired with the pin live
    /// at its instant. A retry under the same request id returns the
    /// first entry.
    ///
    /// # Errors
    /// Invalid for a bad request; Precondition when nothing is live at the
    /// instant or it is in the future; Unavailable when storage fails.
    /// Refuses a backup or drill of an environment no pin names, with the
    /// nearest known names: it would pair with nothing, and a typo should
    /// say so rather than "nothing was live".
    fn known_for_evidence(&self, env: &EnvName) -> Result<()> {
        if self.shared.index.env_head(env)?.is_some() {
            return Ok(());
        }
        Err(Error::not_found(format!(
            "environment {env} has no pins{}: a backup or drill pairs with the artifact live \
             in its environment, so nothing was recorded",
            self.shared.near_envs(env)?
        )))
    }

    pub async fn record_snapshot(
        &self,
        req: SnapshotRequest,
        actor: &str,
        request: Option<&str>,
    ) -> Result<(u64, bool)> {
        req.check()?;
        self.known_for_evidence(&req.env)?;
        let same = |entry: &Entry| {
            matches!(entry, Entry::Snapshot(s)
                if s.env == req.env && s.driver == req.driver && s.location == req.location
                    && req.db_time.is_none_or(|t| t == s.db_time)
                    && s.db_position == req.db_position && s.size == req.size
                    && s.sha256 == req.sha256 && s.actor == actor)
        };
        let (r, actor2) = (req.clone(), actor.to_owned());
        let (index, replayed) = self
            .record_once(request, "a snapshot", same, move |view, now, id| {
                // The pair is whatever the timeline holds at commit.
                let at = r.db_time.unwrap_or(now);
                Ok(Entry::Snapshot(SnapshotEntry {
                    env: r.env.clone(),
                    driver: r.driver,
                    location: r.location.clone(),
                    db_time: at,
                    db_position: r.db_position.clone(),
                    size: r.size,
                    sha256: r.sha256,
                    live: live_at(view, &r.env, at)?,
                    recorded_at: now,
                    actor: actor2.clone(),
                    request_id: Some(id.to_owned()),
                }))
            })
            .await?;
        tracing::info!(env = %req.env, index, replayed, "snapshot recorded");
        Ok((index, replayed))
    }

    /// Records a restore test of `req.env`, paired with the pin live at its
    /// target. A retry under the same request id returns the first entry.
    ///
    /// # Errors
    /// Invalid for a bad request or a verdict that contradicts its checks;
    /// Precondition when nothing is live at the target; Unavailable when
    /// storage fails.
    pub async fn record_drill(
        &self,
        req: DrillRequest,
        actor: &str,
        request: Option<&str>,
    ) -> Result<(u64, bool)> {
        req.check()?;
        self.known_for_evidence(&req.env)?;
        let same = |entry: &Entry| {
            matches!(entry, Entry::Drill(d)
                if d.env == req.env && d.target == req.target && d.snapshot == req.snapshot
                    && d.checks == req.checks && d.passed == req.passed && d.actor == actor)
        };
        let (r, actor2) = (req.clone(), actor.to_owned());
        let (index, replayed) = self
            .record_once(request, "a drill", same, move |view, now, id| {
                Ok(Entry::Drill(DrillEntry {
                    env: r.env.clone(),
                    driver: r.driver,
                    snapshot: r.snapshot,
                    target: r.target,
                    live: live_at(view, &r.env, r.target)?,
                    checks: r.checks.clone(),
                    steps: r.steps.clone(),
                    rto_millis: r.rto_millis,
                    rpo_millis: r.rpo_millis,
                    passed: r.passed,
                    failure: r.failure.clone(),
                    started_at: r.started_at,
                    recorded_at: now,
                    actor: actor2.clone(),
                    request_id: Some(id.to_owned()),
                }))
            })
            .await?;
        tracing::info!(env = %req.env, index, passed = req.passed, replayed, "drill recorded");
        Ok((index, replayed))
    }

    /// The log indices of the snapshots (`drills` false) or drills of
    /// `env`, newest first, before index `before` (`None`: from the newest).
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn evidence_page(
        &self,
        env: &EnvName,
        drills: bool,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let before = before.unwrap_or(u64::MAX);
        let index = &self.shared.index;
        Ok(if drills {
            index
                .drills(env, before, limit)?
                .iter()
                .map(|r| r.at.index)
                .collect()
        } else {
            index
                .snapshots(env, before, limit)?
                .iter()
                .map(|r| r.at.index)
                .collect()
        })
    }

    /// The posture of `env` (or of every environment with a pin) as of
    /// `at` (default: now), against the configured targets.
    ///
    /// # Errors
    /// Internal when the index fails.
    pub fn posture(&self, env: Option<&EnvName>, at: Option<Timestamp>) -> Result<Vec<Posture>> {
        let now = at.unwrap_or_else(|| self.shared.clock.now());
        let policy = &self.shared.limits.posture;
        let index = &self.shared.index;
        let envs: Vec<EnvName> = match env {
            // A name with no pins is most likely mistyped: an alert job
            // must not pass on it.
            Some(e) => {
                self.shared.known_env(e)?;
                vec![e.clone()]
            }
            None => {
                let mut all = Vec::new();
                let mut after: Option<EnvName> = None;
                loop {
                    let page = index.env_heads(after.as_ref(), super::MAX_PAGE)?;
                    let Some((last, _)) = page.last() else { break };
                    after = Some(last.clone());
                    let full = page.len() == super::MAX_PAGE;
                    all.extend(page.into_iter().map(|(e, _)| e));
                    if !full {
                        break;
                    }
                }
                all
            }
        };
        let mut out = Vec::with_capacity(envs.len());
        for e in &envs {
            let evidence = index.evidence(e, at)?;
            // Judged as of an instant before its first pin, an environment
            // not named did not exist yet.
            if env.is_none() && evidence.pins == 0 {
                continue;
            }
            out.push(posture::evaluate(e, &evidence, policy.targets(e), now));
        }
        Ok(out)
    }
}
