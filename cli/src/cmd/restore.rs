//! `stackpin restore`: the artifact live at an instant (or database
//! position), resolved, downloaded and verified against the signed log
//! before it is written, with the database target that goes with it. The
//! pipeline ([`restore_verified`]) is shared with `drill run`, which
//! restores exactly as `restore` does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use stackpin_core::position::DbPosition;
use stackpin_core::proof::RestoreProof;
use stackpin_proto::v1 as pb;

use crate::cmd::resolve::{ResolveArgs, ask};
use crate::download::download;
use crate::exit::{Failure, Outcome};
use crate::view::{Format, ResolveView};

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    resolve: ResolveArgs,
    /// Where to write the artifact that was live (and FILE.tlog-proof
    /// beside it); not needed with --plan.
    #[arg(long, required_unless_present = "plan")]
    out: Option<PathBuf>,
    #[command(flatten)]
    trusted_keys: crate::trust::TrustedKeysArg,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
    /// Explain what would be restored and why, and the database target,
    /// without downloading or writing anything.
    #[arg(long)]
    plan: bool,
    /// The database file, to fill in the printed Litestream command.
    #[arg(long, default_value = "<database>")]
    litestream_db: String,
    /// The Litestream replica URL, to fill in the printed command.
    #[arg(long, default_value = "<replica-url>")]
    litestream_replica: String,
    /// The folder of a `mongodump --oplog`, to fill in the printed
    /// `mongorestore`.
    #[arg(long, value_name = "DIR", default_value = "<dump-folder>")]
    mongo_dump: String,
    /// The Atlas cluster, to fill in the printed point-in-time restore.
    #[arg(long, value_name = "NAME", default_value = "<cluster>")]
    atlas_cluster: String,
    /// The Turso database, to fill in the printed point-in-time restore.
    #[arg(long, value_name = "NAME", default_value = "<database>")]
    turso_db: String,
    /// The PostgreSQL WAL archive folder, to fill in the printed
    /// restore_command.
    #[arg(long, value_name = "DIR", default_value = "/path/to/wal_archive", value_parser = wal_archive)]
    wal_archive: String,
    /// Refuse a checkpoint whose newest cosignature (by the witnesses of
    /// --policy) is older than this (e.g. 10m, 1h): an answer that says
    /// "still live" is only as fresh as its checkpoint.
    #[arg(long, value_parser = stackpin_core::time::parse_duration, value_name = "DURATION")]
    max_age: Option<std::time::Duration>,
    /// Exit 9 (after writing) when the instant is within the boundary
    /// margin of a switch, so a script cannot miss the warning.
    #[arg(long)]
    fail_near_switch: bool,
}

#[derive(Serialize)]
pub struct Restored {
    /// Empty for a --plan.
    #[serde(skip_serializing_if = "String::is_empty")]
    out: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    proof: String,
    /// The publisher key the artifact's signature verified under.
    key_id: String,
    checkpoint_size: u64,
    #[serde(flatten)]
    fresh: crate::trust::Freshness,
    plan: bool,
    #[serde(flatten)]
    pub resolution: ResolveView,
    pub(crate) database: DbTarget,
}

/// The database restore target matching the chosen instant or position.
#[derive(Serialize)]
pub(crate) struct DbTarget {
    /// The instant to restore the database to, when the query was by time.
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    /// The Litestream command, when the query was by time or TXID.
    #[serde(skip_serializing_if = "Option::is_none")]
    litestream: Option<String>,
    /// PostgreSQL recovery settings.
    pub(crate) postgres: Vec<String>,
    /// MongoDB: `mongorestore` of a dump with its oplog, and the Atlas
    /// point-in-time restore.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mongodb: Vec<String>,
    /// Turso (libSQL): the platform's point-in-time restore into a new
    /// database, when the query was by time.
    #[serde(skip_serializing_if = "Option::is_none")]
    turso: Option<String>,
    /// The ObjectOS image recorded with the pin: the runtime to start on
    /// the artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_image: Option<String>,
    /// Exact targets recorded when this artifact went live: restoring to one
    /// of them gives the database as it was at that activation.
    at_activation: Vec<String>,
}

fn db_target(args: &RestoreArgs, pin: &stackpin_core::entry::PinEntry) -> DbTarget {
    let (db, replica) = (&args.litestream_db, &args.litestream_replica);
    let mut target = DbTarget {
        time: None,
        litestream: None,
        postgres: Vec::new(),
        mongodb: Vec::new(),
        turso: None,
        runtime_image: pin.runtime_image.as_ref().map(ToString::to_string),
        at_activation: Vec::new(),
    };
    let (dump, cluster) = (&args.mongo_dump, &args.atlas_cluster);
    if let Some(at) = args.resolve.at {
        let t = at.to_string();
        target.litestream = Some(format!(
            "litestream restore -timestamp {t} -o {db} {replica}"
        ));
        target.postgres = postgres_recovery(
            &args.wal_archive,
            &format!("recovery_target_time = '{}'", postgres_time(&t)),
        );
        // Oplog timestamps count whole seconds: everything up to the end
        // of T's second is replayed (pin with --db-oplog-ts for an exact
        // pair).
        let secs = at.to_parts().0;
        target.mongodb = vec![
            format!(
                "mongorestore --oplogReplay --oplogLimit={}:0 {dump}",
                secs.saturating_add(1)
            ),
            format!(
                "atlas backups restores start pointInTime --clusterName {cluster} \
                 --pointInTimeUTCSeconds {secs} --targetClusterName {cluster}"
            ),
        ];
        let turso = &args.turso_db;
        target.turso = Some(format!(
            "turso db create {turso}-restored --from-db {turso} --timestamp {t}"
        ));
        target.time = Some(t);
    }
    match args.resolve.position() {
        Some(DbPosition::PostgresLsn { lsn }) => {
            target.postgres =
                postgres_recovery(&args.wal_archive, &format!("recovery_target_lsn = '{lsn}'"));
        }
        Some(DbPosition::LitestreamTxid { txid }) => {
            target.litestream = Some(format!("litestream restore -txid {txid} -o {db} {replica}"));
        }
        Some(DbPosition::MongoOplogTs { ts }) => {
            target.mongodb = mongo_to(ts, dump, cluster);
        }
        _ => {}
    }
    match &pin.db_position {
        Some(DbPosition::PostgresLsn { lsn }) => target
            .at_activation
            .push(format!("recovery_target_lsn = '{lsn}'")),
        Some(DbPosition::RestorePoint { name }) => target
            .at_activation
            .push(format!("recovery_target_name = '{name}'")),
        Some(DbPosition::LitestreamTxid { txid }) => target
            .at_activation
            .push(format!("litestream restore -txid {txid} -o {db} {replica}")),
        Some(DbPosition::MongoOplogTs { ts }) => {
            target.at_activation.extend(mongo_to(ts, dump, cluster));
        }
        None => {}
    }
    target
}

/// MongoDB restores that replay the oplog through `ts` and no further:
/// `--oplogLimit` excludes its own timestamp, so it names the next one.
fn mongo_to(ts: &str, dump: &str, cluster: &str) -> Vec<String> {
    let Ok(t) = ts.parse::<stackpin_core::position::OplogTs>() else {
        return Vec::new();
    };
    let next = stackpin_core::position::OplogTs::from_value(t.value().saturating_add(1));
    vec![
        format!(
            "mongorestore --oplogReplay --oplogLimit={}:{} {dump}",
            next.seconds, next.increment
        ),
        format!(
            "atlas backups restores start pointInTime --clusterName {cluster} --oplogTs {} \
             --oplogInc {} --targetClusterName {cluster}",
            t.seconds, t.increment
        ),
    ]
}

/// An instant as PostgreSQL's `recovery_target_time` accepts it: it
/// refuses RFC 3339's `Z`, so `2026-12-01 23:04:13.720526+00`.
fn postgres_time(rfc3339: &str) -> String {
    let t = rfc3339.replacen('T', " ", 1);
    match t.strip_suffix('Z') {
        Some(t) => format!("{t}+00"),
        None => t,
    }
}

/// A WAL archive folder as `restore_command` can name it: absolute (the
/// command runs in the data folder), and free of the quotes, `$`, `\` and
/// backquotes the setting and its shell would read.
///
/// # Errors
/// A message naming what is wrong.
pub fn wal_archive(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?} is not an absolute path: restore_command runs in the restored data \
             folder, so the archive must be named from /"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() || matches!(c, '\'' | '"' | '\\' | '$' | '`'))
    {
        return Err(format!(
            "{text:?} holds {c:?}, which restore_command cannot quote; use a path without it \
             (a symbolic link to the archive will do)"
        ));
    }
    Ok(text.to_owned())
}

/// The settings of a PostgreSQL point-in-time recovery to `target`, as
/// they can be pasted into postgresql.conf (with recovery.signal): a
/// recovery needs restore_command, and a restored copy must not archive
/// into the primary's archive until it is promoted on purpose.
fn postgres_recovery(archive: &str, target: &str) -> Vec<String> {
    vec![
        format!("restore_command = 'cp \"{archive}/%f\" \"%p\"'"),
        target.to_owned(),
        "recovery_target_action = 'promote'".to_owned(),
        "# a restored copy must not write into the primary's WAL archive: keep archiving off \
         until it becomes the primary on purpose"
            .to_owned(),
        "archive_mode = off".to_owned(),
    ]
}

impl DbTarget {
    fn text(&self) -> String {
        let mut out = String::from("database target:\n");
        let runtime = self.runtime_image.as_deref().map_or_else(
            || "ObjectOS (the pin records no runtime image)".to_owned(),
            |i| format!("ObjectOS {i}"),
        );
        match &self.time {
            Some(t) => out.push_str(&format!(
                "  restore the database to {t}, then start {runtime} on this artifact\n"
            )),
            None => out.push_str(&format!(
                "  restore the database, then start {runtime} on this artifact\n"
            )),
        }
        if let Some(l) = &self.litestream {
            out.push_str(&format!("  Litestream:  {l}\n"));
        }
        if let Some(t) = &self.turso {
            out.push_str(&format!("  Turso:       {t}\n"));
        }
        if !self.mongodb.is_empty() {
            out.push_str("  MongoDB (a dump with --oplog, or Atlas point-in-time restore):\n");
            for line in &self.mongodb {
                out.push_str(&format!("    {line}\n"));
            }
        }
        if !self.postgres.is_empty() {
            out.push_str(
                "  PostgreSQL (append to postgresql.conf of the restored base backup, and create \
                 recovery.signal beside it):\n",
            );
            for line in &self.postgres {
                out.push_str(&format!("    {line}\n"));
            }
        }
        if !self.at_activation.is_empty() {
            out.push_str(
                "  recorded when this artifact went live (the database as of its activation):\n",
            );
            for line in &self.at_activation {
                out.push_str(&format!("    {line}\n"));
            }
        }
        out
    }
}

/// Where a plan says it would write.
fn planned_out(args: &RestoreArgs) -> String {
    args.out
        .as_ref()
        .map_or_else(|| "<--out FILE>".to_owned(), |p| p.display().to_string())
}

pub async fn restore(
    args: &RestoreArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    let out = restore_verified(args, server, state).await?;
    if args.plan {
        format.emit(&out, || {
            let margin = out.resolution.near_switch.as_ref().map_or_else(
                || "not near a switch (outside the boundary margin)\n".to_owned(),
                |b| format!(
                    "within the boundary margin of the switch from {} to {}: check the database against both\n",
                    b.before.release_id, b.after.release_id
                ),
            );
            format!(
                "plan (nothing downloaded or written)\n{}boundary   {margin}would write {} and {}.tlog-proof, after checking the sha256\nchecked    publisher signature ({}), log inclusion in checkpoint {}\n{}",
                out.resolution.text(),
                planned_out(args),
                planned_out(args),
                out.key_id,
                out.checkpoint_size,
                out.database.text()
            )
        });
        return Ok(());
    }
    if let Some(b) = &out.resolution.near_switch {
        eprintln!(
            "warning: {} is within the margin of the switch from {} to {}; verify against the \
             database which one it matches",
            out.resolution.at, b.before.release_id, b.after.release_id
        );
    }
    if let Some(u) = &out.resolution.uncertain {
        eprintln!("warning: {u}");
    }
    format.emit(&out, || {
        format!(
            "restored {}\n{}verified   sha256, publisher signature ({}), log inclusion of publish, pin and successor in checkpoint {}\n{}proof      {}\n{}",
            out.out,
            out.resolution.text(),
            out.key_id,
            out.checkpoint_size,
            out.fresh.text(),
            out.proof,
            out.database.text()
        )
    });
    match &out.resolution.near_switch {
        Some(b) if args.fail_near_switch => Err(Failure::new(
            crate::exit::NEAR_SWITCH,
            anyhow::anyhow!(
                "restored, but {} is within the margin of the switch from {} to {} \
                 (--fail-near-switch): check the database against both",
                out.resolution.at,
                b.before.release_id,
                b.after.release_id
            ),
        )
        .after_result()),
        _ => Ok(()),
    }
}

impl RestoreArgs {
    /// A restore of the artifact live in `env` at `at` into `out`, as a
    /// drill performs it.
    pub fn drill(
        env: stackpin_core::ids::EnvName,
        at: stackpin_core::time::Timestamp,
        out: PathBuf,
        trusted_keys: crate::trust::TrustedKeysArg,
        log_key: crate::trust::LogKey,
        wal_archive: Option<&Path>,
    ) -> Self {
        Self {
            resolve: ResolveArgs::at(env, at),
            out: Some(out),
            trusted_keys,
            log_key,
            plan: false,
            litestream_db: "<database>".into(),
            litestream_replica: "<replica-url>".into(),
            mongo_dump: "<dump-folder>".into(),
            atlas_cluster: "<cluster>".into(),
            turso_db: "<database>".into(),
            wal_archive: wal_archive.map_or_else(
                || "/path/to/wal_archive".into(),
                |p| p.display().to_string(),
            ),
            max_age: None,
            fail_near_switch: false,
        }
    }

    /// The same, as a plan: checked, nothing downloaded or written.
    pub fn planned(mut self) -> Self {
        self.plan = true;
        self
    }
}

/// Resolves, downloads, verifies and (unless a plan) writes the artifact
/// and its proof; what it did, for the caller to show.
///
/// # Errors
/// As `stackpin restore`.
pub async fn restore_verified(
    args: &RestoreArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
) -> Outcome<Restored> {
    // A plan checks the publisher's signature when given keys, and says
    // so when not; a restore always checks it.
    let trusted = if args.plan && !args.trusted_keys.given() {
        None
    } else {
        Some(args.trusted_keys.load()?)
    };
    let out = match (&args.out, args.plan) {
        (Some(p), _) if p.as_os_str() == "-" => {
            return Err(Failure::invalid(
                "--out -: a restore writes the artifact and its .tlog-proof beside it, so it \
                 needs a file name (`stackpin fetch --out -` writes an artifact to standard \
                 output)",
            ));
        }
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => return Err(Failure::invalid("--out is required (or --plan)")),
    };
    // A restore proves everything: it needs the log's key.
    if !args.log_key.given()
        && args.log_key.policy()?.is_none()
        && state
            .map(|dir| crate::trust::server_key(dir, &server.url))
            .transpose()?
            .flatten()
            .is_none()
    {
        crate::trust::log_key(&args.log_key)?;
    }
    let reader = crate::reader::Reader::new(&args.log_key, server, state, args.max_age)?;
    let log_key = reader
        .key()
        .cloned()
        .ok_or_else(|| Failure::verify(crate::reader::HOW_TO_TRUST))?;
    let mut client = crate::client::connect(server).await?;
    // A restore always reads the replica's freshest state, and waits a
    // little for a checkpoint to gather the policy's quorum.
    let resolved = ask(&mut client, &reader, &args.resolve, true, true).await?;
    let proof = RestoreProof {
        checkpoint: resolved.anchor.note.clone(),
        publish: resolved.publish.raw.clone(),
        pin: resolved.pin.raw.clone(),
        next: resolved.next.as_ref().map(|n| n.raw.clone()),
    };
    let pin = resolved.pin.pin("pin entry")?.clone();
    let database = db_target(args, &pin);
    let checkpoint_size = resolved.anchor.checkpoint.size;
    if args.plan {
        // Checked against the signed checkpoint like a restore, minus the
        // artifact's bytes, which a plan does not download.
        let key_id = match &trusted {
            Some(t) => proof
                .verify_entries(&log_key, t)
                .map_err(Failure::verify)?
                .key_id
                .to_string(),
            None => "not checked: no --trusted-keys".to_owned(),
        };
        return Ok(Restored {
            out: String::new(),
            proof: String::new(),
            key_id,
            checkpoint_size,
            fresh: resolved.anchor.fresh,
            plan: true,
            resolution: resolved.view,
            database,
        });
    }
    let what = pb::ArtifactRef {
        r#ref: Some(pb::artifact_ref::Ref::Digest(pin.digest.to_string())),
    };
    let (_, bytes) = download(&mut client, what, server.max_download).await?;
    // Everything below is checked against the signed checkpoint, not
    // taken from the answer: the bytes must hash to what the log says.
    let (Some(trusted), Some(out)) = (&trusted, &out) else {
        return Err(Failure::invalid("--out and --trusted-keys are required"));
    };
    let verified = proof
        .verify(&bytes, &log_key, trusted)
        .map_err(Failure::verify)?;
    let proof_file = crate::files::proof_path(out);
    crate::files::say_replaced(out);
    // The artifact and its proof are replaced together or not at all.
    let proof_text = proof.to_tlog_proof();
    crate::files::write_all_atomic(&[
        (out.as_path(), bytes.as_ref()),
        (proof_file.as_path(), proof_text.as_bytes()),
    ])?;
    Ok(Restored {
        out: out.display().to_string(),
        proof: proof_file.display().to_string(),
        key_id: verified.key_id.to_string(),
        checkpoint_size,
        fresh: resolved.anchor.fresh,
        plan: false,
        resolution: resolved.view,
        database,
    })
}
