//! `stackpin posture`: each environment's backups and drills against its
//! recovery targets (RPO, RTO, drill interval).
//!
//! The registry computes a report from its index; with a log key known the
//! CLI computes the same report again from the whole log, read and proved
//! against the checkpoint (every entry, so no pin, snapshot, drill or
//! environment can be left out), with the rule both share
//! (`stackpin_core::posture::gather` and `evaluate`). A figure of the
//! registry's report that differs is exit 5 naming it. The targets
//! themselves (class, RPO, RTO, drill interval) are the registry's
//! settings, not log facts, and are taken from its report.

use std::time::Duration;

use serde::Serialize;
use stackpin_core::ids::EnvName;
use stackpin_core::posture::human;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use std::collections::BTreeMap;

use stackpin_core::entry::Entry;
use stackpin_core::posture::{Class, DrillFact, SnapshotFact, Targets, evaluate, gather};

use crate::exit::{Failure, Outcome};
use crate::reader::Reader;
use crate::view::{Format, wire_time};

#[derive(clap::Args)]
pub struct PostureArgs {
    /// Only this environment [default: every environment with a pin].
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: Option<EnvName>,
    /// Judge as of this instant instead of now: only the pins activated
    /// and the snapshots and drills recorded by then count.
    #[arg(long, value_parser = crate::parse_time)]
    at: Option<Timestamp>,
    /// The log's key or policy: the report is computed again from the
    /// whole log, proved, and compared.
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct PostureView {
    /// Whether the figures were computed again from the proved log and
    /// found equal (a log key was known).
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
    #[serde(rename = "rpo_seconds")]
    rpo_secs: Option<u64>,
    #[serde(rename = "rto_seconds")]
    rto_secs: Option<u64>,
    #[serde(rename = "drill_interval_seconds")]
    drill_interval_secs: Option<u64>,
    #[serde(rename = "snapshot_age_seconds")]
    snapshot_age_secs: Option<u64>,
    #[serde(rename = "drill_age_seconds")]
    drill_age_secs: Option<u64>,
    measured_rto_millis: Option<u64>,
    last_drill_failed: bool,
    pins: u64,
    pins_with_position: u64,
    pins_without_snapshot: Vec<u64>,
    pins_without_snapshot_count: u64,
    /// Whether the latest pin records no runtime image (computed from the
    /// proved log; absent when it was not proved).
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_image_missing: Option<bool>,
    #[serde(skip)]
    imageless_seq: Option<u64>,
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
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let verified = reader.verifies();
    // A report and the log read after it may differ by what was committed
    // in between: a disagreement is asked about again, twice.
    let mut attempt = 0;
    let (report, proved) = loop {
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
        let received = Timestamp::now();
        if !verified {
            break (report, None);
        }
        match check_report(&reader, &mut client, args, &report, received).await? {
            Ok(all) => break (report, Some(all)),
            Err(_) if attempt < 2 => attempt += 1,
            Err(why) => return Err(Failure::verify(why)),
        }
    };
    // Computed here from the proved pins (the registry reports no such
    // figure): the latest pin as of the instant, and whether it records
    // the runtime image to start on its artifact.
    let latest_without_image = |env: &str| -> Option<Option<u64>> {
        let g = proved.as_ref()?.get(&env.parse::<EnvName>().ok()?)?;
        let (seq, (_, _, image)) = g
            .pins
            .iter()
            .enumerate()
            .rfind(|(_, (t, _, _))| args.at.is_none_or(|a| *t <= a))?;
        Some((!image).then_some(seq as u64 + 1))
    };
    let environments: Vec<EnvView> = report
        .environments
        .into_iter()
        .map(|e| EnvView {
            runtime_image_missing: latest_without_image(&e.env).map(|m| m.is_some()),
            imageless_seq: latest_without_image(&e.env).flatten(),
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
        verified,
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
            match (e.runtime_image_missing, e.imageless_seq) {
                (Some(true), Some(seq)) => text.push_str(&format!(
                    "  runtime image     NONE: the latest pin (#{seq}) records no ObjectOS image, \
                     so a restore cannot say which to start (pin with --runtime-image)\n"
                )),
                (Some(false), _) => {
                    text.push_str("  runtime image     recorded with the latest pin\n");
                }
                _ => {}
            }
            for f in &e.findings {
                text.push_str(&format!("  ! {f}\n"));
            }
        }
        if view.verified {
            text.push_str(
                "proved     every figure computed again from the whole log, proved against its \
                 checkpoint (targets are the registry's settings)\n",
            );
        } else {
            text.push_str(&reader.unverified_line());
        }
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
        )
        .after_result())
    }
}

/// How far the instant a report is judged at may lie from this machine's
/// clock when it arrives: the allowed clock skew and time for the answer.
const REPORT_CLOCK_SLACK: Duration =
    Duration::from_secs(stackpin_core::defaults::CLOCK_SKEW.as_secs() + 30);

/// What the log says of one environment, gathered while reading it.
#[derive(Default)]
struct Gathered {
    /// Activation instant, whether a position was recorded and whether a
    /// runtime image was, per pin in sequence order.
    pins: Vec<(Timestamp, bool, bool)>,
    snapshots: Vec<SnapshotFact>,
    /// In log order (reversed for [`gather`], which takes newest first).
    drills: Vec<DrillFact>,
}

impl Gathered {
    fn add(all: &mut BTreeMap<EnvName, Gathered>, index: u64, entry: Entry) {
        match entry {
            Entry::Pin(p) => all.entry(p.env).or_default().pins.push((
                p.activated_at,
                p.db_position.is_some(),
                p.runtime_image.is_some(),
            )),
            Entry::Snapshot(s) => all.entry(s.env).or_default().snapshots.push(SnapshotFact {
                seq: s.live.seq,
                db_time: s.db_time,
                recorded_at: s.recorded_at,
                index,
            }),
            Entry::Drill(d) => all.entry(d.env).or_default().drills.push(DrillFact {
                recorded_at: d.recorded_at,
                passed: d.passed,
                index,
                rto_millis: d.rto_millis,
            }),
            Entry::Publish(_) | Entry::Key(_) | Entry::Promotion(_) => {}
        }
    }
}

/// Computes the report again from the whole log, proved, and compares it
/// with the registry's, field by field: `Some(why)` when they differ.
async fn check_report(
    reader: &Reader,
    client: &mut crate::client::Client,
    args: &PostureArgs,
    report: &pb::GetPostureResponse,
    received: Timestamp,
) -> Outcome<Result<BTreeMap<EnvName, Gathered>, String>> {
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .note;
    let anchor = reader.anchor(client, &note).await?;
    let mut all: BTreeMap<EnvName, Gathered> = BTreeMap::new();
    if anchor.checkpoint.size > 0 {
        let first = anchor.fetch(client, 0).await?;
        Gathered::add(&mut all, 0, first.entry.clone());
        anchor
            .scan(client, &first, "proving the log", |index, entry| {
                Gathered::add(&mut all, index, entry);
            })
            .await?;
    }
    let at = report
        .at
        .as_ref()
        .and_then(|t| Timestamp::from_parts(t.seconds, t.nanos).ok())
        .ok_or_else(|| Failure::verify("the posture report carries no instant"))?;
    match args.at {
        Some(asked) if asked != at => {
            return Err(Failure::verify(format!(
                "asked for the posture at {asked}, the report is at {at}"
            )));
        }
        // Judged "now": by the registry's clock, which may differ from
        // this machine's by the allowed skew (and the answer's travel);
        // an instant chosen to make old backups look new is refused.
        None if (received.as_micros() - at.as_micros()).abs()
            > stackpin_core::live::micros(REPORT_CLOCK_SLACK) =>
        {
            return Err(Failure::verify(format!(
                "the report judges as of {at}, but it is {received} here: more than {}s apart",
                REPORT_CLOCK_SLACK.as_secs()
            )));
        }
        _ => {}
    }
    let counted = |g: &Gathered| {
        let live: Vec<_> = g
            .pins
            .iter()
            .filter(|(t, _, _)| args.at.is_none_or(|a| *t <= a))
            .collect();
        (
            live.len() as u64,
            live.iter().filter(|(_, p, _)| *p).count() as u64,
        )
    };
    // Which environments the report must hold.
    let expected: Vec<&EnvName> = match &args.env {
        Some(e) => vec![e],
        None => all
            .iter()
            .filter(|(_, g)| counted(g).0 > 0)
            .map(|(e, _)| e)
            .collect(),
    };
    let named: Vec<&str> = report.environments.iter().map(|e| e.env.as_str()).collect();
    if named != expected.iter().map(|e| e.as_str()).collect::<Vec<_>>() {
        return Ok(Err(format!(
            "the report covers {named:?}, but the log has pins in {:?}",
            expected.iter().map(|e| e.as_str()).collect::<Vec<_>>()
        )));
    }
    let empty = Gathered::default();
    for (e, env) in report.environments.iter().zip(expected) {
        let g = all.get(env).unwrap_or(&empty);
        let (pins, positioned) = counted(g);
        let evidence = gather(
            pins,
            positioned,
            g.snapshots.iter().copied(),
            g.drills.iter().rev().copied(),
            args.at,
        );
        let class = e
            .class
            .parse::<Class>()
            .map_err(|err| Failure::verify(format!("the report's class of {}: {err}", e.env)))?;
        let targets = Targets {
            class,
            rpo: e.rpo_secs.map(Duration::from_secs),
            rto: e.rto_secs.map(Duration::from_secs),
            drill_interval: e.drill_interval_secs.map(Duration::from_secs),
        };
        let p = evaluate(env, &evidence, targets, at);
        let findings: Vec<&str> = p.findings.iter().map(|f| f.message.as_str()).collect();
        let reported: Vec<&str> = e.findings.iter().map(|f| f.message.as_str()).collect();
        let differs = [
            ("pins", e.pins != p.pins),
            (
                "pins_with_position",
                e.pins_with_position != p.pins_with_position,
            ),
            (
                "snapshot_age_secs",
                e.snapshot_age_secs != p.snapshot_age_secs,
            ),
            (
                "newest_snapshot_index",
                e.newest_snapshot_index != p.newest_snapshot_index,
            ),
            ("drill_age_secs", e.drill_age_secs != p.drill_age_secs),
            (
                "newest_passing_drill_index",
                e.newest_passing_drill_index != p.newest_passing_drill_index,
            ),
            (
                "measured_rto_millis",
                e.measured_rto_millis != p.measured_rto_millis,
            ),
            (
                "last_drill_failed",
                e.last_drill_failed != p.last_drill_failed,
            ),
            (
                "pins_without_snapshot",
                e.pins_without_snapshot != p.pins_without_snapshot,
            ),
            (
                "pins_without_snapshot_count",
                e.pins_without_snapshot_count != p.pins_without_snapshot_count,
            ),
            ("findings", reported != findings),
        ];
        if let Some((field, _)) = differs.iter().find(|(_, d)| *d) {
            return Ok(Err(format!(
                "the report's `{field}` for {} disagrees with the proved log",
                e.env
            )));
        }
    }
    Ok(Ok(all))
}
