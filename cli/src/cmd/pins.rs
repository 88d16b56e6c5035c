//! `stackpin pin`, and what the timeline commands share: naming an
//! artifact and a database position on the command line, and proving the
//! pins a listing carries.

use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, ImageRef, Reason, ReleaseId};
use stackpin_core::position::DbPosition;
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::reader::{Anchor, Proved, Reader, check_pin};
use crate::view::{Format, PinView, wire_time};

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
    #[arg(long, value_parser = crate::parse_time)]
    activated_at: Option<Timestamp>,
    /// Why (recorded in the log).
    #[arg(long, default_value = "", value_parser = crate::parse::<Reason>)]
    reason: Reason,
    #[command(flatten)]
    position: PositionArgs,
    /// The ObjectOS container image the release runs with, by digest
    /// (NAME@sha256:…; a tag alone is refused): recorded in the pin, so a
    /// recovery starts the same runtime on the artifact.
    #[arg(long, value_parser = crate::parse::<ImageRef>, value_name = "IMAGE@DIGEST")]
    runtime_image: Option<ImageRef>,
    /// Start a new environment with this pin. An environment stays in the
    /// write-once log for good, so a name never pinned before is refused
    /// without it, with the nearest known names.
    #[arg(long)]
    new_env: bool,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

/// A database position recorded with a pin or a backup.
#[derive(clap::Args, Clone, Default)]
#[group(multiple = false)]
pub struct PositionArgs {
    /// The PostgreSQL LSN (a pin's at activation, a backup's at its end;
    /// e.g. 0/16B3748, `SELECT pg_current_wal_lsn()`).
    #[arg(long, value_parser = crate::parse_with(DbPosition::lsn))]
    db_lsn: Option<DbPosition>,
    /// A PostgreSQL restore point created then (`pg_create_restore_point`).
    #[arg(long, value_parser = crate::parse_with(DbPosition::restore_point))]
    db_restore_point: Option<DbPosition>,
    /// The Litestream TXID then (hex).
    #[arg(long, value_parser = crate::parse_with(DbPosition::txid))]
    litestream_txid: Option<DbPosition>,
    /// The MongoDB oplog timestamp then: Timestamp(SECONDS, INCREMENT) or
    /// SECONDS:INCREMENT (`rs.status().optimes.lastCommittedOpTime.ts`).
    #[arg(long, value_parser = crate::parse_with(DbPosition::oplog_ts))]
    db_oplog_ts: Option<DbPosition>,
}

impl PositionArgs {
    pub fn position(&self) -> Option<&DbPosition> {
        self.db_lsn
            .as_ref()
            .or(self.db_restore_point.as_ref())
            .or(self.litestream_txid.as_ref())
            .or(self.db_oplog_ts.as_ref())
    }
}

/// The wire form of a position.
pub use stackpin_proto::convert::db_position as wire_position;

pub async fn pin(
    args: &PinArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    let mut client = crate::client::connect(server).await?;
    let request = Record {
        command: "pin",
        new_env: args.new_env,
        runtime_image: args.runtime_image.as_ref(),
        env: &args.env,
        artifact: &args.artifact,
        activated_at: args.activated_at,
        reason: &args.reason,
        position: args.position.position(),
    };
    let (proved, replayed) = record(&reader, server, &mut client, &request).await?;
    let pin = PinView::proved(&proved, "pin entry")?;
    #[derive(serde::Serialize)]
    struct Pinned<'a> {
        #[serde(flatten)]
        pin: &'a PinView,
        /// The registry says this request id had recorded the pin already.
        replayed: bool,
    }
    let out = Pinned {
        pin: &pin,
        replayed,
    };
    format.emit(&out, || {
        format!(
            "{} {} in {} as #{} from {}\ndigest     {}\nlog index  {}\n{}",
            if replayed {
                "already pinned by this request id:"
            } else {
                "pinned"
            },
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

/// A pin to record.
pub(crate) struct Record<'a> {
    /// What the request id is scoped to: `pin` or `rollback`.
    pub command: &'static str,
    /// The pin may start the environment (`--new-env`); otherwise the
    /// registry refuses a first pin, naming the nearest known names.
    pub new_env: bool,
    pub runtime_image: Option<&'a ImageRef>,
    pub env: &'a EnvName,
    pub artifact: &'a ArtifactArg,
    pub activated_at: Option<Timestamp>,
    pub reason: &'a Reason,
    pub position: Option<&'a DbPosition>,
}

/// Records a pin under this run's request id (retried under the same id,
/// so it is recorded once) and proves the entry the registry answers with
/// is the pin asked for; also returns whether the registry says it was a
/// replay (recorded before under the id).
///
/// # Errors
/// The registry's refusal; verification failed when the answer is not
/// the pin asked for or not in its checkpoint.
pub(crate) async fn record(
    reader: &Reader,
    server: &crate::client::Connection,
    client: &mut crate::client::Client,
    r: &Record<'_>,
) -> Outcome<(Proved, bool)> {
    let id = server.request_id_for(r.command, r.env.as_str())?;
    let message = pb::PinRequest {
        env: r.env.to_string(),
        artifact: Some(r.artifact.to_wire()),
        activated_at: r.activated_at.map(wire_time),
        reason: r.reason.as_str().to_owned(),
        db_position: r.position.map(wire_position),
        request_id: id.clone(),
        runtime_image: r.runtime_image.map(ToString::to_string).unwrap_or_default(),
        known_env_only: !r.new_env,
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
    let anchor = anchored(reader, client, &response.checkpoint).await?;
    let proved = anchor.required(response.entry.as_ref(), "pin entry")?;
    check_pin("pin", response.pin.as_ref(), Some(&proved))?;
    let entry = proved.pin("pin entry")?;
    let asked = match (&r.artifact.release_id, &r.artifact.digest) {
        (Some(release), _) => entry.release_id == *release,
        (None, Some(d)) => entry.digest == *d,
        (None, None) => true,
    };
    if entry.env != *r.env
        || !asked
        || entry.request_id.as_deref() != Some(id.as_str())
        || entry.runtime_image.as_ref() != r.runtime_image
    {
        return Err(Failure::verify(format!(
            "the registry answered with pin #{} of {} (release {}), which is not the pin asked for",
            entry.seq, entry.env, entry.release_id
        )));
    }
    Ok((proved, response.replayed))
}

/// Accepts the checkpoint a listing came with.
pub(crate) async fn anchored(
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
pub(crate) fn proved_pins(
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
