//! `stackpin fetch`, `restore`, `list` and `stat`: getting artifacts back,
//! verified locally before anything is written.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use stackpin_core::digest::Digest;
use stackpin_core::position::DbPosition;
use stackpin_core::proof::RestoreProof;
use stackpin_proto::v1 as pb;

use crate::cmd::pins::{ArtifactArg, ResolveArgs, ask};
use crate::download::download;
use crate::exit::{Failure, Outcome};
use crate::files::write_atomic;
use crate::view::{ArtifactView, Format, ResolveView};

#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    artifact: ArtifactArg,
    /// Where to write the artifact.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize)]
struct Fetched {
    out: String,
    #[serde(flatten)]
    artifact: ArtifactView,
}

pub async fn fetch(
    args: &FetchArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let (artifact, bytes) =
        download(&mut client, args.artifact.to_wire(), server.max_download).await?;
    if let Some(d) = &args.artifact.digest
        && artifact.digest != d.to_string()
    {
        return Err(Failure::verify(format!(
            "asked for {d}, the registry sent {}",
            artifact.digest
        )));
    }
    if let Some(r) = &args.artifact.release_id
        && artifact.release_id != r.as_str()
    {
        return Err(Failure::verify(format!(
            "asked for release {r}, the registry sent release {}",
            artifact.release_id
        )));
    }
    write_atomic(&args.out, &bytes)?;
    let out = Fetched {
        out: args.out.display().to_string(),
        artifact: (&artifact).into(),
    };
    format.emit(&out, || {
        format!("wrote {}\n{}", out.out, out.artifact.text())
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    resolve: ResolveArgs,
    /// Where to write the artifact that was live.
    #[arg(long)]
    out: PathBuf,
    /// Publisher keys to verify the artifact's signature against: a PEM
    /// public-key file or a folder of *.pem.
    #[arg(long, env = "STACKPIN_TRUSTED_KEYS")]
    trusted_keys: PathBuf,
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
    /// The PostgreSQL WAL archive folder, to fill in the printed
    /// restore_command.
    #[arg(long, value_name = "DIR", default_value = "/path/to/wal_archive", value_parser = wal_archive)]
    wal_archive: String,
    /// Refuse a checkpoint whose newest cosignature (by the witnesses of
    /// --policy) is older than this (e.g. 10m, 1h): an answer that says
    /// "still live" is only as fresh as its checkpoint.
    #[arg(long, value_parser = stackpin_core::time::parse_duration, value_name = "DURATION")]
    max_age: Option<std::time::Duration>,
}

#[derive(Serialize)]
pub struct Restored {
    /// Empty for a --plan.
    #[serde(skip_serializing_if = "String::is_empty")]
    out: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    proof: String,
    signed_by: String,
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
        at_activation: Vec::new(),
    };
    if let Some(at) = args.resolve.at {
        let t = at.to_string();
        target.litestream = Some(format!(
            "litestream restore -timestamp {t} -o {db} {replica}"
        ));
        target.postgres = postgres_recovery(
            &args.wal_archive,
            &format!("recovery_target_time = '{}'", postgres_time(&t)),
        );
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
        None => {}
    }
    target
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
        if let Some(t) = &self.time {
            out.push_str(&format!(
                "  restore the database to {t}, then start ObjectOS on this artifact\n"
            ));
        }
        if let Some(l) = &self.litestream {
            out.push_str(&format!("  Litestream:  {l}\n"));
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
                args.out.display(),
                args.out.display(),
                out.signed_by,
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
            out.signed_by,
            out.checkpoint_size,
            out.fresh.text(),
            out.proof,
            out.database.text()
        )
    });
    Ok(())
}

impl RestoreArgs {
    /// A restore of the artifact live in `env` at `at` into `out`, as a
    /// drill performs it.
    pub fn drill(
        env: stackpin_core::ids::EnvName,
        at: stackpin_core::time::Timestamp,
        out: PathBuf,
        trusted_keys: PathBuf,
        log_key: crate::trust::LogKey,
        wal_archive: Option<&Path>,
    ) -> Self {
        Self {
            resolve: ResolveArgs::at(env, at),
            out,
            trusted_keys,
            log_key,
            plan: false,
            litestream_db: "<database>".into(),
            litestream_replica: "<replica-url>".into(),
            wal_archive: wal_archive.map_or_else(
                || "/path/to/wal_archive".into(),
                |p| p.display().to_string(),
            ),
            max_age: None,
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
    let trusted = crate::trust::trusted_keys(&args.trusted_keys)?;
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
        let verified = proof
            .verify_entries(&log_key, &trusted)
            .map_err(Failure::verify)?;
        return Ok(Restored {
            out: String::new(),
            proof: String::new(),
            signed_by: verified.key_id.to_string(),
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
    let verified = proof
        .verify(&bytes, &log_key, &trusted)
        .map_err(Failure::verify)?;
    let proof_file = crate::files::proof_path(&args.out);
    // The artifact and its proof are replaced together or not at all.
    let proof_text = proof.to_tlog_proof();
    crate::files::write_all_atomic(&[
        (args.out.as_path(), bytes.as_ref()),
        (proof_file.as_path(), proof_text.as_bytes()),
    ])?;
    Ok(Restored {
        out: args.out.display().to_string(),
        proof: proof_file.display().to_string(),
        signed_by: verified.key_id.to_string(),
        checkpoint_size,
        fresh: resolved.anchor.fresh,
        plan: false,
        resolution: resolved.view,
        database,
    })
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// At most this many artifacts (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    page_token: String,
}

#[derive(Serialize)]
struct Listed {
    artifacts: Vec<ArtifactView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

pub async fn list(args: &ListArgs, server: &crate::client::Connection, format: Format) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let response = client
        .list_artifacts(pb::ListArtifactsRequest {
            page_size: args.limit,
            page_token: args.page_token.clone(),
        })
        .await?
        .into_inner();
    let out = Listed {
        artifacts: response.artifacts.iter().map(ArtifactView::from).collect(),
        next_page_token: response.next_page_token,
    };
    format.emit(&out, || {
        let mut text = String::new();
        for a in &out.artifacts {
            text.push_str(&format!(
                "{}  {}  {} bytes  {}\n",
                a.release_id, a.digest, a.size, a.recorded_at
            ));
        }
        if out.artifacts.is_empty() {
            text.push_str("no artifacts\n");
        }
        if !out.next_page_token.is_empty() {
            text.push_str(&format!("more: --page-token {}\n", out.next_page_token));
        }
        text
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct StatArgs {
    #[command(flatten)]
    artifact: ArtifactArg,
}

pub async fn stat(args: &StatArgs, server: &crate::client::Connection, format: Format) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let artifact = client
        .stat_artifact(pb::StatArtifactRequest {
            artifact: Some(args.artifact.to_wire()),
        })
        .await?
        .into_inner();
    let view = ArtifactView::from(&artifact);
    format.emit(&view, || view.text());
    Ok(())
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("backup").required(true).multiple(true).args(["snapshot", "location"])))]
pub struct SnapshotTagArgs {
    /// The environment whose live artifact the snapshot goes with.
    #[arg(long, value_parser = crate::parse::<stackpin_core::ids::EnvName>)]
    env: stackpin_core::ids::EnvName,
    /// A database snapshot file (e.g. made with `VACUUM INTO`): its size
    /// and sha256 are recorded, and FILE.stackpin.json written beside it.
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Where the backup is, as recorded (a URL or path) [default: the
    /// --snapshot file's absolute path].
    #[arg(long, value_name = "URL")]
    location: Option<String>,
    /// How the backup was made: sqlite, postgresql, litestream, other
    /// [default: sqlite with --snapshot, else other].
    #[arg(long, value_parser = crate::parse::<stackpin_core::entry::Driver>)]
    driver: Option<stackpin_core::entry::Driver>,
    /// The database instant the backup restores to (default: now).
    #[arg(long, value_parser = crate::parse::<stackpin_core::time::Timestamp>)]
    at: Option<stackpin_core::time::Timestamp>,
    #[command(flatten)]
    position: crate::cmd::pins::PositionArgs,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

/// The tag written beside a snapshot: which artifact it goes with.
#[derive(Serialize)]
struct SnapshotTag {
    snapshot: String,
    snapshot_sha256: String,
    env: String,
    at: String,
    release_id: String,
    digest: String,
    pin_seq: u64,
    /// The log index of the snapshot entry.
    log_index: u64,
}

#[derive(Serialize)]
struct Tagged {
    #[serde(flatten)]
    recorded: crate::cmd::evidence::Shown,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_file: Option<String>,
    /// The tag written beside the file, as earlier versions printed it.
    #[serde(flatten)]
    tag: Option<SnapshotTag>,
}

/// The digest of the file at `path`, read in 1 MiB pieces: a database
/// snapshot can be larger than memory.
fn hash_file(path: &std::path::Path) -> Outcome<Digest> {
    use std::io::Read as _;
    let reading = |e: std::io::Error| Failure::invalid(format!("reading {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(reading)?;
    let len = file.metadata().map_err(reading)?.len();
    // Snapshots run to gigabytes: show the hashing.
    let mut progress =
        (len >= 64 * 1024 * 1024).then(|| crate::progress::Progress::bytes("hashing", len));
    let mut hasher = stackpin_core::digest::Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(reading)?;
        if n == 0 {
            if let Some(p) = progress {
                p.finish();
            }
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if let Some(p) = progress.as_mut() {
            p.set(done);
        }
    }
}

/// Where the tag of the snapshot file `file` goes: `FILE.stackpin.json`.
fn tag_path(file: &Path) -> PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(".stackpin.json");
    PathBuf::from(path)
}

/// `stackpin snapshot-tag`: records a backup in the log, paired by the
/// registry with the artifact live at its instant, and beside a snapshot
/// file a tag naming that artifact, so the two can be restored together
/// (`stackpin fetch --digest <digest>` brings the artifact back).
pub async fn snapshot_tag(
    args: &SnapshotTagArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let (size, sha256) = match &args.snapshot {
        Some(path) => {
            let len = std::fs::metadata(path)
                .map_err(|e| Failure::invalid(format!("reading {}: {e}", path.display())))?
                .len();
            (Some(len), Some(hash_file(path)?))
        }
        None => (None, None),
    };
    let location = match (&args.location, &args.snapshot) {
        (Some(l), _) => l.clone(),
        (None, Some(path)) => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        (None, None) => unreachable!("clap requires --snapshot or --location"),
    };
    let driver = args.driver.unwrap_or(if args.snapshot.is_some() {
        stackpin_core::entry::Driver::Sqlite
    } else {
        stackpin_core::entry::Driver::Other
    });
    let message = pb::RecordSnapshotRequest {
        env: args.env.to_string(),
        driver: driver.to_string(),
        location,
        db_time: args.at.map(crate::view::wire_time),
        db_position: args
            .position
            .position()
            .map(crate::cmd::pins::wire_position),
        size,
        sha256: sha256.map(|d| d.to_string()).unwrap_or_default(),
        request_id: String::new(),
    };
    // The tag beside the snapshot must be writable before the entry is
    // recorded: a retry after a failed write would record the backup twice.
    if let Some(file) = &args.snapshot {
        crate::files::writable(&tag_path(file))?;
    }
    let recorded = crate::cmd::evidence::record_snapshot(server, &args.log_key, message).await?;
    let stackpin_core::entry::Entry::Snapshot(entry) = &recorded.entry else {
        return Err(Failure::verify(
            "the registry recorded another kind of entry",
        ));
    };
    let (tag_file, tag) = match (&args.snapshot, sha256) {
        (Some(file), Some(sha)) => {
            let tag = SnapshotTag {
                snapshot: file.display().to_string(),
                snapshot_sha256: sha.to_string(),
                env: entry.env.to_string(),
                at: entry.db_time.to_string(),
                release_id: entry.live.release_id.to_string(),
                digest: entry.live.digest.to_string(),
                pin_seq: entry.live.seq,
                log_index: recorded.index,
            };
            let path = tag_path(file);
            let json = serde_json::to_vec_pretty(&tag).context("encoding the tag")?;
            write_atomic(&path, &json)?;
            (Some(path.display().to_string()), Some(tag))
        }
        _ => (None, None),
    };
    let line = crate::cmd::evidence::snapshot_line(entry);
    let out = Tagged {
        recorded,
        tag_file,
        tag,
    };
    format.emit(&out, || {
        let mut text = format!(
            "recorded {line}\nlog index  {} ({})\n",
            out.recorded.index,
            if out.recorded.verified {
                "verified"
            } else {
                "not verified: pass --log-key"
            }
        );
        if let Some(f) = &out.tag_file {
            text.push_str(&format!("wrote {f}\n"));
        }
        text
    });
    Ok(())
}
