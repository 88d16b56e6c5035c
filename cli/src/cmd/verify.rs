//! `stackpin checkpoint`, `verify` and `audit`: checking the registry with
//! no trust in it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use stackpin_core::audit::{Audit, Report};
use stackpin_core::layout;
use stackpin_core::proof::RestoreProof;
use stackpin_core::state::{DEFAULT_CLOCK_SKEW, Rules};
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome, VERIFY};
use crate::files::proof_path;
use crate::place::cap;
use crate::progress::Progress;
use crate::view::Format;

#[derive(clap::Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct CheckpointView {
    origin: String,
    size: u64,
    root: String,
    note: String,
}

pub async fn checkpoint(
    args: &CheckpointArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    let reader = crate::reader::Reader::new(&args.log_key, server, state, None)?;
    let Some(log_key) = reader.key().cloned() else {
        // Checking the checkpoint is this command's whole job.
        return Err(Failure::invalid(format!(
            "the log's verifier key is needed: {}",
            crate::reader::HOW_TO_TRUST
        )));
    };
    let mut client = crate::client::connect(server).await?;
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner()
        .note;
    let cp = reader.anchor(&mut client, &note).await?.checkpoint;
    let view = CheckpointView {
        origin: cp.origin,
        size: cp.size,
        root: cp.root.hex(),
        note,
    };
    format.emit(&view, || {
        format!(
            "{}verified: signed by {}, consistent with the last checkpoint seen\n",
            view.note,
            log_key.name()
        )
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The artifact file.
    file: PathBuf,
    /// Its proof (default: FILE.tlog-proof).
    #[arg(long)]
    proof: Option<PathBuf>,
    #[command(flatten)]
    trusted_keys: crate::trust::TrustedKeysArg,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct VerifiedView {
    file: String,
    release_id: String,
    digest: String,
    key_id: String,
    env: String,
    pin_seq: u64,
    live_from: String,
    live_until: Option<String>,
    checkpoint_size: u64,
    checks: Vec<&'static str>,
}

/// The checks `RestoreProof::verify` performs, for the report.
pub const CHECKS: [&str; 6] = [
    "checkpoint signature",
    "publish entry inclusion",
    "artifact digest",
    "publisher signature",
    "pin entry inclusion",
    "successor link",
];

pub fn verify(args: &VerifyArgs, format: Format) -> Outcome {
    let trusted = args.trusted_keys.load()?;
    let log_key = crate::trust::log_key(&args.log_key)?;
    let proof_path = args.proof.clone().unwrap_or_else(|| proof_path(&args.file));
    let bytes = std::fs::read(&args.file)
        .map_err(|e| Failure::invalid(format!("reading {}: {e}", args.file.display())))?;
    let text = std::fs::read_to_string(&proof_path)
        .map_err(|e| Failure::invalid(format!("reading {}: {e}", proof_path.display())))?;
    let proof = RestoreProof::parse_tlog_proof(&text)
        .map_err(|e| Failure::verify(format!("proof file: {e}")))?;
    args.log_key.check_quorum(&proof.checkpoint)?;
    let v = proof
        .verify(&bytes, &log_key, &trusted)
        .map_err(Failure::verify)?;
    let (from, until) = v.interval();
    let view = VerifiedView {
        file: args.file.display().to_string(),
        release_id: v.publish.release_id.to_string(),
        digest: v.publish.digest.to_string(),
        key_id: v.key_id.to_string(),
        env: v.pin.env.to_string(),
        pin_seq: v.pin.seq,
        live_from: from.to_string(),
        live_until: until.map(|u| u.to_string()),
        checkpoint_size: v.checkpoint.size,
        checks: CHECKS.to_vec(),
    };
    format.emit(&view, || {
        format!(
            "verified {}\nrelease    {}\ndigest     {}\nsigned by  {}\npin        #{} of {}, live [{}, {})\nlog        checkpoint of size {}\nchecks     {}\n",
            view.file,
            view.release_id,
            view.digest,
            view.key_id,
            view.pin_seq,
            view.env,
            view.live_from,
            view.live_until.as_deref().unwrap_or("no later pin in this proof"),
            view.checkpoint_size,
            view.checks.join(", ")
        )
    });
    Ok(())
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Audit a log's storage directly instead of the server: a data
    /// folder, a mirror, s3://bucket/prefix or az://container/prefix.
    #[arg(
        long,
        visible_alias = "data-dir",
        value_name = "DIR|URL",
        conflicts_with = "tiles"
    )]
    from: Option<String>,
    #[command(flatten)]
    store: crate::place::StoreArgs,
    /// Audit the log served as C2SP tlog-tiles under this URL (the
    /// registry's http_listen, or a mirror or CDN of it): the checkpoint,
    /// every entry bundle and every hash tile. Blobs are not checked (a
    /// tiles URL serves the log only).
    #[arg(long, value_name = "URL")]
    tiles: Option<String>,
    #[command(flatten)]
    trusted_keys: crate::trust::TrustedKeysArg,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
    /// How far after its recording a pin may activate: the registry's
    /// `clock_skew` setting, when it is not the default [default: 5s].
    #[arg(long, value_parser = stackpin_core::time::parse_duration)]
    clock_skew: Option<std::time::Duration>,
    /// An in-toto predicate type the registry accepts as a publish besides
    /// stackpin's own: its `accepted_predicate_types` setting (repeatable).
    #[arg(long = "accept-predicate-type", value_name = "URI")]
    accept_predicate_types: Vec<String>,
}

pub async fn audit(
    args: &AuditArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    format: Format,
) -> Outcome {
    let trusted = args.trusted_keys.load()?;
    let log_key = crate::trust::log_key(&args.log_key)?;
    let mut audit = Audit::with_rules(Rules {
        configured: trusted,
        clock_skew: args.clock_skew.unwrap_or(DEFAULT_CLOCK_SKEW),
        predicate_types: Some(args.accept_predicate_types.clone()),
    });
    let mut progress = Progress::items("audit", None);
    let quorum = |note: &str| args.log_key.check_quorum(note);
    let source = match (&args.from, &args.tiles) {
        (Some(from), _) => {
            let place = crate::place::Place::parse(from, &args.store)?;
            let max_download = server.max_download;
            audit_place(
                &place,
                max_download,
                &mut audit,
                &log_key,
                &quorum,
                &mut progress,
            )
            .await?;
            place.name()
        }
        (None, Some(url)) => {
            let source = crate::tiles::TilesSource::new(url, server)?;
            audit_tiles(&source, &mut audit, &log_key, &quorum, state, &mut progress).await?;
            source.url().to_owned()
        }
        (None, None) => {
            audit_server(server, &mut audit, &log_key, &quorum, state, &mut progress).await?;
            server.url.clone()
        }
    };
    progress.finish();
    let report = audit.finish();
    print_report(&report, &source, format);
    if report.ok() {
        Ok(())
    } else if report.only_missing_keys() {
        // The auditor lacks an input: not (yet) evidence of anything.
        Err(Failure::invalid(format!(
            "the audit cannot judge {} publish(es) signed by publisher key(s) {} that \
             --trusted-keys does not hold and the log never added: pass the keys trusted when \
             they were published (--trusted-keys is repeatable). Nothing else was found wrong; \
             if this registry never trusted such a key, treat it as an incident",
            report.failures.len(),
            report.missing_keys.join(", ")
        ))
        .after_result())
    } else {
        let classes: std::collections::BTreeSet<String> = report
            .failures
            .iter()
            .map(|f| f.class.to_string())
            .collect();
        Err(Failure::new(
            VERIFY,
            anyhow::anyhow!(
                "audit failed: {} problem(s) in {}",
                report.failures.len(),
                classes.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
        .after_result())
    }
}

fn print_report(report: &Report, source: &str, format: Format) {
    #[derive(Serialize)]
    struct View<'a> {
        source: &'a str,
        ok: bool,
        #[serde(flatten)]
        report: &'a Report,
    }
    let view = View {
        source,
        ok: report.ok(),
        report,
    };
    format.emit(&view, || {
        let mut out = format!(
            "audited {source}\nentries      {} (checkpoint covers {})\npublishes    {}\npins         {} in {} environment(s)\nkey changes  {}\nsnapshots    {}\ndrills       {}\nblobs        {} re-hashed\n",
            report.entries,
            report.checkpoint_size,
            report.publishes,
            report.pins,
            report.environments,
            report.key_changes,
            report.snapshots,
            report.drills,
            report.blobs_checked
        );
        if report.tiles_checked > 0 {
            out.push_str(&format!(
                "tiles        {} compared with the entries\n",
                report.tiles_checked
            ));
        }
        if report.ok() {
            out.push_str("result       ok: every check passed\n");
        } else {
            out.push_str(&format!("result       {} failure(s):\n", report.failures.len()));
            for f in &report.failures {
                out.push_str(&format!("  [{}] {}\n", f.class, f.message));
            }
        }
        out
    });
}

async fn audit_server(
    server: &crate::client::Connection,
    audit: &mut Audit,
    log_key: &stackpin_core::note::NoteVerifier,
    quorum: &dyn Fn(&str) -> Outcome,
    state: Option<&Path>,
    progress: &mut Progress,
) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let (cp, note) = crate::trust::latest_checkpoint(&mut client, log_key, state).await?;
    quorum(&note)?;
    let mut next = 0;
    while next < cp.size {
        let mut stream = client
            .list_entries(pb::ListEntriesRequest {
                start: next,
                end: cp.size,
            })
            .await?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    audit.entry(e.index, &e.entry);
                    next = e.index + 1;
                    progress.tick("audit: entries", next, Some(cp.size));
                }
                Ok(None) => break,
                Err(status) => {
                    // Skip the unreadable entry so the rest is still audited.
                    audit.unreadable(
                        next,
                        &format!("the registry refused it: {}", status.message()),
                    );
                    next += 1;
                    break;
                }
            }
        }
    }
    audit.checkpoint(&note, log_key);
    audit.signatures();
    let digests = audit.digests();
    for (i, digest) in digests.iter().enumerate() {
        let what = pb::ArtifactRef {
            r#ref: Some(pb::artifact_ref::Ref::Digest(digest.to_string())),
        };
        match crate::download::download(&mut client, what, server.max_download).await {
            Ok((_, bytes)) => audit.blob(digest, Ok(&bytes)),
            Err(f) => audit.blob(digest, Err(format!("{:#}", f.error))),
        }
        progress.tick("audit: blobs", i as u64 + 1, Some(digests.len() as u64));
    }
    Ok(())
}

async fn audit_tiles(
    source: &crate::tiles::TilesSource,
    audit: &mut Audit,
    log_key: &stackpin_core::note::NoteVerifier,
    quorum: &dyn Fn(&str) -> Outcome,
    state: Option<&Path>,
    progress: &mut Progress,
) -> Outcome {
    use futures::StreamExt as _;
    use stackpin_core::tiles;
    let note = source.checkpoint().await?;
    let cp = stackpin_core::note::Checkpoint::open(&note, log_key)
        .map_err(|e| Failure::verify(format!("{}/checkpoint: {e}", source.url())))?;
    quorum(&note)?;
    let (bundles, hashes): (Vec<_>, Vec<_>) = tiles::tiles_of(cp.size)
        .into_iter()
        .partition(|t| t.level.is_none());
    // Bundles in order (the audit replays the entries), a few in flight.
    let mut fetched = futures::stream::iter(bundles)
        .map(|tile| async move { (tile, source.tile(&tile).await) })
        .buffered(4);
    while let Some((tile, bytes)) = fetched.next().await {
        audit.bundle(&tile, bytes.as_deref().map_err(String::as_str));
        progress.tick("audit: entries", audit.entries(), Some(cp.size));
    }
    let total = hashes.len() as u64;
    let mut fetched = futures::stream::iter(hashes)
        .map(|tile| async move { (tile, source.tile(&tile).await) })
        .buffered(8);
    let mut done = 0;
    while let Some((tile, bytes)) = fetched.next().await {
        audit.tile(&tile, bytes.as_deref().map_err(String::as_str));
        done += 1;
        progress.tick("audit: hash tiles", done, Some(total));
    }
    audit.checkpoint(&note, log_key);
    audit.signatures();
    // The checkpoint remembered from earlier runs must sign a prefix of
    // this log: compared with the root of the entries just read.
    let roots = |size: u64| audit.root_at(size);
    crate::trust::accept_checkpoint_with(&note, log_key, state, false, async |small, large| {
        if large.size > cp.size {
            eprintln!(
                "warning: {}/checkpoint (size {}) is older than the checkpoint remembered (size \
                 {}); a mirror or cache may be behind. Its consistency with the remembered one \
                 is not checked",
                source.url(),
                cp.size,
                large.size
            );
            return Ok(Ok(()));
        }
        Ok(match roots(small.size) {
            Some(root) if root == small.root => Ok(()),
            Some(_) => Err(format!(
                "the root of the first {} entries served is not the remembered one",
                small.size
            )),
            None => Err(format!(
                "the first {} entries were not all read",
                small.size
            )),
        })
    })
    .await?;
    Ok(())
}

/// Audits the log stored in `place` (a data folder, a mirror, a bucket).
async fn audit_place(
    place: &crate::place::Place,
    max_download: u64,
    audit: &mut Audit,
    log_key: &stackpin_core::note::NoteVerifier,
    quorum: &dyn Fn(&str) -> Outcome,
    progress: &mut Progress,
) -> Outcome {
    let objects = place.object_starts().await?;
    if objects.is_empty() && place.get(layout::CHECKPOINT, cap::NOTE).await?.is_none() {
        return Err(Failure::invalid(format!(
            "{} holds no {} and no {}: not a stackpin data folder, mirror or bucket",
            place.name(),
            layout::ENTRIES,
            layout::CHECKPOINT
        )));
    }
    // Every log object present, in order: an object may hold several
    // entries (a group commit), and a gap (a deleted object) is seen as
    // entries no object holds.
    let total = objects.len() as u64;
    for (i, start) in objects.into_iter().enumerate() {
        let key = layout::object_key(start);
        match place.get(&key, cap::LOG_OBJECT).await {
            Ok(Some(bytes)) => audit.object(start, Ok(&bytes)),
            Ok(None) => audit.object(start, Err(&format!("{}: gone", place.show(&key)))),
            Err(e) => audit.object(start, Err(&format!("{:#}", e.error))),
        }
        progress.tick("audit: log objects", i as u64 + 1, Some(total));
    }
    // The full tiles stored beside the log, as far as the registry says it
    // wrote them (a mirror reading the bucket trusts these).
    let written = place
        .get(layout::TILES_WRITTEN, cap::RECORD)
        .await?
        .and_then(|t| std::str::from_utf8(&t).ok()?.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(audit.entries());
    let stored = stackpin_core::tiles::full_tiles_between(0, written);
    let total = stored.len() as u64;
    for (i, tile) in stored.into_iter().enumerate() {
        let path = tile.path();
        let bytes = match place.get(&path, cap::TILE).await {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(format!("{}: not found", place.show(&path))),
            Err(e) => Err(format!("{:#}", e.error)),
        };
        let bytes = bytes.as_deref().map_err(String::as_str);
        if tile.level.is_some() {
            audit.tile(&tile, bytes);
        } else {
            audit.stored_bundle(&tile, bytes);
        }
        progress.tick("audit: stored tiles", i as u64 + 1, Some(total));
    }
    match place.get(layout::CHECKPOINT, cap::NOTE).await {
        Ok(Some(note)) => {
            let note = String::from_utf8_lossy(&note).into_owned();
            quorum(&note)?;
            audit.checkpoint(&note, log_key);
        }
        Ok(None) => audit.no_checkpoint(&format!(
            "no checkpoint at {}",
            place.show(layout::CHECKPOINT)
        )),
        Err(e) => audit.no_checkpoint(&format!("{:#}", e.error)),
    }
    // Every checkpoint of the history signs a prefix of the same log.
    let mut sizes: Vec<u64> = place
        .names(layout::CHECKPOINTS)
        .await?
        .iter()
        .filter_map(|n| layout::parse_checkpoint_history_name(n))
        .collect();
    sizes.sort_unstable();
    for size in sizes {
        let key = layout::checkpoint_history_key(size);
        match place.get(&key, cap::NOTE).await {
            Ok(Some(note)) => {
                audit.stored_checkpoint(&key, &String::from_utf8_lossy(&note), log_key);
            }
            Ok(None) => audit.stored_checkpoint(&key, "unreadable: gone", log_key),
            Err(e) => {
                audit.stored_checkpoint(&key, &format!("unreadable: {:#}", e.error), log_key);
            }
        }
    }
    audit.signatures();
    let digests = audit.digests();
    for (i, digest) in digests.iter().enumerate() {
        match place.artifact(digest, max_download).await {
            Ok(Some(bytes)) => audit.blob(digest, Ok(&bytes)),
            Ok(None) => audit.blob(
                digest,
                Err(format!(
                    "{}: not found",
                    place.show(&layout::blob_key(digest))
                )),
            ),
            Err(e) => audit.blob(digest, Err(format!("{:#}", e.error))),
        }
        progress.tick("audit: blobs", i as u64 + 1, Some(digests.len() as u64));
    }
    Ok(())
}
