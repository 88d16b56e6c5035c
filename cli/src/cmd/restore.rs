//! `stackpin restore`: the artifact live at an instant (or database
//! position), resolved, downloaded and verified against the signed log
//! before it is written, with the database target that goes with it. The
//! pipeline ([`restore_verified`]) is shared with `drill run`, which
//! restores exactly as `restore` does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use stackpin_core::proof::RestoreProof;
use stackpin_proto::v1 as pb;

use super::targets::{DbTarget, Query, db_target};
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
    #[command(flatten)]
    targets: super::targets::TargetArgs,
    /// Read the log from this folder or bucket (a mirror `stackpin mirror`
    /// wrote, a copied data folder, s3://bucket/prefix, az://container/
    /// prefix) instead of a registry: everything is checked against its
    /// signed checkpoint, and no registry is asked.
    #[arg(long, value_name = "DIR|URL")]
    from: Option<String>,
    #[command(flatten)]
    store: crate::place::StoreArgs,
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
    fresh: crate::freshness::Freshness,
    plan: bool,
    /// The folder read instead of a registry (`--from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(flatten)]
    pub resolution: ResolveView,
    pub(crate) database: DbTarget,
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
                "plan (nothing downloaded or written)\n{}{}boundary   {margin}would write {} and {}.tlog-proof, after checking the sha256\nchecked    publisher signature ({}), log inclusion in checkpoint {}\n{}",
                out.source_line(),
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
            "restored {}\n{}{}verified   sha256, publisher signature ({}), log inclusion of publish, pin and successor in checkpoint {}\n{}proof      {}\n{}",
            out.out,
            out.source_line(),
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

impl Restored {
    /// Where the answer was read, when not from a registry.
    fn source_line(&self) -> String {
        self.source.as_ref().map_or_else(String::new, |s| {
            format!("source     {s} (a folder, checked whole; no registry asked)\n")
        })
    }

    /// The PostgreSQL recovery settings of the target (none for a query
    /// PostgreSQL cannot recover to).
    pub fn postgres_settings(&self) -> Vec<String> {
        self.database
            .targets
            .postgresql
            .as_ref()
            .map(|p| p.settings.clone())
            .unwrap_or_default()
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
            targets: super::targets::TargetArgs::drill(wal_archive),
            from: None,
            store: crate::place::StoreArgs::default(),
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
    if let Some(from) = &args.from {
        let place = crate::place::Place::parse(from, &args.store)?;
        return restore_offline(
            args,
            &place,
            server.max_download,
            state,
            trusted.as_ref(),
            out.as_deref(),
        )
        .await;
    }
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
    let answer = Answer {
        proof,
        log_key,
        pin: resolved.pin.pin("pin entry")?.clone(),
        checkpoint_size: resolved.anchor.checkpoint.size,
        fresh: resolved.anchor.fresh,
        source: None,
        resolution: resolved.view,
    };
    if args.plan {
        return answer.planned(args, trusted.as_ref()).await;
    }
    let what = pb::ArtifactRef {
        r#ref: Some(pb::artifact_ref::Ref::Digest(answer.pin.digest.to_string())),
    };
    let (_, bytes) = download(&mut client, what, server.max_download).await?;
    answer
        .written(args, &bytes, trusted.as_ref(), out.as_deref())
        .await
}

/// What a restore proved, from a registry or a folder, before anything is
/// written: the one path to a plan or a written artifact.
struct Answer {
    proof: RestoreProof,
    log_key: stackpin_core::note::NoteVerifier,
    pin: stackpin_core::entry::PinEntry,
    checkpoint_size: u64,
    fresh: crate::freshness::Freshness,
    /// The folder read, for `--from`.
    source: Option<String>,
    resolution: ResolveView,
}

impl Answer {
    /// The database targets of the query, for the proved pin.
    async fn database(&self, args: &RestoreArgs) -> Outcome<DbTarget> {
        let query = match (args.resolve.position(), args.resolve.at) {
            (Some(p), _) => Query::Position(p),
            (None, Some(at)) => Query::Time(at),
            (None, None) => return Err(Failure::invalid("--at or a database position is needed")),
        };
        let backups = args.targets.backups().await;
        Ok(db_target(&args.targets, &query, &self.pin, &backups))
    }

    /// A plan: checked against the signed checkpoint like a restore,
    /// minus the artifact's bytes, which a plan does not read.
    async fn planned(
        self,
        args: &RestoreArgs,
        trusted: Option<&stackpin_core::signing::TrustedKeys>,
    ) -> Outcome<Restored> {
        let key_id = match trusted {
            Some(t) => self
                .proof
                .verify_entries(&self.log_key, t)
                .map_err(Failure::verify)?
                .key_id
                .to_string(),
            None => "not checked: no --trusted-keys".to_owned(),
        };
        Ok(Restored {
            out: String::new(),
            proof: String::new(),
            key_id,
            database: self.database(args).await?,
            checkpoint_size: self.checkpoint_size,
            fresh: self.fresh,
            plan: true,
            source: self.source,
            resolution: self.resolution,
        })
    }

    /// The artifact's `bytes`, checked against the signed checkpoint (not
    /// taken from any answer: they must hash to what the log says and
    /// carry the publisher's signature), written with its proof: both
    /// replaced together or not at all.
    async fn written(
        self,
        args: &RestoreArgs,
        bytes: &[u8],
        trusted: Option<&stackpin_core::signing::TrustedKeys>,
        out: Option<&Path>,
    ) -> Outcome<Restored> {
        let (Some(trusted), Some(out)) = (trusted, out) else {
            return Err(Failure::invalid("--out and --trusted-keys are required"));
        };
        let verified = self
            .proof
            .verify(bytes, &self.log_key, trusted)
            .map_err(Failure::verify)?;
        let proof_file = crate::files::proof_path(out);
        crate::files::say_replaced(out);
        let proof_text = self.proof.to_tlog_proof();
        crate::files::write_all_atomic(&[
            (out, bytes),
            (proof_file.as_path(), proof_text.as_bytes()),
        ])?;
        Ok(Restored {
            out: out.display().to_string(),
            proof: proof_file.display().to_string(),
            key_id: verified.key_id.to_string(),
            database: self.database(args).await?,
            checkpoint_size: self.checkpoint_size,
            fresh: self.fresh,
            plan: false,
            source: self.source,
            resolution: self.resolution,
        })
    }
}

/// `restore --from DIR`: the same answer and checks from a folder, with no
/// registry: the folder's log verified whole against its signed
/// checkpoint, the pin live at the instant and its successor read from it
/// (so "still live" means no later pin in the signed log), the artifact's
/// bytes from the folder checked against the publish entry and the
/// publisher's signature, and the `.tlog-proof` written as online.
async fn restore_offline(
    args: &RestoreArgs,
    place: &crate::place::Place,
    max_download: u64,
    state: Option<&Path>,
    trusted: Option<&stackpin_core::signing::TrustedKeys>,
    out: Option<&Path>,
) -> Outcome<Restored> {
    let log_key = crate::trust::log_key(&args.log_key).map_err(|e| {
        Failure::verify(format!(
            "{:#}: a restore from a folder proves everything against the log's key",
            e.error
        ))
    })?;
    let quorum = |note: &str| args.log_key.check_quorum(note);
    let log = crate::offline::OfflineLog::open(place, &log_key, &quorum).await?;
    crate::offline::say_last_round(place).await;
    // As fresh as its witnesses say (--max-age), and never behind what this
    // CLI verified before without saying so: a folder is a copy that may
    // lag. A newer one must extend the remembered checkpoint.
    let fresh =
        crate::freshness::freshness(args.log_key.policy()?.as_ref(), &log.note, args.max_age)?;
    let size = log.checkpoint.size;
    crate::trust::accept_checkpoint_with(
        &log.note,
        &log_key,
        state,
        false,
        async |small, large| {
            if large.size > size {
                eprintln!(
                    "warning: {} signs {size} entries, fewer than the {} this CLI verified before: \
                 the folder lags behind the log, and what it says is still live may have been \
                 replaced since",
                    place.name(),
                    large.size
                );
                return Ok(Ok(()));
            }
            Ok(match log.root_at(small.size) {
                Some(root) if root == small.root => Ok(()),
                _ => Err(format!(
                    "the first {} entries in {} are not the ones this CLI verified before",
                    small.size,
                    place.name()
                )),
            })
        },
    )
    .await?;
    let margin = args
        .resolve
        .margin
        .unwrap_or(stackpin_core::defaults::BOUNDARY_MARGIN);
    let found = log.resolve(
        &args.resolve.env,
        args.resolve.at,
        args.resolve.position(),
        margin,
    )?;
    let answer = Answer {
        proof: RestoreProof {
            checkpoint: log.note.clone(),
            publish: log.proved(found.publish_index)?,
            pin: log.proved(found.pin_index)?,
            next: found.next_index.map(|i| log.proved(i)).transpose()?,
        },
        log_key,
        pin: found.pin,
        checkpoint_size: log.checkpoint.size,
        fresh,
        source: Some(place.name()),
        resolution: found.view,
    };
    if args.plan {
        return answer.planned(args, trusted).await;
    }
    let bytes = log.blob(&answer.pin.digest, max_download).await?;
    answer.written(args, &bytes, trusted, out).await
}
