//! `stackpin history` and `status`: an environment's pins, and what is live
//! in every environment now, each pin proved and nothing newer left out.

use serde::Serialize;
use stackpin_core::entry::PinEntry;
use stackpin_core::ids::EnvName;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::cmd::pins::{anchored, proved_pins};
use crate::exit::{Failure, Outcome};
use crate::offline::OfflineLog;
use crate::reader::{Proved, Reader};
use crate::view::{Format, PinView, wire_time};

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// The environment.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// Only pins activated strictly before this instant.
    #[arg(long, value_parser = crate::parse_time)]
    before: Option<Timestamp>,
    /// Only pins activated at or after this instant.
    #[arg(long, value_parser = crate::parse_time)]
    since: Option<Timestamp>,
    /// At most this many pins (newest first; at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    /// Read the log from this folder or bucket (a mirror, a copied data
    /// folder, s3://bucket/prefix, az://container/prefix) instead of a
    /// registry, checked whole against its signed checkpoint.
    #[arg(long, value_name = "DIR|URL", conflicts_with = "page_token")]
    from: Option<String>,
    #[command(flatten)]
    store: crate::place::StoreArgs,
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

/// What one page of an environment's history asks for.
pub(crate) struct Query<'a> {
    pub env: &'a EnvName,
    pub before: Option<Timestamp>,
    pub since: Option<Timestamp>,
    pub limit: u32,
    pub page_token: &'a str,
    /// Only the pin this request id recorded ("" for all).
    pub request_id: &'a str,
}

/// One page of an environment's pins, newest first, as proved.
pub(crate) struct Page {
    pub anchor: crate::reader::Anchor,
    pub pins: Vec<Proved>,
    pub next_page_token: String,
    /// Whether this is the newest page with nothing newer left out
    /// (proved when the anchor is verified).
    pub head: bool,
}

/// Reads one page of history and proves it: every pin in the checkpoint,
/// inside the query, each following the next; the whole history ending at
/// pin #1; and the newest page holding the newest pin of the environment
/// (every entry after it read and checked against the tree).
///
/// # Errors
/// Verification failed (exit 5) naming what does not check out.
pub(crate) async fn page(
    reader: &Reader,
    client: &mut crate::client::Client,
    q: &Query<'_>,
) -> Outcome<Page> {
    let response = client
        .history(pb::HistoryRequest {
            env: q.env.to_string(),
            before: q.before.map(wire_time),
            since: q.since.map(wire_time),
            limit: q.limit,
            page_token: q.page_token.to_owned(),
            request_id: q.request_id.to_owned(),
        })
        .await?
        .into_inner();
    let anchor = anchored(reader, client, &response.checkpoint).await?;
    let proved = proved_pins(&anchor, &response.pins, &response.entries, "pins")?;
    for (i, p) in proved.iter().enumerate() {
        let pin = p.pin("pins")?;
        let outside = pin.env != *q.env
            || q.before.is_some_and(|b| pin.activated_at >= b)
            || q.since.is_some_and(|s| pin.activated_at < s)
            || (!q.request_id.is_empty() && pin.request_id.as_deref() != Some(q.request_id));
        if outside {
            return Err(Failure::verify(format!(
                "the answer holds pin #{} of {} (activated {}), which the query excludes",
                pin.seq, pin.env, pin.activated_at
            )));
        }
        // Newest first, with nothing between: each pin links to the next.
        if let Some(older) = proved.get(i + 1) {
            let o = older.pin("pins")?;
            if !follows(pin, o, older) {
                return Err(Failure::verify(format!(
                    "pin #{} of {} does not follow pin #{} in the answer: pins were left out or \
                     reordered",
                    pin.seq, pin.env, o.seq
                )));
            }
        }
    }
    let head = q.before.is_none() && q.page_token.is_empty() && q.request_id.is_empty();
    // The whole history in one page ends at pin #1: none older was cut off.
    let whole = head && q.since.is_none() && response.next_page_token.is_empty();
    if whole
        && let Some(oldest) = proved.last()
        && oldest.pin("pins")?.seq != 1
    {
        return Err(Failure::verify(format!(
            "the answer ends at pin #{} of {} with no page to follow: older pins were left out",
            oldest.pin("pins")?.seq,
            q.env
        )));
    }
    // The first page of the newest pins: none newer was left out.
    if head
        && let Some(newest) = proved.first()
        && let Some((index, later)) = anchor
            .after(client, newest, |p| p.env == *q.env)
            .await?
            .into_iter()
            .next()
    {
        return Err(Failure::verify(format!(
            "the answer's newest pin of {} is #{}, but the log holds pin #{} ({}) at index \
             {index}: newer pins were left out",
            q.env,
            newest.pin("pins")?.seq,
            later.seq,
            later.release_id
        )));
    }
    Ok(Page {
        anchor,
        pins: proved,
        next_page_token: response.next_page_token,
        head,
    })
}

/// Whether `newer` is the pin right after `older` (proved as `older_entry`)
/// in its environment: the next number, linked by the older one's hash.
pub(crate) fn follows(newer: &PinEntry, older: &PinEntry, older_entry: &Proved) -> bool {
    older.seq.checked_add(1) == Some(newer.seq)
        && newer.prev_pin.as_deref() == Some(older_entry.leaf.hex().as_str())
}

pub async fn history(
    args: &HistoryArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    if let Some(from) = &args.from {
        let place = crate::place::Place::parse(from, &args.store)?;
        return history_offline(args, &place, format).await;
    }
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    // `--request-id` here is a filter: the pin that request recorded (its
    // id scoped to a pin of this environment, as `pin` scopes it).
    let filter = match &server.request_id {
        Some(_) => server.request_id_for("pin", args.env.as_str())?,
        None => String::new(),
    };
    let Page {
        anchor,
        pins: proved,
        next_page_token,
        head,
    } = page(
        &reader,
        &mut client,
        &Query {
            env: &args.env,
            before: args.before,
            since: args.since,
            limit: args.limit,
            page_token: &args.page_token,
            request_id: &filter,
        },
    )
    .await?;
    let view = HistoryView {
        env: args.env.to_string(),
        verified: anchor.verified,
        pins: proved
            .iter()
            .map(|p| PinView::proved(p, "pins"))
            .collect::<Outcome<_>>()?,
        next_page_token,
    };
    let footer = if anchor.verified && !view.pins.is_empty() {
        format!(
            "proved in the checkpoint of size {}: every pin, each following the next{}\n",
            anchor.checkpoint.size,
            if head { ", nothing newer left out" } else { "" }
        )
    } else {
        String::new()
    } + &reader.unverified_line();
    emit_history(&view, &footer, format);
    Ok(())
}

fn emit_history(view: &HistoryView, footer: &str, format: Format) {
    format.emit(view, || {
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
        out.push_str(footer);
        out
    });
}

/// Opens the log in `place`, checked whole against its signed checkpoint.
async fn offline_log(
    place: &crate::place::Place,
    log_key: &crate::trust::LogKey,
) -> Outcome<OfflineLog> {
    let key = crate::trust::log_key(log_key).map_err(|e| {
        Failure::verify(format!(
            "{:#}: a log read from a folder is proved against the log's key",
            e.error
        ))
    })?;
    let log = OfflineLog::open(place, &key, &|note| log_key.check_quorum(note)).await?;
    crate::offline::say_last_round(place).await;
    Ok(log)
}

/// `history --from DIR`: the environment's pins from the folder's proved
/// log, newest first.
async fn history_offline(
    args: &HistoryArgs,
    place: &crate::place::Place,
    format: Format,
) -> Outcome {
    let log = offline_log(place, &args.log_key).await?;
    let pins = log.pins(&args.env)?;
    let shown: Vec<PinView> = pins
        .iter()
        .rev()
        .filter(|(_, p)| args.before.is_none_or(|b| p.activated_at < b))
        .filter(|(_, p)| args.since.is_none_or(|s| p.activated_at >= s))
        .take(args.limit as usize)
        .map(|(i, p)| log.pin_view(*i, p))
        .collect::<Outcome<_>>()?;
    let view = HistoryView {
        env: args.env.to_string(),
        verified: true,
        pins: shown,
        next_page_token: String::new(),
    };
    let filtered = args.before.is_some() || args.since.is_some() || pins.len() > view.pins.len();
    let footer = format!(
        "proved: every entry of {} checked against its checkpoint of size {}; {}\n",
        place.name(),
        log.checkpoint.size,
        if filtered {
            "every pin that matches, up to --limit"
        } else {
            "nothing left out"
        }
    );
    emit_history(&view, &footer, format);
    Ok(())
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// At most this many environments (in name order; at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
    /// Read the log from this folder or bucket (a mirror, a copied data
    /// folder, s3://bucket/prefix, az://container/prefix) instead of a
    /// registry, checked whole against its signed checkpoint: every
    /// environment is listed, provably.
    #[arg(long, value_name = "DIR|URL", conflicts_with = "page_token")]
    from: Option<String>,
    #[command(flatten)]
    store: crate::place::StoreArgs,
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
    if let Some(from) = &args.from {
        let place = crate::place::Place::parse(from, &args.store)?;
        return status_offline(args, &place, format).await;
    }
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
    let footer = if anchor.verified {
        format!(
            "proved in the checkpoint of size {}: every pin, and nothing newer left out\n",
            anchor.checkpoint.size
        )
    } else {
        String::new()
    } + &reader.unverified_line();
    emit_status(&view, &footer, format);
    Ok(())
}

/// `status --from DIR`: every environment's latest pin, from the folder's
/// proved log.
async fn status_offline(args: &StatusArgs, place: &crate::place::Place, format: Format) -> Outcome {
    let log = offline_log(place, &args.log_key).await?;
    let mut latest = std::collections::BTreeMap::new();
    for (i, e) in log.all() {
        if let stackpin_core::entry::Entry::Pin(p) = e? {
            latest.insert(p.env.clone(), (i, p));
        }
    }
    let now = Timestamp::now();
    let environments = latest
        .values()
        .take(args.limit as usize)
        .map(|(i, p)| {
            Ok(EnvView {
                env: p.env.to_string(),
                pins: p.seq,
                seconds_since_last_pin: Some(
                    (now.as_micros() - p.recorded_at.as_micros()) / 1_000_000,
                ),
                live: log.pin_view(*i, p)?,
            })
        })
        .collect::<Outcome<_>>()?;
    let view = StatusView {
        verified: true,
        environments,
        next_page_token: String::new(),
    };
    let footer = format!(
        "proved: every entry of {} checked against its checkpoint of size {}; every \
         environment listed{}\n",
        place.name(),
        log.checkpoint.size,
        if latest.len() > args.limit as usize {
            format!(" (the first {} shown: raise --limit)", args.limit)
        } else {
            String::new()
        }
    );
    emit_status(&view, &footer, format);
    Ok(())
}

fn emit_status(view: &StatusView, footer: &str, format: Format) {
    format.emit(view, || {
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
            if let Some(image) = &p.runtime_image {
                out.push_str(&format!("    runtime {image}\n"));
            }
        }
        if !view.next_page_token.is_empty() {
            out.push_str(&format!("more: --page-token {}\n", view.next_page_token));
        }
        out.push_str(footer);
        out
    });
}
