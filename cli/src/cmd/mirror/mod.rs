//! `stackpin mirror SOURCE DEST`: a verified copy of a log, in the
//! registry's own storage layout, kept where the source's region is not:
//! a folder, or a bucket (S3, Azure) a registry can serve read-only.
//!
//! Each round reads the source's signed checkpoint (the log's key, and a
//! policy's quorum when given), fetches the entries the mirror lacks, and
//! checks that the mirror's entries followed by the new ones lead to that
//! checkpoint's root before anything enters the mirror's log (the new
//! entries wait in `mirror/staging/`, a chunk at a time, so a round of any
//! size holds one chunk in memory besides the tree). Then every new
//! artifact's bytes are copied and checked against their digest, the
//! entries are written, and last the checkpoint (and its history copy):
//! an interrupted round leaves the mirror at its previous checkpoint, and
//! the next round goes on from there. A source whose checkpoint is not
//! consistent with the mirror's is refused, naming both, and both notes
//! are kept under `mirror/refused/` as evidence.
//!
//! `--follow` repeats the round; its lag goes to `--metrics-file` in the
//! Prometheus text format (for node_exporter's textfile collector).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use stackpin_core::digest::Digest;
use stackpin_core::entry::Entry;
use stackpin_core::layout;
use stackpin_core::merkle::{self, MemoryTree};
use stackpin_core::note::{Checkpoint, NoteVerifier};
use stackpin_core::time::Timestamp;

use crate::exit::{Failure, Outcome};
use crate::offline::each_object_from;
use crate::place::{Lock, Place, StoreArgs, cap};
use crate::progress::Progress;
use crate::view::Format;

mod source;
use source::Source;

/// At most this many entries per log object the mirror writes.
const OBJECT_ENTRIES: usize = 1024;

#[derive(clap::Args)]
pub struct MirrorArgs {
    /// What to copy: a registry (http://host:7070, read over gRPC), or a
    /// folder or bucket in the registry's storage layout (a data folder,
    /// s3://bucket/prefix, az://container/prefix, another mirror).
    source: String,
    /// Where to copy into: a folder (created if need be), s3://bucket/prefix
    /// or az://container/prefix. A registry can serve it (`--read-only`),
    /// and `restore --from` reads it with nothing running.
    dest: String,
    /// Keep copying: a round every --interval, until stopped.
    #[arg(long)]
    follow: bool,
    /// How long --follow waits between rounds.
    #[arg(long, default_value = "10s", value_parser = stackpin_core::time::parse_duration)]
    interval: Duration,
    /// Write the mirror's size, the source's and the lag here after each
    /// round (Prometheus text format, replaced atomically).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// The endpoint of SOURCE's bucket, when it is not the one
    /// --s3-endpoint or --azure-endpoint names (DEST's): the source
    /// region's server.
    #[arg(long, value_name = "URL")]
    source_endpoint: Option<String>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
    #[command(flatten)]
    store: StoreArgs,
}

/// What the mirror holds: its checkpoint and the tree of its entries.
struct Mirror {
    place: Place,
    note: Option<String>,
    size: u64,
    tree: MemoryTree,
}

impl Mirror {
    /// The mirror in `place` as far as its own checkpoint signs, verified;
    /// empty when it has none yet.
    async fn open(place: &Place, log_key: &NoteVerifier) -> Outcome<Self> {
        if place.get(layout::CHECKPOINT, cap::NOTE).await?.is_none() {
            return Ok(Self {
                place: place.clone(),
                note: None,
                size: 0,
                tree: MemoryTree::new(),
            });
        }
        let (note, checkpoint, tree) =
            crate::offline::OfflineLog::open(place, log_key, &|_| Ok(()))
                .await?
                .into_tree();
        Ok(Self {
            place: place.clone(),
            size: checkpoint.size,
            note: Some(note),
            tree,
        })
    }

    /// Keeps the refused checkpoint beside the mirror's as evidence; where
    /// (or why not).
    async fn keep_evidence(&self, source: &str, note: &str) -> String {
        let key = format!(
            "mirror/refused/{}-{}.txt",
            Timestamp::now().as_micros(),
            self.size
        );
        let text = format!(
            "source {source}\n\nthe source's checkpoint:\n{note}\nthe mirror's checkpoint:\n{}",
            self.note.as_deref().unwrap_or("(none)\n")
        );
        match self.place.put(&key, Bytes::from(text)).await {
            Ok(()) => self.place.show(&key),
            Err(e) => format!(
                "nowhere: writing {} failed: {:#}",
                self.place.show(&key),
                e.error
            ),
        }
    }
}

/// One round's result.
#[derive(Serialize)]
struct Round {
    source: String,
    dest: String,
    /// The mirror's size before and after the round.
    from_size: u64,
    size: u64,
    /// The source checkpoint's size.
    source_size: u64,
    /// How many entries the mirror lacked when the round began.
    lag_entries: u64,
    entries_copied: u64,
    blobs_copied: u64,
    blob_bytes_copied: u64,
}

pub async fn mirror(
    args: &MirrorArgs,
    server: &crate::client::Connection,
    format: Format,
) -> Outcome {
    let log_key = crate::trust::log_key(&args.log_key)?;
    let source = if args.source.starts_with("http://") || args.source.starts_with("https://") {
        let mut c = server.clone();
        c.url.clone_from(&args.source);
        Source::Registry(Box::new((c, tokio::sync::OnceCell::new())))
    } else {
        let place = Place::parse_at(&args.source, &args.store, args.source_endpoint.as_deref())?;
        if let Place::Folder(dir) = &place
            && !dir.is_dir()
        {
            return Err(Failure::invalid(format!(
                "{}: no such folder (a source is a registry URL, http://host:7070, a data \
                 folder, s3://bucket/prefix or az://container/prefix)",
                args.source
            )));
        }
        Source::Place(place)
    };
    let dest = Place::parse(&args.dest, &args.store)?;
    if let Place::Folder(dir) = &dest
        && dir.exists()
        && !dir.is_dir()
    {
        return Err(Failure::invalid(format!(
            "{} is a file: the mirror is a folder",
            dir.display()
        )));
    }
    if args.source_endpoint.is_some() && !matches!(source, Source::Place(Place::Bucket { .. })) {
        return Err(Failure::invalid(
            "--source-endpoint is for a bucket source (s3://, az://)",
        ));
    }
    let same = match (&source, &dest) {
        (Source::Place(Place::Folder(a)), Place::Folder(b)) => {
            std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
        }
        (Source::Place(a @ Place::Bucket { .. }), b @ Place::Bucket { .. }) => {
            a.name() == b.name() && args.source_endpoint.is_none()
        }
        _ => false,
    };
    if same {
        return Err(Failure::invalid(
            "the source and the mirror are the same place",
        ));
    }
    refuse_foreign_log(&dest).await?;
    let held = dest.lock().await?;
    let result = run(
        args,
        &source,
        &dest,
        &log_key,
        &held,
        server.max_download,
        format,
    )
    .await;
    held.release().await;
    result
}

/// A bucket that holds a log no mirror wrote (a registry's own storage)
/// is refused: a mirror sets aside what it did not commit. A folder a
/// registry writes is refused by its lock.
async fn refuse_foreign_log(dest: &Place) -> Outcome {
    if matches!(dest, Place::Bucket { .. })
        && dest.get(layout::CHECKPOINT, cap::NOTE).await?.is_some()
        && dest.get(layout::MIRROR_MARK, cap::RECORD).await?.is_none()
    {
        return Err(Failure::invalid(format!(
            "{} holds a log that no mirror wrote (no {}): a registry's storage is not a \
             mirror's destination; give the mirror a bucket or prefix of its own",
            dest.name(),
            dest.show(layout::MIRROR_MARK)
        )));
    }
    Ok(())
}

async fn run(
    args: &MirrorArgs,
    source: &Source,
    dest: &Place,
    log_key: &NoteVerifier,
    held: &Lock,
    max_download: u64,
    format: Format,
) -> Outcome {
    let mut mirror = Mirror::open(dest, log_key).await?;
    dest.put(
        layout::MIRROR_MARK,
        Bytes::from(format!("{}\n", source.name())),
    )
    .await?;
    loop {
        let round = round(source, &mut mirror, log_key, &args.log_key, max_download).await;
        let round = match round {
            Ok(r) => r,
            // A fork, or a destination promoted meanwhile, is never
            // waited out.
            Err(e)
                if !args.follow
                    || e.code == crate::exit::VERIFY
                    || e.code == crate::exit::CONFLICT =>
            {
                return Err(e);
            }
            Err(e) => {
                eprintln!("mirror: this round failed ({:#}); trying again", e.error);
                held.refresh().await;
                tokio::time::sleep(args.interval).await;
                continue;
            }
        };
        if let Some(path) = &args.metrics_file
            && let Err(e) = write_metrics(path, &round)
        {
            // The copy goes on; the missing figures are their own alarm.
            eprintln!("mirror: writing {} failed: {:#}", path.display(), e.error);
        }
        if let Err(e) = write_status(dest, &round).await {
            eprintln!(
                "mirror: writing {} failed: {:#}",
                dest.show(STATUS),
                e.error
            );
        }
        format.emit(&round, || {
            format!(
                "mirrored {} into {}: {} entries copied (size {} -> {}), {} artifacts ({} \
                 bytes); the source's checkpoint is at {}\n",
                round.source,
                round.dest,
                round.entries_copied,
                round.from_size,
                round.size,
                round.blobs_copied,
                round.blob_bytes_copied,
                round.source_size
            )
        });
        if !args.follow {
            return Ok(());
        }
        held.refresh().await;
        tokio::time::sleep(args.interval).await;
    }
}

async fn round(
    source: &Source,
    mirror: &mut Mirror,
    log_key: &NoteVerifier,
    policy: &crate::trust::LogKey,
    max_download: u64,
) -> Outcome<Round> {
    let note = source.checkpoint().await?;
    let cp = Checkpoint::open(&note, log_key)
        .map_err(|e| Failure::verify(format!("{}: the checkpoint: {e}", source.name())))?;
    // A checkpoint the witnesses have not cosigned yet is not refused for
    // good: the writer serves it before its cosignatures arrive.
    policy.check_quorum(&note).map_err(|e| {
        Failure::new(
            crate::exit::UNAVAILABLE,
            anyhow::anyhow!(
                "{}: the source's checkpoint (size {}) lacks the policy's quorum so far ({:#}); \
                 nothing was copied",
                source.name(),
                cp.size,
                e.error
            ),
        )
    })?;
    let from_size = mirror.size;
    let refuse = async |why: String, mirror: &Mirror| {
        let kept = mirror.keep_evidence(&source.name(), &note).await;
        Failure::verify(format!(
            "{why}: the source's checkpoint (size {}, root {}) is not consistent with the \
             mirror's (size {}); nothing was written; both are kept in {}",
            cp.size,
            cp.root.hex(),
            mirror.size,
            kept
        ))
    };
    if cp.size <= mirror.size {
        let root = merkle::root(&mirror.tree, cp.size).map_err(Failure::verify)?;
        if root != cp.root {
            return Err(refuse(
                "the mirror's entries do not lead to the source's root".into(),
                mirror,
            )
            .await);
        }
        return Ok(Round {
            source: source.name(),
            dest: mirror.place.name(),
            from_size,
            size: mirror.size,
            source_size: cp.size,
            lag_entries: 0,
            entries_copied: 0,
            blobs_copied: 0,
            blob_bytes_copied: 0,
        });
    }
    // The new entries go to a staging folder as they arrive (one log
    // object per chunk), their leaves into a copy of the mirror's tree, and
    // the artifacts they publish are noted; nothing is in the mirror's log
    // until the root is checked.
    let place = &mirror.place;
    // Before anything is written (and again before the commit): objects a
    // promotion wrote past the mirror's checkpoint are not an interrupted
    // round's, and the storage is no longer the mirror's to write.
    still_ours(place, mirror.note.as_deref()).await?;
    clear_staging(place).await?;
    let mut progress = Progress::items("mirror", Some(cp.size));
    let mut tree = mirror.tree.clone();
    let mut digests = Vec::new();
    // What an interrupted round moved into the log past the checkpoint is
    // kept as it is (a registry serving this folder may have applied it)
    // and checked with the rest, when the source reaches as far.
    let mut held = mirror.size;
    let mut kept = (MemoryTree::new(), Vec::new());
    let leftovers = each_object_from(place, mirror.size, u64::MAX, |first, object| {
        if first < mirror.size {
            return Ok(()); // the last object under the checkpoint
        }
        for (i, e) in object.iter().enumerate() {
            kept.0.push(merkle::leaf_hash(e));
            if let Ok(Entry::Publish(p)) = Entry::parse(first + i as u64, e) {
                kept.1.push(p.digest);
            }
        }
        held = first + object.len() as u64;
        Ok(())
    })
    .await;
    if leftovers.is_ok() && held > mirror.size && held <= cp.size {
        for i in 0..held - mirror.size {
            tree.push(merkle::NodeSource::node(&kept.0, 0, i).map_err(Failure::verify)?);
        }
        digests.append(&mut kept.1);
    } else {
        held = mirror.size;
    }
    // The chunks are staged as they arrive, while the next ones are
    // fetched: at most a few are held at once.
    let (chunks, mut arriving) = tokio::sync::mpsc::channel::<(u64, Vec<Bytes>)>(2);
    let fetch = async {
        let fetched = source.entries(held, cp.size, &mut progress, &chunks).await;
        drop(chunks);
        fetched
    };
    let stage = async {
        let mut staged = Vec::new();
        while let Some((first, chunk)) = arriving.recv().await {
            for (i, e) in chunk.iter().enumerate() {
                tree.push(merkle::leaf_hash(e));
                if let Entry::Publish(p) = Entry::parse(first + i as u64, e)
                    .map_err(|err| Failure::verify(err.to_string()))?
                {
                    digests.push(p.digest);
                }
            }
            place.put(&staging_key(first), layout::join(&chunk)).await?;
            staged.push(first);
        }
        Outcome::Ok(staged)
    };
    let (fetched, staged) = tokio::join!(fetch, stage);
    // Staging's own failure explains a fetch that stopped for it.
    let staged = staged?;
    fetched?;
    let root = merkle::root(&tree, cp.size).map_err(Failure::verify)?;
    if root != cp.root {
        let _ = clear_staging(place).await;
        return Err(refuse(
            format!(
                "the mirror's {} entries followed by the source's {} new ones do not lead to the \
                 source's root",
                held,
                cp.size - held
            ),
            mirror,
        )
        .await);
    }
    // Every artifact a new entry publishes, copied and checked first.
    let (mut blobs, mut blob_bytes) = (0, 0);
    for (k, digest) in digests.iter().enumerate() {
        let key = layout::blob_key(digest);
        let held = place
            .artifact(digest, max_download)
            .await
            .ok()
            .flatten()
            .is_some_and(|b| Digest::of(&b) == *digest);
        if !held {
            let bytes = source.blob(digest, max_download).await?;
            if Digest::of(&bytes) != *digest {
                return Err(Failure::verify(format!(
                    "the source's bytes of {digest} do not hash to it"
                )));
            }
            blob_bytes += bytes.len() as u64;
            place.put(&key, bytes).await?;
            blobs += 1;
        }
        progress.tick(
            "mirror: artifacts",
            k as u64 + 1,
            Some(digests.len() as u64),
        );
    }
    still_ours(place, mirror.note.as_deref()).await?;
    // Then the entries (objects an interrupted round left past what is
    // kept go first), then the checkpoint: the round is committed by its
    // last write, once the moves are durable.
    for start in place.object_starts().await? {
        if start >= held {
            place.remove(&layout::object_key(start)).await?;
        }
    }
    for first in &staged {
        place
            .rename(&staging_key(*first), &layout::object_key(*first))
            .await?;
    }
    clear_staging(place).await?;
    place.sync(layout::ENTRIES)?;
    let history = layout::checkpoint_history_key(cp.size);
    if place.get(&history, cap::NOTE).await?.is_none() {
        place.put(&history, Bytes::from(note.clone())).await?;
    }
    place
        .put(layout::CHECKPOINT, Bytes::from(note.clone()))
        .await?;
    progress.finish();
    mirror.tree = tree;
    mirror.size = cp.size;
    mirror.note = Some(note);
    Ok(Round {
        source: source.name(),
        dest: mirror.place.name(),
        from_size,
        size: cp.size,
        source_size: cp.size,
        lag_entries: cp.size - from_size,
        entries_copied: cp.size - from_size,
        blobs_copied: blobs,
        blob_bytes_copied: blob_bytes,
    })
}

/// Checks, before a round changes the mirror's log, that the destination
/// is still the mirror this run opened: its mark is there and its
/// checkpoint is the one the mirror last wrote. A promotion (which removes
/// the mark and begins a new epoch) or another writer since is refused
/// with nothing changed.
async fn still_ours(place: &Place, note: Option<&str>) -> Outcome {
    let mark = place.get(layout::MIRROR_MARK, cap::RECORD).await?;
    let stored = place.get(layout::CHECKPOINT, cap::NOTE).await?;
    let same = stored.as_deref() == note.map(str::as_bytes);
    if mark.is_some() && same {
        return Ok(());
    }
    Err(Failure::new(
        crate::exit::CONFLICT,
        anyhow::anyhow!(
            "{} changed under the mirror ({}): it was promoted, or another process writes it; \
             nothing more was written",
            place.name(),
            if mark.is_none() {
                "its mirror/source mark is gone"
            } else {
                "its checkpoint is not the one the mirror wrote"
            }
        ),
    ))
}

/// Where a chunk waits until the round's root is checked.
fn staging_key(first: u64) -> String {
    format!("{STAGING}/{}", layout::object_name(first))
}

const STAGING: &str = "mirror/staging";

/// Removes what a round staged and did not move into the log.
async fn clear_staging(place: &Place) -> Outcome {
    place.remove_all(STAGING).await
}

/// Where each round leaves its figures, for `restore --from` and anyone
/// looking at the mirror: the mirror's own record, not signed.
pub const STATUS: &str = "mirror/status.json";

/// The last round's figures, with when it completed.
async fn write_status(place: &Place, r: &Round) -> Outcome {
    let mut value = serde_json::to_value(r).map_err(|e| Failure::invalid(e.to_string()))?;
    value["completed_at"] = serde_json::Value::String(Timestamp::now().to_string());
    place.put(STATUS, Bytes::from(format!("{value:#}\n"))).await
}

/// The round's figures for node_exporter's textfile collector.
fn write_metrics(path: &Path, r: &Round) -> Outcome {
    let now = Timestamp::now().to_parts().0;
    let text = format!(
        "# HELP stackpin_mirror_size Entries the mirror holds, under its verified checkpoint.\n\
         # TYPE stackpin_mirror_size gauge\nstackpin_mirror_size {}\n\
         # HELP stackpin_mirror_source_size Entries the source's checkpoint signed at the last round.\n\
         # TYPE stackpin_mirror_source_size gauge\nstackpin_mirror_source_size {}\n\
         # HELP stackpin_mirror_lag_entries Entries the mirror lacked when the last round began.\n\
         # TYPE stackpin_mirror_lag_entries gauge\nstackpin_mirror_lag_entries {}\n\
         # HELP stackpin_mirror_last_success_timestamp_seconds When the last round completed.\n\
         # TYPE stackpin_mirror_last_success_timestamp_seconds gauge\n\
         stackpin_mirror_last_success_timestamp_seconds {now}\n",
        r.size, r.source_size, r.lag_entries,
    );
    crate::files::write_atomic(path, text.as_bytes())
}
