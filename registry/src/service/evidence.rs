//! The evidence RPCs: recording snapshots and drills, listing them, and
//! the posture they add up to.

use stackpin_core::entry::{DrillCheck, DrillStep, Driver};
use stackpin_core::posture::Posture;
use stackpin_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{RegistryService, convert, env};
use crate::auth::Action;
use crate::digest::Digest;
use crate::error::Error;
use crate::registry::{DrillRequest, SnapshotRequest};

fn driver(text: &str) -> Result<Driver, Status> {
    Ok(text.parse::<Driver>().map_err(Error::from)?)
}

fn secs(d: Option<std::time::Duration>) -> Option<u64> {
    d.map(|d| d.as_secs())
}

fn env_posture(p: &Posture) -> pb::EnvPosture {
    pb::EnvPosture {
        env: p.env.to_string(),
        class: p.targets.class.to_string(),
        rpo_secs: secs(p.targets.rpo),
        rto_secs: secs(p.targets.rto),
        drill_interval_secs: secs(p.targets.drill_interval),
        snapshot_age_secs: p.snapshot_age_secs,
        newest_snapshot_index: p.newest_snapshot_index,
        drill_age_secs: p.drill_age_secs,
        newest_passing_drill_index: p.newest_passing_drill_index,
        measured_rto_millis: p.measured_rto_millis,
        last_drill_failed: p.last_drill_failed,
        pins: p.pins,
        pins_with_position: p.pins_with_position,
        pins_without_snapshot: p.pins_without_snapshot.clone(),
        pins_without_snapshot_count: p.pins_without_snapshot_count,
        findings: p
            .findings
            .iter()
            .map(|f| pb::PostureFinding {
                target: f.target.to_owned(),
                message: f.message.clone(),
            })
            .collect(),
    }
}

impl RegistryService {
    /// The entry at `index`, proved in a stored checkpoint covering it.
    async fn recorded(&self, (index, replayed): (u64, bool)) -> Result<pb::RecordedEntry, Status> {
        let cp = self.registry.checkpoint_covering(index + 1).await?;
        let entry = self.registry.entry(index).await?;
        let proof = self.registry.inclusion_proof(index, cp.size)?;
        Ok(pb::RecordedEntry {
            entry: Some(pb::ProvedEntry {
                index,
                entry,
                proof: convert::hashes(&proof),
            }),
            checkpoint: cp.note.to_string(),
            replayed,
        })
    }

    pub(super) async fn record_snapshot_inner(
        &self,
        request: Request<pb::RecordSnapshotRequest>,
    ) -> Result<Response<pb::RecordedEntry>, Status> {
        self.authorize(&request, Action::PinAnywhere)?;
        let env = env(&request.get_ref().env)?;
        let who = self.authorize(&request, Action::Pin(&env))?;
        let req = request.into_inner();
        let sha256 = match req.sha256.as_str() {
            "" => None,
            d => Some(d.parse::<Digest>().map_err(Error::from)?),
        };
        let snapshot = SnapshotRequest {
            env,
            driver: driver(&req.driver)?,
            location: req.location,
            db_time: convert::optional_time("db_time", req.db_time)?,
            db_position: convert::db_position(req.db_position)?,
            size: req.size,
            sha256,
        };
        let index = self
            .registry
            .record_snapshot(snapshot, &who.name, Some(&req.request_id))
            .await?;
        Ok(Response::new(self.recorded(index).await?))
    }

    pub(super) async fn record_drill_inner(
        &self,
        request: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::RecordedEntry>, Status> {
        self.authorize(&request, Action::PinAnywhere)?;
        let env = env(&request.get_ref().env)?;
        let who = self.authorize(&request, Action::Pin(&env))?;
        let req = request.into_inner();
        let target = convert::optional_time("target", req.target)?
            .ok_or_else(|| Error::invalid("a drill needs its target instant"))?;
        let started_at = convert::optional_time("started_at", req.started_at)?
            .ok_or_else(|| Error::invalid("a drill needs the instant it started"))?;
        let drill = DrillRequest {
            env,
            driver: driver(&req.driver)?,
            snapshot: req.snapshot,
            target,
            checks: req
                .checks
                .into_iter()
                .map(|c| DrillCheck {
                    name: c.name,
                    passed: c.passed,
                    detail: c.detail,
                })
                .collect(),
            steps: req
                .steps
                .into_iter()
                .map(|s| DrillStep {
                    name: s.name,
                    millis: s.millis,
                })
                .collect(),
            rto_millis: req.rto_millis,
            rpo_millis: req.rpo_millis,
            passed: req.passed,
            failure: Some(req.failure).filter(|f| !f.is_empty()),
            started_at,
        };
        let index = self
            .registry
            .record_drill(drill, &who.name, Some(&req.request_id))
            .await?;
        Ok(Response::new(self.recorded(index).await?))
    }

    pub(super) async fn list_evidence_inner(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let env = env(&req.env)?;
        let drills = match req.kind.as_str() {
            "snapshot" => false,
            "drill" => true,
            other => {
                return Err(Error::invalid(format!(
                    "kind {other:?} is neither \"snapshot\" nor \"drill\""
                ))
                .into());
            }
        };
        let limit = match req.limit as usize {
            0 => crate::registry::DEFAULT_PAGE,
            n => n.min(crate::registry::MAX_PAGE),
        };
        let before = convert::page_token::<u64>(&req.page_token)?;
        let indices = self
            .read(move |r| r.evidence_page(&env, drills, before, limit + 1))
            .await?;
        let newest = indices.iter().take(limit).max().map_or(0, |i| i + 1);
        let cp = self.registry.checkpoint_covering(newest).await?;
        let more = indices.len() > limit;
        let mut entries = Vec::new();
        for &index in indices.iter().take(limit) {
            if index >= cp.size {
                continue;
            }
            let entry = self.registry.entry(index).await?;
            let size = cp.size;
            let proof = self.read(move |r| r.inclusion_proof(index, size)).await?;
            entries.push(pb::ProvedEntry {
                index,
                entry,
                proof: convert::hashes(&proof),
            });
        }
        let next = if more {
            entries.last().map(|e| e.index.to_string())
        } else {
            None
        };
        Ok(Response::new(pb::ListEvidenceResponse {
            entries,
            checkpoint: cp.note.to_string(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    pub(super) async fn get_posture_inner(
        &self,
        request: Request<pb::GetPostureRequest>,
    ) -> Result<Response<pb::GetPostureResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let env = match req.env.as_str() {
            "" => None,
            e => Some(env(e)?),
        };
        let at = convert::optional_time("at", req.at)?.unwrap_or_else(crate::time::Timestamp::now);
        let report = self
            .read(move |r| r.posture(env.as_ref(), Some(at)))
            .await?;
        Ok(Response::new(pb::GetPostureResponse {
            at: Some(convert::timestamp(at)),
            environments: report.iter().map(env_posture).collect(),
        }))
    }
}
