//! `stackpin resolve`: which pin was live in an environment at an instant
//! or database position, proved; the same question `restore` asks.

use std::time::Duration;

use serde::Serialize;
use stackpin_core::entry::{Entry, PinEntry};
use stackpin_core::ids::EnvName;
use stackpin_core::live;
use stackpin_core::position::DbPosition;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::cmd::pins::wire_position;
use crate::exit::{Failure, Outcome};
use crate::reader::{Anchor, Proved, Reader, check_pin};
use crate::view::{BoundaryView, Format, PinView, ResolveView, wire_time};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["at", "db_lsn", "litestream_txid", "db_oplog_ts"])))]
pub struct ResolveArgs {
    /// The environment.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    pub env: EnvName,
    /// The instant (RFC 3339 with offset), e.g. the database restore time.
    #[arg(long, value_parser = crate::parse_time)]
    pub at: Option<Timestamp>,
    /// Instead of a time: the PostgreSQL LSN the database is restored to
    /// (the pin with the greatest recorded LSN at or below it).
    #[arg(long, value_parser = crate::parse_with(DbPosition::lsn))]
    pub db_lsn: Option<DbPosition>,
    /// Instead of a time: the Litestream TXID the database is restored to.
    #[arg(long, value_parser = crate::parse_with(DbPosition::txid))]
    pub litestream_txid: Option<DbPosition>,
    /// Instead of a time: the MongoDB oplog timestamp the database is
    /// restored to, Timestamp(SECONDS, INCREMENT) or SECONDS:INCREMENT.
    #[arg(long, value_parser = crate::parse_with(DbPosition::oplog_ts))]
    pub db_oplog_ts: Option<DbPosition>,
    /// How close to a switch counts as ambiguous (e.g. 5s) [default: 2s].
    /// Sent with the question, so the registry's warning and the one the
    /// CLI checks it against use the same margin.
    #[arg(long, value_parser = stackpin_core::time::parse_duration)]
    pub margin: Option<Duration>,
    /// Have the replica catch up with the shared log before answering.
    #[arg(long)]
    pub fresh: bool,
}

impl ResolveArgs {
    /// A query for the pin live in `env` at `at`.
    pub fn at(env: EnvName, at: Timestamp) -> Self {
        Self {
            env,
            at: Some(at),
            db_lsn: None,
            litestream_txid: None,
            db_oplog_ts: None,
            margin: None,
            fresh: true,
        }
    }

    /// The position asked for, if the query is by position.
    pub fn position(&self) -> Option<&DbPosition> {
        self.db_lsn
            .as_ref()
            .or(self.litestream_txid.as_ref())
            .or(self.db_oplog_ts.as_ref())
    }

    /// What was asked, for messages: the instant or the position.
    pub fn target_text(&self) -> String {
        match (&self.at, self.position()) {
            (Some(at), _) => at.to_string(),
            (None, Some(p)) => p.to_string(),
            (None, None) => String::new(),
        }
    }
}

/// A resolve answer, proved: the entries every view of it is rendered
/// from.
pub struct Resolved {
    pub anchor: Anchor,
    pub pin: Proved,
    pub next: Option<Proved>,
    pub publish: Proved,
    pub view: ResolveView,
}

/// How often an answer whose checkpoint lacks the policy's quorum is asked
/// for again (a second apart): a checkpoint is cosigned about a second
/// after its commit.
const QUORUM_ATTEMPTS: u32 = 5;

/// Asks the registry which pin was live, and proves the answer; shared by
/// `resolve` and `restore`. With `patient`, an answer whose checkpoint
/// lacks the policy's quorum is asked for again a few times.
///
/// # Errors
/// The registry's errors; verification failed (exit 5) for an answer that
/// does not prove what it says.
pub async fn ask(
    client: &mut crate::client::Client,
    reader: &Reader,
    args: &ResolveArgs,
    fresh: bool,
    patient: bool,
) -> Outcome<Resolved> {
    let margin = args
        .margin
        .unwrap_or(stackpin_core::defaults::BOUNDARY_MARGIN);
    let mut attempt = 0;
    loop {
        let response = client
            .resolve(pb::ResolveRequest {
                env: args.env.to_string(),
                at: args.at.map(wire_time),
                position: args.position().map(wire_position),
                margin: Some(prost_types::Duration {
                    seconds: i64::try_from(margin.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(margin.subsec_nanos()).unwrap_or(0),
                }),
                fresh: args.fresh || fresh,
            })
            .await?
            .into_inner();
        let note = response
            .checkpoint
            .as_ref()
            .map(|c| c.note.clone())
            .ok_or_else(|| Failure::verify("the registry sent no checkpoint"))?;
        if patient && attempt < QUORUM_ATTEMPTS && reader.lacks_quorum(&note) {
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let anchor = reader.anchor(client, &note).await?;
        return prove(client, anchor, args, margin, &response).await;
    }
}

/// Checks a resolve answer against its checkpoint: the pin, its publish,
/// its neighbours and their links, that the pin answers the query, that
/// nothing after it was left out, and every convenience field.
async fn prove(
    client: &mut crate::client::Client,
    anchor: Anchor,
    args: &ResolveArgs,
    margin: Duration,
    r: &pb::ResolveResponse,
) -> Outcome<Resolved> {
    let pin = anchor.required(r.pin_entry.as_ref(), "pin entry")?;
    let p = pin.pin("pin entry")?.clone();
    if p.env != args.env {
        return Err(Failure::verify(format!(
            "asked about {}, the registry answered with pin #{} of {}",
            args.env, p.seq, p.env
        )));
    }
    let publish = anchor.required(r.publish_entry.as_ref(), "publish entry")?;
    match &publish.entry {
        Entry::Publish(e) if e.release_id == p.release_id && e.digest == p.digest => {}
        _ => {
            return Err(Failure::verify(format!(
                "the publish entry (log entry {}) is not the publish of {} {}",
                publish.index(),
                p.release_id,
                p.digest
            )));
        }
    }
    let next = r
        .next_entry
        .as_ref()
        .map(|e| anchor.entry(e, "next pin entry"))
        .transpose()?;
    if let Some(n) = &next {
        let n = n.pin("next pin entry")?;
        if n.env != p.env
            || Some(n.seq) != p.seq.checked_add(1)
            || n.prev_pin.as_deref() != Some(pin.leaf.hex().as_str())
        {
            return Err(Failure::verify(format!(
                "the next pin (#{} of {}) does not follow pin #{} of {}",
                n.seq, n.env, p.seq, p.env
            )));
        }
    }
    let prev = r
        .prev_entry
        .as_ref()
        .map(|e| anchor.entry(e, "previous pin entry"))
        .transpose()?;
    if let Some(proved) = &prev {
        let b = proved.pin("previous pin entry")?;
        if b.env != p.env
            || b.seq.checked_add(1) != Some(p.seq)
            || p.prev_pin.as_deref() != Some(proved.leaf.hex().as_str())
        {
            return Err(Failure::verify(format!(
                "the previous pin (#{} of {}) is not the one pin #{} of {} follows",
                b.seq, b.env, p.seq, p.env
            )));
        }
    }
    let next_pin = next.as_ref().map(|n| n.pin("next pin entry")).transpose()?;
    // The pin answers the query.
    if let Some(at) = args.at
        && (at < p.activated_at || next_pin.is_some_and(|n| at >= n.activated_at))
    {
        return Err(Failure::verify(format!(
            "the proved pin #{} of {} (live from {}{}) was not live at {at}",
            p.seq,
            p.env,
            p.activated_at,
            next_pin.map_or_else(String::new, |n| format!(" to {}", n.activated_at)),
        )));
    }
    let mut uncertain = None;
    if let Some(target) = args
        .position()
        .map(DbPosition::ordered)
        .transpose()?
        .flatten()
    {
        let ordered = |e: Option<&PinEntry>| -> Outcome<_> {
            Ok(e.and_then(|e| e.db_position.as_ref())
                .map(DbPosition::ordered)
                .transpose()?
                .flatten()
                .filter(|o| o.tag() == target.tag()))
        };
        let own = ordered(Some(&p))?;
        let after = ordered(next_pin)?;
        if own.is_none_or(|o| o.value() > target.value())
            || after.is_some_and(|n| n.value() <= target.value())
        {
            return Err(Failure::verify(format!(
                "the proved pin #{} does not match {} {target}",
                p.seq,
                target.kind()
            )));
        }
        if let (Some(n), None) = (next_pin, after) {
            uncertain = Some(format!(
                "the next pin #{} ({}) recorded no {}, so it or a later one may have been live \
                 at {target}",
                n.seq,
                n.release_id,
                target.kind()
            ));
        }
        if uncertain.is_some() == r.uncertain.is_empty() {
            return Err(Failure::verify(format!(
                "the answer's `uncertain` ({:?}) disagrees with the proved pins",
                r.uncertain
            )));
        }
    }
    // Still live: no later pin of the environment up to the checkpoint.
    if next.is_none()
        && let Some((index, later)) = anchor
            .after(client, &pin, |q| q.env == p.env)
            .await?
            .into_iter()
            .next()
    {
        return Err(Failure::verify(format!(
            "the registry answered that pin #{} ({}) of {} is still live, but the log holds pin \
             #{} ({}, activated {}) at index {index}: it left out the pin that replaced it",
            p.seq, p.release_id, p.env, later.seq, later.release_id, later.activated_at
        )));
    }
    // The near switch, from the proved pins and the margin sent.
    let mut near_switch = None;
    if let Some(at) = args.at {
        // The previous pin is needed when the switch that started the
        // interval is the nearest (the next one wins only when nearer).
        let next_nearer = next_pin.is_some_and(|n| {
            n.activated_at.as_micros() - at.as_micros()
                < at.as_micros() - p.activated_at.as_micros()
        });
        if prev.is_none()
            && p.seq > 1
            && live::near_start(at, p.activated_at, margin)
            && !next_nearer
        {
            return Err(Failure::verify(format!(
                "{at} is within {}s of the start of pin #{} of {}, but the registry left out the \
                 previous pin (`prev_entry`), so the switch cannot be shown",
                margin.as_secs_f64(),
                p.seq,
                p.env
            )));
        }
        let prev_pin = prev
            .as_ref()
            .map(|b| b.pin("previous pin entry"))
            .transpose()?;
        near_switch = live::near_switch(
            at,
            prev_pin.map(|b| b.activated_at),
            p.activated_at,
            next_pin.map(|n| n.activated_at),
            margin,
        );
        let (before, after) = match near_switch {
            Some(s) if s.to_next => (Some(&pin), next.as_ref()),
            Some(_) => (prev.as_ref(), Some(&pin)),
            None => (None, None),
        };
        let wire = r.near_switch.as_ref();
        match (wire, near_switch) {
            (None, None) => {}
            (Some(w), Some(s)) => {
                check_pin("near_switch.before", w.before.as_ref(), before)?;
                check_pin("near_switch.after", w.after.as_ref(), after)?;
                let offset = w.offset.as_ref().map(|d| {
                    d.seconds
                        .saturating_mul(1_000_000)
                        .saturating_add(i64::from(d.nanos / 1000))
                });
                if offset != Some(s.offset_micros) {
                    return Err(Failure::verify(
                        "the answer's `near_switch.offset` disagrees with the proved pins",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(Failure::verify(
                    "the answer's `near_switch` names a switch the proved pins do not put within \
                     the margin",
                ));
            }
            (None, Some(_)) => {
                return Err(Failure::verify(
                    "the answer leaves `near_switch` out, but the proved pins put a switch \
                     within the margin",
                ));
            }
        }
    }
    // Every convenience field says what the proved entries say.
    check_pin("pin", r.pin.as_ref(), Some(&pin))?;
    check_pin("next", r.next.as_ref(), next.as_ref())?;
    let wire = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| Timestamp::from_parts(t.seconds, t.nanos).ok())
    };
    if wire(r.live_from.as_ref()) != Some(p.activated_at) {
        return Err(Failure::verify(
            "the answer's `live_from` disagrees with the proved pin's activation",
        ));
    }
    if r.live_until.is_some() != next_pin.is_some()
        || next_pin.is_some_and(|n| wire(r.live_until.as_ref()) != Some(n.activated_at))
    {
        return Err(Failure::verify(
            "the answer's `live_until` disagrees with the proved next pin",
        ));
    }
    let view = ResolveView {
        env: args.env.to_string(),
        at: args.target_text(),
        pin: PinView::proved(&pin, "pin entry")?,
        live_from: p.activated_at.to_string(),
        live_until: next_pin.map(|n| n.activated_at.to_string()),
        next: next
            .as_ref()
            .map(|n| PinView::proved(n, "next pin entry"))
            .transpose()?,
        near_switch: match near_switch {
            Some(s) => {
                let (before, after) = if s.to_next {
                    (&pin, next.as_ref())
                } else {
                    (prev.as_ref().unwrap_or(&pin), Some(&pin))
                };
                Some(BoundaryView {
                    before: PinView::proved(before, "pin entry")?,
                    after: PinView::proved(after.unwrap_or(&pin), "pin entry")?,
                    offset_seconds: s.offset_micros as f64 / 1e6,
                })
            }
            None => None,
        },
        uncertain,
    };
    Ok(Resolved {
        anchor,
        pin,
        next,
        publish,
        view,
    })
}

#[derive(clap::Args)]
pub struct ResolveCmd {
    #[command(flatten)]
    query: ResolveArgs,
    /// The log's key or policy: the answer is proved against the signed
    /// checkpoint (signature, the policy's quorum, inclusion, and that
    /// nothing after the pin was left out) and the checkpoint's age shown.
    #[command(flatten)]
    log_key: crate::trust::LogKey,
    /// Refuse a checkpoint whose newest cosignature (by the witnesses of
    /// --policy) is older than this (e.g. 10m, 1h).
    #[arg(long, value_parser = stackpin_core::time::parse_duration, value_name = "DURATION")]
    max_age: Option<Duration>,
}

#[derive(Serialize)]
struct ResolvedView<'a> {
    #[serde(flatten)]
    resolution: &'a ResolveView,
    /// Whether the answer was proved against the log (a log key was known).
    verified: bool,
    /// The checkpoint the answer was proved in, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_size: Option<u64>,
    #[serde(flatten)]
    fresh: &'a crate::freshness::Freshness,
}

pub async fn resolve(
    args: &ResolveCmd,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, args.max_age)?;
    let mut client = crate::client::connect(server).await?;
    let resolved = ask(&mut client, &reader, &args.query, false, false).await?;
    let verified = resolved.anchor.verified;
    let out = ResolvedView {
        resolution: &resolved.view,
        verified,
        checkpoint_size: verified.then_some(resolved.anchor.checkpoint.size),
        fresh: &resolved.anchor.fresh,
    };
    format.emit(&out, || {
        let mut text = resolved.view.text();
        if verified {
            text.push_str(&format!(
                "log        proved in the checkpoint of size {}: signature, inclusion, {}\n",
                resolved.anchor.checkpoint.size,
                if resolved.next.is_some() {
                    "the successor's link"
                } else {
                    "no later pin of the environment"
                }
            ));
            text.push_str(&out.fresh.text());
        } else {
            text.push_str(&reader.unverified_line());
        }
        text
    });
    Ok(())
}
