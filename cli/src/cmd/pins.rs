//! `stackpin pin`, `resolve` and `history`: the timeline of an environment.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, Reason, ReleaseId};
use stackpin_core::position::DbPosition;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::exit::Outcome;
use crate::view::{Format, PinView, ResolveView, wire_time};

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

pub async fn pin(args: &PinArgs, server: &crate::client::Connection, format: Format) -> Outcome {
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
    let pin: PinView = response
        .pin
        .as_ref()
        .context("the registry answered without a pin")?
        .into();
    format.emit(&pin, || {
        format!(
            "pinned {} in {} as #{} from {}\ndigest     {}\nlog index  {}\n",
            pin.release_id, pin.env, pin.seq, pin.activated_at, pin.digest, pin.log_index
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

/// Asks the registry which pin was live; shared by `resolve` and `restore`.
pub async fn ask(
    client: &mut crate::client::Client,
    args: &ResolveArgs,
    fresh: bool,
) -> Outcome<(pb::ResolveResponse, ResolveView)> {
    let response = client
        .resolve(pb::ResolveRequest {
            env: args.env.to_string(),
            at: args.at.map(wire_time),
            position: args.position().map(wire_position),
            margin: args.margin.map(|m| prost_types::Duration {
                seconds: i64::try_from(m.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(m.subsec_nanos()).unwrap_or(0),
            }),
            fresh: args.fresh || fresh,
        })
        .await?
        .into_inner();
    let view = ResolveView::new(args.env.as_str(), &args.target_text(), &response)
        .context("the registry answered without a pin")?;
    Ok((response, view))
}

#[derive(clap::Args)]
pub struct ResolveCmd {
    #[command(flatten)]
    query: ResolveArgs,
    /// With --log-key or --policy, the answer's checkpoint is verified
    /// (signature, and the policy's quorum) and its age shown.
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
    /// The checkpoint the answer was given under, when it was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_size: Option<u64>,
    #[serde(flatten)]
    fresh: crate::trust::Freshness,
}

pub async fn resolve(
    args: &ResolveCmd,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let policy = args.log_key.policy()?;
    let verify = policy.is_some() || args.log_key.given();
    if !verify && args.max_age.is_some() {
        crate::trust::freshness(None, "", args.max_age)?;
    }
    let mut client = crate::client::connect(server).await?;
    let (response, view) = ask(&mut client, &args.query, false).await?;
    let mut out = ResolvedView {
        resolution: &view,
        checkpoint_size: None,
        fresh: crate::trust::Freshness::default(),
    };
    if verify {
        let log_key = crate::trust::log_key(&args.log_key)?;
        let note = response
            .checkpoint
            .as_ref()
            .map(|c| c.note.clone())
            .ok_or_else(|| crate::exit::Failure::verify("the registry sent no checkpoint"))?;
        let cp = stackpin_core::note::Checkpoint::open(&note, &log_key)
            .map_err(|e| crate::exit::Failure::verify(format!("checkpoint signature: {e}")))?;
        args.log_key.check_quorum(&note)?;
        out.checkpoint_size = Some(cp.size);
        out.fresh = crate::trust::freshness(policy.as_ref(), &note, args.max_age)?;
    }
    format.emit(&out, || {
        let mut text = view.text();
        if let Some(size) = out.checkpoint_size {
            text.push_str(&format!(
                "log        checkpoint of size {size}, signature checked\n"
            ));
            text.push_str(&out.fresh.text());
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
}

#[derive(Serialize)]
struct HistoryView {
    env: String,
    pins: Vec<PinView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

pub async fn history(
    args: &HistoryArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let response = client
        .history(pb::HistoryRequest {
            env: args.env.to_string(),
            before: args.before.map(wire_time),
            since: args.since.map(wire_time),
            limit: args.limit,
            page_token: args.page_token.clone(),
            // `--request-id` here is a filter: the pin that request recorded.
            request_id: server.request_id.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let view = HistoryView {
        env: args.env.to_string(),
        pins: response.pins.iter().map(PinView::from).collect(),
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
        out
    });
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
    format: Format,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let response = client
        .list_environments(pb::ListEnvironmentsRequest {
            limit: args.limit,
            page_token: args.page_token.clone(),
        })
        .await?
        .into_inner();
    let now = Timestamp::now();
    let environments = response
        .environments
        .iter()
        .filter_map(|e| {
            let live = PinView::from(e.latest.as_ref()?);
            let since = live
                .recorded_at
                .parse::<Timestamp>()
                .ok()
                .map(|t| (now.as_micros() - t.as_micros()) / 1_000_000);
            Some(EnvView {
                env: e.env.clone(),
                pins: live.seq,
                seconds_since_last_pin: since,
                live,
            })
        })
        .collect();
    let view = StatusView {
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
        out
    });
    Ok(())
}
