//! `stackpin posture`: each environment's backups and drills against its
//! recovery targets (RPO, RTO, drill interval).

use std::time::Duration;

use serde::Serialize;
use stackpin_core::ids::EnvName;
use stackpin_core::posture::human;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::view::{Format, wire_time};

#[derive(clap::Args)]
pub struct PostureArgs {
    /// Only this environment [default: every environment with a pin].
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: Option<EnvName>,
    /// Judge as of this instant instead of now: only the pins activated
    /// and the snapshots and drills recorded by then count.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    at: Option<Timestamp>,
}

#[derive(Serialize)]
struct PostureView {
    /// Always false: the figures are the registry's report, computed from
    /// its index; the CLI does not prove them (README: What the CLI proves).
    verified: bool,
    at: String,
    in_policy: bool,
    environments: Vec<EnvView>,
}

#[derive(Serialize)]
struct EnvView {
    env: String,
    class: String,
    in_policy: bool,
    rpo_secs: Option<u64>,
    rto_secs: Option<u64>,
    drill_interval_secs: Option<u64>,
    snapshot_age_secs: Option<u64>,
    drill_age_secs: Option<u64>,
    measured_rto_millis: Option<u64>,
    last_drill_failed: bool,
    pins: u64,
    pins_with_position: u64,
    pins_without_snapshot: Vec<u64>,
    pins_without_snapshot_count: u64,
    findings: Vec<String>,
}

fn age_against(age: Option<u64>, target: Option<u64>) -> String {
    let shown = age.map_or_else(
        || "none".to_owned(),
        |a| format!("{} old", human(Duration::from_secs(a))),
    );
    match target {
        Some(t) => format!("{shown} (target {})", human(Duration::from_secs(t))),
        None => format!("{shown} (best effort)"),
    }
}

pub async fn posture(
    args: &PostureArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let report = client
        .get_posture(pb::GetPostureRequest {
            env: args
                .env
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            at: args.at.map(wire_time),
        })
        .await?
        .into_inner();
    let environments: Vec<EnvView> = report
        .environments
        .into_iter()
        .map(|e| EnvView {
            in_policy: e.findings.is_empty(),
            env: e.env,
            class: e.class,
            rpo_secs: e.rpo_secs,
            rto_secs: e.rto_secs,
            drill_interval_secs: e.drill_interval_secs,
            snapshot_age_secs: e.snapshot_age_secs,
            drill_age_secs: e.drill_age_secs,
            measured_rto_millis: e.measured_rto_millis,
            last_drill_failed: e.last_drill_failed,
            pins: e.pins,
            pins_with_position: e.pins_with_position,
            pins_without_snapshot: e.pins_without_snapshot,
            pins_without_snapshot_count: e.pins_without_snapshot_count,
            findings: e.findings.into_iter().map(|f| f.message).collect(),
        })
        .collect();
    let view = PostureView {
        verified: false,
        at: crate::view::time(report.at.as_ref()),
        in_policy: environments.iter().all(|e| e.in_policy),
        environments,
    };
    format.emit(&view, || {
        let mut text = format!("recovery posture at {}\n", view.at);
        if view.environments.is_empty() {
            text.push_str(if args.at.is_some() {
                "no environment had a pin by then\n"
            } else {
                "no environment has a pin yet\n"
            });
        }
        for e in &view.environments {
            text.push_str(&format!(
                "\n{} ({}): {}\n",
                e.env,
                e.class,
                if e.in_policy {
                    "in policy"
                } else {
                    "OUT OF POLICY"
                }
            ));
            text.push_str(&format!(
                "  newest snapshot   {}\n",
                age_against(e.snapshot_age_secs, e.rpo_secs)
            ));
            text.push_str(&format!(
                "  newest drill      {}{}\n",
                age_against(e.drill_age_secs, e.drill_interval_secs),
                if e.last_drill_failed {
                    "; the latest drill FAILED"
                } else {
                    ""
                }
            ));
            let rto = e.measured_rto_millis.map_or_else(
                || "not measured".to_owned(),
                |m| human(Duration::from_millis(m)),
            );
            let target = e.rto_secs.map_or_else(
                || "best effort".to_owned(),
                |t| format!("target {}", human(Duration::from_secs(t))),
            );
            text.push_str(&format!("  restore time      {rto} ({target})\n"));
            text.push_str(&format!(
                "  pins with a DB position  {} of {}\n",
                e.pins_with_position, e.pins
            ));
            if e.pins_without_snapshot_count > 0 {
                let list: Vec<String> = e
                    .pins_without_snapshot
                    .iter()
                    .map(|s| format!("#{s}"))
                    .collect();
                text.push_str(&format!(
                    "  pins without a snapshot  {} ({}{})\n",
                    e.pins_without_snapshot_count,
                    list.join(" "),
                    if e.pins_without_snapshot_count > list.len() as u64 {
                        " and older"
                    } else {
                        ""
                    }
                ));
            }
            for f in &e.findings {
                text.push_str(&format!("  ! {f}\n"));
            }
        }
        text.push_str(
            "UNVERIFIED the figures above are the registry's own report, not proved by this CLI \
             (`stackpin snapshot list` and `drill list` prove the entries they rest on)\n",
        );
        text
    });
    if view.in_policy {
        Ok(())
    } else {
        let out: Vec<&str> = view
            .environments
            .iter()
            .filter(|e| !e.in_policy)
            .map(|e| e.env.as_str())
            .collect();
        Err(Failure::new(
            crate::exit::OUT_OF_POLICY,
            anyhow::anyhow!("out of policy: {}", out.join(", ")),
        ))
    }
}
