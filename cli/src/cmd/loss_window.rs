//! `stackpin loss-window OLD NEW`: after a promotion, what the old primary
//! wrote that the promoted log does not hold, by request id, so a pipeline
//! can record it again.
//!
//! Both logs are read with no registry running (a folder or a bucket each)
//! and checked whole against their signed checkpoints. The promotion entry
//! in NEW names the previous epoch's checkpoint it began after (size N);
//! OLD must be that epoch, and its first N entries must lead to that
//! checkpoint's root. Its entries from N on are the loss window: those
//! under OLD's signed checkpoint, and those its objects hold past it (a
//! writer killed before it stored its next checkpoint had acknowledged
//! them; they are listed as unsigned).

use serde::Serialize;
use stackpin_core::entry::Entry;

use crate::exit::{Failure, Outcome};
use crate::offline::{OfflineLog, read_entries};
use crate::place::{Place, StoreArgs};
use crate::view::Format;

#[derive(clap::Args)]
pub struct LossWindowArgs {
    /// The old primary's storage, once it is reachable again: a folder,
    /// s3://bucket/prefix or az://container/prefix.
    old: String,
    /// The promoted log's storage.
    new: String,
    /// The endpoint of OLD's bucket, when it is not the one --s3-endpoint
    /// or --azure-endpoint names (the old region's server).
    #[arg(long, value_name = "URL")]
    old_endpoint: Option<String>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
    #[command(flatten)]
    store: StoreArgs,
}

/// One entry of the loss window.
#[derive(Serialize)]
struct Lost {
    index: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    release_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    /// Whether the old log's signed checkpoint covers it.
    signed: bool,
}

#[derive(Serialize)]
struct Window {
    old: String,
    new: String,
    /// The epoch the promotion began, its log index (the previous epoch's
    /// size it began after) and the old log's signed size.
    epoch: u64,
    promotion_index: u64,
    old_signed_size: u64,
    entries: Vec<Lost>,
}

pub async fn run(args: &LossWindowArgs, format: Format) -> Outcome {
    let key = crate::trust::log_key(&args.log_key)?;
    let new = Place::parse(&args.new, &args.store)?;
    let old = Place::parse_at(&args.old, &args.store, args.old_endpoint.as_deref())?;
    // The promoted log under the policy, when one is given; the old one
    // by its key alone (what it signed after the promotion has no quorum,
    // and is what is listed).
    let promoted = OfflineLog::open(&new, &key, &|note| args.log_key.check_quorum(note)).await?;
    let old_log = OfflineLog::open(&old, &key, &|_| Ok(())).await?;
    // The promotion that began after the old log's epoch.
    let old_epoch = old_log.checkpoint.epoch();
    let mut found = None;
    for (index, entry) in promoted.all() {
        if let Entry::Promotion(p) = entry? {
            let previous = stackpin_core::note::Checkpoint::open(&p.previous, &key)
                .map_err(|e| Failure::verify(format!("the promotion at entry {index}: {e}")))?;
            if previous.epoch() == old_epoch {
                found = Some((index, p.epoch, previous));
            }
        }
    }
    let Some((at, epoch, previous)) = found else {
        return Err(Failure::invalid(format!(
            "{} holds no promotion from {} (epoch {old_epoch}): it is not that log's promoted \
             successor",
            new.name(),
            old_log.checkpoint.origin
        )));
    };
    if previous.origin != old_log.checkpoint.origin {
        return Err(Failure::verify(format!(
            "the promotion began after {}, but {} is {}",
            previous.origin,
            old.name(),
            old_log.checkpoint.origin
        )));
    }
    // The old log's first N entries are the ones the promotion kept.
    if old_log.root_at(previous.size) != Some(previous.root) {
        return Err(Failure::verify(format!(
            "the first {} entries of {} are not the ones the promotion began after: it is not the \
             old primary of {}",
            previous.size,
            old.name(),
            new.name()
        )));
    }
    let signed = old_log.checkpoint.size;
    // Entries in the old log's objects past its checkpoint: acknowledged,
    // perhaps, before a checkpoint was stored.
    let all = read_entries(&old, u64::MAX, |_| {}).await?;
    let mut entries = Vec::new();
    for (i, bytes) in all
        .iter()
        .enumerate()
        .skip(usize::try_from(previous.size).unwrap_or(usize::MAX))
    {
        let index = i as u64;
        let entry = Entry::parse(index, bytes).map_err(|e| Failure::verify(e.to_string()))?;
        let release_id = match &entry {
            Entry::Pin(p) => Some(p.release_id.to_string()),
            Entry::Publish(p) => Some(p.release_id.to_string()),
            Entry::Snapshot(s) => Some(s.live.release_id.to_string()),
            Entry::Drill(d) => Some(d.live.release_id.to_string()),
            Entry::Key(_) | Entry::Promotion(_) => None,
        };
        entries.push(Lost {
            index,
            kind: entry.kind(),
            env: entry.env().map(ToString::to_string),
            release_id,
            // Past the old log's signed checkpoint, nothing vouches for
            // the text: shown, never printed raw.
            request_id: entry.request_id().map(|id| {
                if index < signed {
                    id.to_owned()
                } else {
                    stackpin_core::error::shown(id)
                }
            }),
            signed: index < signed,
        });
    }
    let window = Window {
        old: old.name(),
        new: new.name(),
        epoch,
        promotion_index: at,
        old_signed_size: signed,
        entries,
    };
    format.emit(&window, || {
        let mut out = format!(
            "loss window: {} entr{} of {} past entry {} that the promoted log (epoch {epoch}, {}) \
             does not hold\n",
            window.entries.len(),
            if window.entries.len() == 1 {
                "y"
            } else {
                "ies"
            },
            window.old,
            window.promotion_index,
            window.new
        );
        for e in &window.entries {
            out.push_str(&format!(
                "  #{} {}{}{} request id {}{}\n",
                e.index,
                e.kind,
                e.env
                    .as_deref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                e.release_id
                    .as_deref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                e.request_id.as_deref().unwrap_or("(none recorded)"),
                if e.signed {
                    ""
                } else {
                    " (past the old log's signed checkpoint)"
                }
            ));
        }
        if !window.entries.is_empty() {
            out.push_str(
                "record them again on the promoted registry (a pin with its own --request-id is \
                 recorded once)\n",
            );
        }
        out
    });
    Ok(())
}
