//! The evidence that restores work, as the log records it: snapshot and
//! drill entries sent to the registry, read back and listed, each opened
//! against the signed checkpoint it came with when a log key is known. The
//! `snapshot`, `drill` and `snapshot-tag` commands share these.
//!
//! A snapshot entry says a backup exists and which artifact goes with it; a
//! drill entry says a restore was tested, how long it took and what the
//! checks found. The registry pairs both with the pin live at their
//! instant, and the log's rules check that pairing, so neither can name
//! another artifact than the timeline does.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use stackpin_core::entry::{DrillEntry, Entry, SnapshotEntry};
use stackpin_core::ids::EnvName;
use stackpin_core::posture::human;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::reader::{Anchor, HOW_TO_TRUST, Reader};
use crate::view::Format;

/// A snapshot entry as one line.
pub fn snapshot_line(s: &SnapshotEntry) -> String {
    let mut line = format!(
        "snapshot {} {} at {} -> #{} {} ({})",
        s.env, s.driver, s.db_time, s.live.seq, s.live.release_id, s.location
    );
    if let Some(p) = &s.db_position {
        line.push_str(&format!(", db {p}"));
    }
    if let Some(size) = s.size {
        line.push_str(&format!(", {size} bytes"));
    }
    line
}

/// A drill entry as one line.
pub fn drill_line(d: &DrillEntry) -> String {
    let verdict = if d.passed { "PASSED" } else { "FAILED" };
    let mut line = format!(
        "drill {} {verdict} {} to {} with #{} {}",
        d.env, d.driver, d.target, d.live.seq, d.live.release_id
    );
    if let Some(rto) = d.rto_millis {
        line.push_str(&format!(
            ", restored in {}",
            human(Duration::from_millis(rto))
        ));
    }
    let passed = d.checks.iter().filter(|c| c.passed).count();
    line.push_str(&format!(
        ", {passed}/{} checks passed, by {}",
        d.checks.len(),
        d.actor
    ));
    if let Some(f) = &d.failure {
        line.push_str(&format!(": {f}"));
    }
    line
}

/// An entry the registry sent with its proof, checked against the signed
/// checkpoint it came with when a log key is known.
#[derive(Serialize)]
pub struct Shown {
    pub log_index: u64,
    /// Whether the entry was checked against a signed checkpoint.
    pub verified: bool,
    pub entry: Entry,
    /// The registry says the write was recorded before under this request
    /// id (shown only for writes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
}

fn open(anchor: &Anchor, proved: &pb::ProvedEntry) -> Outcome<Shown> {
    let proved = anchor.entry(proved, "entry")?;
    Ok(Shown {
        log_index: proved.index(),
        verified: anchor.verified,
        entry: proved.entry,
        replayed: None,
    })
}

pub(crate) fn checked(shown: &Shown) -> &'static str {
    if shown.verified {
        "verified"
    } else {
        "UNVERIFIED: no log key known; pass --log-key or run `stackpin trust add VKEY`"
    }
}

/// Sends a record request (with the run's request id, retried as pins
/// are) and opens the entry the registry answers with.
pub(crate) async fn send<M, F, Fut>(
    server: &crate::client::Connection,
    state: Option<&Path>,
    log_key: &crate::trust::LogKey,
    what: &str,
    env: &str,
    message: impl Fn(String) -> M,
    call: F,
) -> Outcome<Shown>
where
    M: Clone,
    F: Fn(crate::client::Client, tonic::Request<M>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::RecordedEntry>, tonic::Status>>,
{
    let reader = Reader::new(log_key, server, state, None)?;
    let client = crate::client::connect(server).await?;
    let id = server.request_id_for(what, env)?;
    let message = message(id.clone());
    let recorded = server
        .retrying(what, || {
            call(
                client.clone(),
                crate::client::Connection::request(&id, message.clone()),
            )
        })
        .await?
        .into_inner();
    let proved = recorded
        .entry
        .ok_or_else(|| Failure::verify("the registry answered without the entry"))?;
    let mut client = client;
    let anchor = reader.anchor(&mut client, &recorded.checkpoint).await?;
    let shown = open(&anchor, &proved)?;
    // The entry this request wrote (or, retried, wrote before): not an
    // older one that happens to look alike.
    if shown.entry.request_id() != Some(id.as_str()) {
        return Err(Failure::verify(format!(
            "log entry {} is not the one this request recorded (its request id differs)",
            shown.log_index
        )));
    }
    Ok(Shown {
        replayed: Some(recorded.replayed),
        ..shown
    })
}

/// Records a snapshot; the entry the registry wrote, opened.
pub async fn record_snapshot(
    server: &crate::client::Connection,
    state: Option<&Path>,
    log_key: &crate::trust::LogKey,
    message: pb::RecordSnapshotRequest,
) -> Outcome<Shown> {
    let (env, location) = (message.env.clone(), message.location.clone());
    let shown = send(
        server,
        state,
        log_key,
        "snapshot",
        &env,
        |request_id| pb::RecordSnapshotRequest {
            request_id,
            ..message.clone()
        },
        |mut c, r| async move { c.record_snapshot(r).await },
    )
    .await?;
    match &shown.entry {
        Entry::Snapshot(s) if s.env.as_str() == env && s.location == location => Ok(shown),
        _ => Err(Failure::verify(format!(
            "entry {} is not the snapshot asked for",
            shown.log_index
        ))),
    }
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// The environment whose records to list.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// At most this many (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct Listed {
    entries: Vec<Shown>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

pub(crate) async fn list(
    args: &ListArgs,
    kind: &str,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let page = client
        .list_evidence(pb::ListEvidenceRequest {
            env: args.env.to_string(),
            kind: kind.to_owned(),
            limit: args.limit,
            page_token: args.page_token.clone(),
        })
        .await?
        .into_inner();
    let anchor = crate::cmd::pins::anchored(&reader, &mut client, &page.checkpoint).await?;
    let mut entries = Vec::new();
    for proved in &page.entries {
        let shown = open(&anchor, proved)?;
        if shown.entry.kind() != kind || shown.entry.env() != Some(&args.env) {
            return Err(Failure::verify(format!(
                "entry {} is not a {kind} of {}",
                shown.log_index, args.env
            )));
        }
        entries.push(shown);
    }
    let listed = Listed {
        entries,
        next_page_token: page.next_page_token,
    };
    format.emit(&listed, || {
        let mut text = String::new();
        if listed.entries.is_empty() {
            text.push_str(&format!("no {kind} recorded for {}\n", args.env));
        }
        for e in &listed.entries {
            let line = match &e.entry {
                Entry::Snapshot(s) => snapshot_line(s),
                Entry::Drill(d) => drill_line(d),
                _ => String::new(),
            };
            text.push_str(&format!(
                "{line} (log index {}, {})\n",
                e.log_index,
                checked(e)
            ));
        }
        if !listed.next_page_token.is_empty() {
            text.push_str(&format!("more: --page-token {}\n", listed.next_page_token));
        }
        text
    });
    Ok(())
}

/// The snapshot entry at `index`, verified, which must be of `env`.
pub(crate) async fn snapshot_entry(
    server: &crate::client::Connection,
    state: Option<&Path>,
    log_key: &crate::trust::LogKey,
    index: u64,
    env: &EnvName,
) -> Outcome<SnapshotEntry> {
    let reader = Reader::new(log_key, server, state, None)?;
    if !reader.verifies() {
        return Err(Failure::invalid(format!(
            "--snapshot {index}: the snapshot restored from is read from the log and proved: \
             {HOW_TO_TRUST}"
        )));
    }
    let mut client = crate::client::connect(server).await?;
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner();
    if index >= cp.size {
        return Err(Failure::new(
            crate::exit::NOT_FOUND,
            anyhow::anyhow!("--snapshot {index}: the log has {} entries", cp.size),
        ));
    }
    let entry = client
        .get_entry(pb::GetEntryRequest { index })
        .await?
        .into_inner();
    let proof = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index,
            tree_size: cp.size,
        })
        .await?
        .into_inner();
    let anchor = reader.anchor(&mut client, &cp.note).await?;
    let shown = open(
        &anchor,
        &pb::ProvedEntry {
            index,
            entry: entry.entry,
            proof: proof.hashes,
        },
    )?;
    match shown.entry {
        Entry::Snapshot(s) if &s.env == env => Ok(s),
        Entry::Snapshot(s) => Err(Failure::invalid(format!(
            "--snapshot {index} is a snapshot of {}, not {env}",
            s.env
        ))),
        other => Err(Failure::invalid(format!(
            "--snapshot {index}: log entry {index} is a {}, not a snapshot",
            other.kind()
        ))),
    }
}
