//! `stackpin pin`, `resolve` and `history`: the timeline of an environment.

use std::time::Duration;

use serde::Serialize;
use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, Reason, ReleaseId};
use stackpin_core::position::DbPosition;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use stackpin_core::entry::{Entry, PinEntry};
use stackpin_core::live;

use crate::exit::{Failure, Outcome};
use crate::reader::{Anchor, Proved, Reader, check_pin};
use crate::view::{BoundaryView, Format, PinView, ResolveView, wire_time};

/// Names an artifact on the command line.
#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
pub struct ArtifactArg {
    /// The artifact's release id.
    #[arg(long, value_parser = crate::parse::<ReleaseId>)]
    pub release_id: Option<ReleaseId>,
    /// The artifact's digest, sha256:<hex>.
    #[arg(long, value_parser = crate::parse::<Digest>)]
    pub digest: Option<Digest>,
}

impl ArtifactArg {
    pub fn to_wire(&self) -> pb::ArtifactRef {
        let r = match (&self.release_id, &self.digest) {
            (Some(r), _) => pb::artifact_ref::Ref::ReleaseId(r.to_string()),
            (None, Some(d)) => pb::artifact_ref::Ref::Digest(d.to_string()),
            // clap requires exactly one of the two.
            (None, None) => pb::artifact_ref::Ref::ReleaseId(String::new()),
        };
        pb::ArtifactRef { r#ref: Some(r) }
    }
}

#[derive(clap::Args)]
pub struct PinArgs {
    /// The environment the artifact went live in.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    #[command(flatten)]
    artifact: ArtifactArg,
    /// When it went live (RFC 3339 with offset); default: now, by the
    /// registry's clock.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    activated_at: Option<Timestamp>,
    /// Why (recorded in the log).
    #[arg(long, default_value = "", value_parser = crate::parse::<Reason>)]
    reason: Reason,
    #[command(flatten)]
    position: PositionArgs,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

/// A database position recorded with a pin.
#[derive(clap::Args, Clone, Default)]
#[group(multiple = false)]
pub struct PositionArgs {
    /// The PostgreSQL LSN at activation (e.g. 0/16B3748; `SELECT pg_current_wal_lsn()`).
    #[arg(long, value_parser = crate::parse_with(DbPosition::lsn))]
    db_lsn: Option<DbPosition>,
    /// A PostgreSQL restore point created at activation (`pg_create_restore_point`).
    #[arg(long, value_parser = crate::parse_with(DbPosition::restore_point))]
    db_restore_point: Option<DbPosition>,
    /// The Litestream TXID at activation (hex).
    #[arg(long, value_parser = crate::parse_with(DbPosition::txid))]
    litestream_txid: Option<DbPosition>,
}

impl PositionArgs {
    pub fn position(&self) -> Option<&DbPosition> {
        self.db_lsn
            .as_ref()
            .or(self.db_restore_point.as_ref())
            .or(self.litestream_txid.as_ref())
    }
}

/// The wire form of a position.
pub fn wire_position(p: &DbPosition) -> pb::DbPosition {
    use pb::db_position::Position;
    pb::DbPosition {
        position: Some(match p {
            DbPosition::PostgresLsn { lsn } => Position::PostgresLsn(lsn.clone()),
            DbPosition::RestorePoint { name } => Position::RestorePoint(name.clone()),
            DbPosition::LitestreamTxid { txid } => Position::LitestreamTxid(txid.clone()),
        }),
    }
}

pub async fn pin(
    args: &PinArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let client = crate::client::connect(server).await?;
    let id = server.request_id()?;
    let message = pb::PinRequest {
        env: args.env.to_string(),
        artifact: Some(args.artifact.to_wire()),
        activated_at: args.activated_at.map(wire_time),
        reason: args.reason.as_str().to_owned(),
        db_position: args.position.position().map(wire_position),
        request_id: id.clone(),
    };
    // Retries carry the same request id: the registry records the pin once.
    let response = server
        .retrying("pin", || {
            let mut client = client.clone();
            let request = crate::client::Connection::request(&id, message.clone());
            async move { client.pin(request).await }
        })
        .await?
        .into_inner();
    let mut client = client;
    let anchor = anchored(&reader, &mut client, &response.checkpoint).await?;
    let proved = anchor.required(response.entry.as_ref(), "pin entry")?;
    check_pin("pin", response.pin.as_ref(), Some(&proved))?;
    let entry = proved.pin("pin entry")?;
    let asked = match (&args.artifact.release_id, &args.artifact.digest) {
        (Some(r), _) => entry.release_id == *r,
        (None, Some(d)) => entry.digest == *d,
        (None, None) => true,
    };
    if entry.env != args.env || !asked || entry.request_id.as_deref() != Some(id.as_str()) {
        return Err(Failure::verify(format!(
            "the registry answered with pin #{} of {} (release {}), which is not the pin asked for",
            entry.seq, entry.env, entry.release_id
        )));
    }
    let pin = PinView::proved(&proved, "pin entry")?;
    format.emit(&pin, || {
        format!(
            "pinned {} in {} as #{} from {}\ndigest     {}\nlog index  {}\n{}",
            pin.release_id,
            pin.env,
            pin.seq,
            pin.activated_at,
            pin.digest,
            pin.log_index,
            reader.unverified_line()
        )
    });
    Ok(())
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["at", "db_lsn", "litestream_txid"])))]
pub struct ResolveArgs {
    /// The environment.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    pub env: EnvName,
    /// The instant (RFC 3339 with offset), e.g. the database restore time.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    pub at: Option<Timestamp>,
    /// Instead of a time: the PostgreSQL LSN the database is restored to
    /// (the pin with the greatest recorded LSN at or below it).
    #[arg(long, value_parser = crate::parse_with(DbPosition::lsn))]
    pub db_lsn: Option<DbPosition>,
    /// Instead of a time: the Litestream TXID the database is restored to.
    #[arg(long, value_parser = crate::parse_with(DbPosition::txid))]
    pub litestream_txid: Option<DbPosition>,
    /// How close to a switch counts as ambiguous (e.g. 2s); default: the
    /// registry's setting.
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
            margin: None,
            fresh: true,
        }
    }

    /// The position asked for, if the query is by position.
    pub fn position(&self) -> Option<&DbPosition> {
        self.db_lsn.as_ref().or(self.litestream_txid.as_ref())
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
            || n.seq != p.seq + 1
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
            || b.seq + 1 != p.seq
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
        if prev.is_none() && p.seq > 1 && live::near_start(at, p.activated_at, margin) {
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
                let offset = w
                    .offset
                    .as_ref()
                    .map(|d| d.seconds.saturating_mul(1_000_000) + i64::from(d.nanos / 1000));
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
    fresh: &'a crate::trust::Freshness,
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

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// The environment.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// Only pins activated strictly before this instant.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    before: Option<Timestamp>,
    /// Only pins activated at or after this instant.
    #[arg(long, value_parser = crate::parse::<Timestamp>)]
    since: Option<Timestamp>,
    /// At most this many pins (newest first; at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct HistoryView {
    env: String,
    /// Whether every pin was proved against the log (a log key was known).
    verified: bool,
    pins: Vec<PinView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

pub async fn history(
    args: &HistoryArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let filter = server.request_id.clone().unwrap_or_default();
    let response = client
        .history(pb::HistoryRequest {
            env: args.env.to_string(),
            before: args.before.map(wire_time),
            since: args.since.map(wire_time),
            limit: args.limit,
            page_token: args.page_token.clone(),
            // `--request-id` here is a filter: the pin that request recorded.
            request_id: filter.clone(),
        })
        .await?
        .into_inner();
    let anchor = anchored(&reader, &mut client, &response.checkpoint).await?;
    let proved = proved_pins(&anchor, &response.pins, &response.entries, "pins")?;
    for (i, p) in proved.iter().enumerate() {
        let pin = p.pin("pins")?;
        let outside = pin.env != args.env
            || args.before.is_some_and(|b| pin.activated_at >= b)
            || args.since.is_some_and(|s| pin.activated_at < s);
        if outside {
            return Err(Failure::verify(format!(
                "the answer holds pin #{} of {} (activated {}), which the query excludes",
                pin.seq, pin.env, pin.activated_at
            )));
        }
        // Newest first, with nothing between: each pin links to the next.
        if let Some(older) = proved.get(i + 1) {
            let o = older.pin("pins")?;
            if o.seq + 1 != pin.seq || pin.prev_pin.as_deref() != Some(older.leaf.hex().as_str()) {
                return Err(Failure::verify(format!(
                    "pin #{} of {} does not follow pin #{} in the answer: pins were left out or \
                     reordered",
                    pin.seq, pin.env, o.seq
                )));
            }
        }
    }
    // The first page of the newest pins: none newer was left out.
    let head = args.before.is_none() && args.page_token.is_empty() && filter.is_empty();
    if head
        && let Some(newest) = proved.first()
        && let Some((index, later)) = anchor
            .after(&mut client, newest, |q| q.env == args.env)
            .await?
            .into_iter()
            .next()
    {
        return Err(Failure::verify(format!(
            "the answer's newest pin of {} is #{}, but the log holds pin #{} ({}) at index \
             {index}: newer pins were left out",
            args.env,
            newest.pin("pins")?.seq,
            later.seq,
            later.release_id
        )));
    }
    let view = HistoryView {
        env: args.env.to_string(),
        verified: anchor.verified,
        pins: proved
            .iter()
            .map(|p| PinView::proved(p, "pins"))
            .collect::<Outcome<_>>()?,
        next_page_token: response.next_page_token,
    };
    format.emit(&view, || {
        let mut out = String::new();
        for p in &view.pins {
            out.push_str(&p.line());
            out.push('\n');
        }
        if view.pins.is_empty() {
            out.push_str("no pins match\n");
        }
        if !view.next_page_token.is_empty() {
            out.push_str(&format!("more: --page-token {}\n", view.next_page_token));
        }
        out.push_str(&reader.unverified_line());
        out
    });
    Ok(())
}

/// Accepts the checkpoint a listing came with.
async fn anchored(
    reader: &Reader,
    client: &mut crate::client::Client,
    note: &str,
) -> Outcome<Anchor> {
    if note.is_empty() {
        return Err(Failure::verify(
            "the registry sent no checkpoint with its answer (a registry older than this CLI \
             cannot prove what it lists)",
        ));
    }
    reader.anchor(client, note).await
}

/// Proves the entries of a listing of pins and checks each against the
/// pin it lists (`field`).
fn proved_pins(
    anchor: &Anchor,
    pins: &[pb::Pin],
    entries: &[pb::ProvedEntry],
    field: &str,
) -> Outcome<Vec<Proved>> {
    if pins.len() != entries.len() {
        return Err(Failure::verify(format!(
            "the answer lists {} pins in `{field}` but proves {} entries",
            pins.len(),
            entries.len()
        )));
    }
    pins.iter()
        .zip(entries)
        .map(|(wire, e)| {
            let proved = anchor.entry(e, "pin entry")?;
            check_pin(field, Some(wire), Some(&proved))?;
            Ok(proved)
        })
        .collect()
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// At most this many environments (in name order; at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct EnvView {
    env: String,
    /// The latest pin: what is live now.
    live: PinView,
    pins: u64,
    /// Seconds since the latest pin was recorded (by this machine's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_since_last_pin: Option<i64>,
}

#[derive(Serialize)]
struct StatusView {
    /// Whether every pin was proved against the log (a log key was known).
    verified: bool,
    environments: Vec<EnvView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

/// `3d 4h`, `2h 5m`, `40s`: a rough age for people.
fn age_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

pub async fn status(
    args: &StatusArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let response = client
        .list_environments(pb::ListEnvironmentsRequest {
            limit: args.limit,
            page_token: args.page_token.clone(),
        })
        .await?
        .into_inner();
    let anchor = anchored(&reader, &mut client, &response.checkpoint).await?;
    let latest: Vec<pb::Pin> = response
        .environments
        .iter()
        .map(|e| {
            e.latest.clone().ok_or_else(|| {
                Failure::verify(format!("the answer names {} with no latest pin", e.env))
            })
        })
        .collect::<Outcome<_>>()?;
    let proved = proved_pins(&anchor, &latest, &response.entries, "latest")?;
    let mut heads = std::collections::HashMap::new();
    for (e, p) in response.environments.iter().zip(&proved) {
        let pin = p.pin("latest")?;
        if pin.env.as_str() != e.env || heads.insert(pin.env.clone(), p.index()).is_some() {
            return Err(Failure::verify(format!(
                "the answer lists {} with pin #{} of {}",
                e.env, pin.seq, pin.env
            )));
        }
    }
    // Live now: no later pin of any listed environment up to the
    // checkpoint, read once from the oldest of the latest pins.
    if let Some(oldest) = proved.iter().min_by_key(|p| p.index())
        && let Some((index, later)) = anchor
            .after(&mut client, oldest, |q| heads.contains_key(&q.env))
            .await?
            .into_iter()
            .find(|(index, q)| heads.get(&q.env).is_some_and(|head| index > head))
    {
        return Err(Failure::verify(format!(
            "the answer says the latest pin of {} is the one at log index {}, but the log holds \
             pin #{} ({}) at index {index}: what is live now was misreported",
            later.env, heads[&later.env], later.seq, later.release_id
        )));
    }
    let now = Timestamp::now();
    let environments = proved
        .iter()
        .map(|p| {
            let pin = p.pin("latest")?;
            Ok(EnvView {
                env: pin.env.to_string(),
                pins: pin.seq,
                seconds_since_last_pin: Some(
                    (now.as_micros() - pin.recorded_at.as_micros()) / 1_000_000,
                ),
                live: PinView::proved(p, "latest")?,
            })
        })
        .collect::<Outcome<_>>()?;
    let view = StatusView {
        verified: anchor.verified,
        environments,
        next_page_token: response.next_page_token,
    };
    format.emit(&view, || {
        let mut out = String::new();
        if view.environments.is_empty() {
            out.push_str("no environments yet: nothing has been pinned\n");
        }
        for e in &view.environments {
            let p = &e.live;
            out.push_str(&format!(
                "{}  live {} ({}) since {} by {}{}\n    {} pin(s), last {} ago, log index {}\n",
                e.env,
                p.release_id,
                p.digest,
                p.activated_at,
                p.actor,
                p.db_position
                    .as_ref()
                    .map(|d| format!(", db {d}"))
                    .unwrap_or_default(),
                e.pins,
                e.seconds_since_last_pin
                    .map(age_text)
                    .unwrap_or_else(|| "?".into()),
                p.log_index,
            ));
        }
        if !view.next_page_token.is_empty() {
            out.push_str(&format!("more: --page-token {}\n", view.next_page_token));
        }
        out.push_str(&reader.unverified_line());
        out
    });
    Ok(())
}
