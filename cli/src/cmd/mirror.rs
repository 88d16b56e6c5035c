//! `stackpin mirror SOURCE DEST`: a verified copy of a log, in the
//! registry's own storage layout, kept where the source's region is not.
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
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::offline::each_object_from;
use crate::progress::Progress;
use crate::view::Format;

/// At most this many entries per log object the mirror writes.
const OBJECT_ENTRIES: usize = 1024;

#[derive(clap::Args)]
pub struct MirrorArgs {
    /// What to copy: a registry (http://host:7070, read over gRPC), or a
    /// folder in the registry's storage layout (a data folder, another
    /// mirror).
    source: String,
    /// The folder to copy into (created if need be); a registry can serve
    /// it, and `restore --from` reads it with nothing running.
    dest: PathBuf,
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
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

/// Where the entries and blobs come from.
enum Source {
    /// A registry, and the one connection every call of a run shares.
    Registry(Box<(crate::client::Connection, Shared)>),
    Folder(PathBuf),
}

/// The connection every call to the source registry shares.
type Shared = tokio::sync::OnceCell<crate::client::Client>;

/// The shared connection to the source registry, made at first use.
async fn client(c: &crate::client::Connection, cell: &Shared) -> Outcome<crate::client::Client> {
    cell.get_or_try_init(|| crate::client::connect(c))
        .await
        .cloned()
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Registry(r) => r.0.url.clone(),
            Source::Folder(p) => p.display().to_string(),
        }
    }

    async fn checkpoint(&self) -> Outcome<String> {
        match self {
            Source::Registry(r) => {
                let mut client = client(&r.0, &r.1).await?;
                Ok(client
                    .get_checkpoint(pb::GetCheckpointRequest {})
                    .await?
                    .into_inner()
                    .note)
            }
            Source::Folder(dir) => {
                let path = dir.join(layout::CHECKPOINT);
                std::fs::read_to_string(&path).map_err(|e| {
                    Failure::invalid(format!(
                        "{}: {e}: not a stackpin data folder or mirror",
                        path.display()
                    ))
                })
            }
        }
    }

    /// Entries `[start, end)`, handed to `chunk` in order, at most
    /// [`OBJECT_ENTRIES`] at a time, so a round of any size holds one
    /// chunk in memory.
    async fn entries(
        &self,
        start: u64,
        end: u64,
        progress: &mut Progress,
        mut chunk: impl FnMut(u64, Vec<Bytes>) -> Outcome,
    ) -> Outcome {
        let mut next = start;
        let mut buffer = Vec::with_capacity(OBJECT_ENTRIES);
        let mut take = |entry: Bytes, next: &mut u64, buffer: &mut Vec<Bytes>| -> Outcome {
            buffer.push(entry);
            *next += 1;
            if buffer.len() == OBJECT_ENTRIES || *next == end {
                let first = *next - buffer.len() as u64;
                chunk(first, std::mem::take(buffer))?;
            }
            Ok(())
        };
        match self {
            Source::Registry(r) => {
                let mut client = client(&r.0, &r.1).await?;
                while next < end {
                    let from = next;
                    let mut stream = client
                        .list_entries(pb::ListEntriesRequest { start: from, end })
                        .await?
                        .into_inner();
                    while next < end
                        && let Some(e) = stream.message().await?
                    {
                        if e.index != next {
                            return Err(Failure::verify(format!(
                                "the source sent entry {} where {next} was due",
                                e.index
                            )));
                        }
                        take(e.entry, &mut next, &mut buffer)?;
                        progress.tick("mirror: entries", next, Some(end));
                    }
                    if next == from {
                        return Err(Failure::new(
                            crate::exit::UNAVAILABLE,
                            anyhow::anyhow!(
                                "the source ended its entries at {from}, short of its \
                                 checkpoint's {end}"
                            ),
                        ));
                    }
                }
            }
            Source::Folder(dir) => {
                // One object at a time: a folder of any size is copied
                // holding one object and one chunk.
                each_object_from(dir, start, end, |first, object| {
                    for (i, e) in object.into_iter().enumerate() {
                        let index = first + i as u64;
                        if (start..end).contains(&index) {
                            take(e, &mut next, &mut buffer)?;
                        }
                    }
                    progress.tick("mirror: entries", next, Some(end));
                    Ok(())
                })?;
                if next < end {
                    return Err(Failure::new(
                        crate::exit::UNAVAILABLE,
                        anyhow::anyhow!(
                            "{} holds {next} entries, short of its checkpoint's {end}",
                            dir.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn blob(&self, digest: &Digest) -> Outcome<Bytes> {
        match self {
            Source::Registry(r) => {
                let mut client = client(&r.0, &r.1).await?;
                let what = pb::ArtifactRef {
                    r#ref: Some(pb::artifact_ref::Ref::Digest(digest.to_string())),
                };
                let (_, bytes) =
                    crate::download::download(&mut client, what, r.0.max_download).await?;
                Ok(Bytes::from(bytes))
            }
            Source::Folder(dir) => {
                let path = dir.join(layout::blob_key(digest));
                std::fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|e| Failure::verify(format!("{}: {e}", path.display())))
            }
        }
    }
}

/// What the mirror holds: its checkpoint and the tree of its entries.
struct Mirror {
    dir: PathBuf,
    note: Option<String>,
    size: u64,
    tree: MemoryTree,
}

impl Mirror {
    /// The mirror in `dir` as far as its own checkpoint signs, verified;
    /// empty when it has none yet.
    fn open(dir: &Path, log_key: &NoteVerifier) -> Outcome<Self> {
        if !dir.join(layout::CHECKPOINT).exists() {
            return Ok(Self {
                dir: dir.to_owned(),
                note: None,
                size: 0,
                tree: MemoryTree::new(),
            });
        }
        let (note, checkpoint, tree) =
            crate::offline::OfflineLog::open(dir, log_key, &|_| Ok(()))?.into_tree();
        Ok(Self {
            dir: dir.to_owned(),
            size: checkpoint.size,
            note: Some(note),
            tree,
        })
    }

    /// Keeps the refused checkpoint beside the mirror's as evidence; where
    /// (or why not).
    fn keep_evidence(&self, source: &str, note: &str) -> String {
        let path = self.dir.join("mirror/refused").join(format!(
            "{}-{}.txt",
            Timestamp::now().as_micros(),
            self.size
        ));
        let text = format!(
            "source {source}\n\nthe source's checkpoint:\n{note}\nthe mirror's checkpoint:\n{}",
            self.note.as_deref().unwrap_or("(none)\n")
        );
        match crate::files::write_atomic(&path, text.as_bytes()) {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("nowhere: writing {} failed: {:#}", path.display(), e.error),
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
        let dir = PathBuf::from(&args.source);
        if !dir.is_dir() {
            return Err(Failure::invalid(format!(
                "{}: no such folder (a source is a registry URL, http://host:7070, or a data \
                 folder)",
                args.source
            )));
        }
        Source::Folder(dir)
    };
    if args.dest.exists() && !args.dest.is_dir() {
        return Err(Failure::invalid(format!(
            "{} is a file: the mirror is a folder",
            args.dest.display()
        )));
    }
    if let Source::Folder(src) = &source
        && std::fs::canonicalize(src).ok() == std::fs::canonicalize(&args.dest).ok()
    {
        return Err(Failure::invalid(
            "the source and the mirror are the same folder",
        ));
    }
    let _held = lock(&args.dest)?;
    let mut mirror = Mirror::open(&args.dest, &log_key)?;
    loop {
        let round = round(&source, &mut mirror, &log_key, &args.log_key).await;
        let round = match round {
            Ok(r) => r,
            // A fork is never waited out.
            Err(e) if !args.follow || e.code == crate::exit::VERIFY => return Err(e),
            Err(e) => {
                eprintln!("mirror: this round failed ({:#}); trying again", e.error);
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
        tokio::time::sleep(args.interval).await;
    }
}

async fn round(
    source: &Source,
    mirror: &mut Mirror,
    log_key: &NoteVerifier,
    policy: &crate::trust::LogKey,
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
    let refuse = |why: String, mirror: &Mirror| {
        let kept = mirror.keep_evidence(&source.name(), &note);
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
            ));
        }
        return Ok(Round {
            source: source.name(),
            dest: mirror.dir.display().to_string(),
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
    let staging = mirror.dir.join("mirror/staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| Failure::invalid(format!("{}: {e}", staging.display())))?;
    let mut progress = Progress::items("mirror", Some(cp.size));
    let mut tree = mirror.tree.clone();
    let mut digests = Vec::new();
    // What an interrupted round moved into the log past the checkpoint is
    // kept as it is (a registry serving this folder may have applied it)
    // and checked with the rest, when the source reaches as far.
    let mut held = mirror.size;
    let mut kept = (MemoryTree::new(), Vec::new());
    let leftovers = each_object_from(&mirror.dir, mirror.size, u64::MAX, |first, object| {
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
    });
    if leftovers.is_ok() && held > mirror.size && held <= cp.size {
        for i in 0..held - mirror.size {
            tree.push(merkle::NodeSource::node(&kept.0, 0, i).map_err(Failure::verify)?);
        }
        digests.append(&mut kept.1);
    } else {
        held = mirror.size;
    }
    let mut staged = Vec::new();
    source
        .entries(held, cp.size, &mut progress, |first, chunk| {
            for (i, e) in chunk.iter().enumerate() {
                tree.push(merkle::leaf_hash(e));
                if let Entry::Publish(p) = Entry::parse(first + i as u64, e)
                    .map_err(|err| Failure::verify(err.to_string()))?
                {
                    digests.push(p.digest);
                }
            }
            let path = staging.join(layout::object_name(first));
            crate::files::write_atomic(&path, &layout::join(&chunk))?;
            staged.push(first);
            Ok(())
        })
        .await?;
    let root = merkle::root(&tree, cp.size).map_err(Failure::verify)?;
    if root != cp.root {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(refuse(
            format!(
                "the mirror's {} entries followed by the source's {} new ones do not lead to the \
                 source's root",
                held,
                cp.size - held
            ),
            mirror,
        ));
    }
    // Every artifact a new entry publishes, copied and checked first.
    let (mut blobs, mut blob_bytes) = (0, 0);
    for (k, digest) in digests.iter().enumerate() {
        let path = mirror.dir.join(layout::blob_key(digest));
        let held = std::fs::read(&path).is_ok_and(|b| Digest::of(&b) == *digest);
        if !held {
            let bytes = source.blob(digest).await?;
            if Digest::of(&bytes) != *digest {
                return Err(Failure::verify(format!(
                    "the source's bytes of {digest} do not hash to it"
                )));
            }
            crate::files::write_atomic(&path, &bytes)?;
            blobs += 1;
            blob_bytes += bytes.len() as u64;
        }
        progress.tick(
            "mirror: artifacts",
            k as u64 + 1,
            Some(digests.len() as u64),
        );
    }
    // Then the entries (objects an interrupted round left past what is
    // kept go first), then the checkpoint: the round is committed by its
    // last write, once the renames are durable.
    let entries_dir = mirror.dir.join(layout::ENTRIES);
    std::fs::create_dir_all(&entries_dir)
        .map_err(|e| Failure::invalid(format!("{}: {e}", entries_dir.display())))?;
    if let Ok(listing) = std::fs::read_dir(&entries_dir) {
        for e in listing.filter_map(Result::ok) {
            if e.file_name()
                .to_str()
                .and_then(layout::parse_object_name)
                .is_some_and(|start| start >= held)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for first in &staged {
        let from = staging.join(layout::object_name(*first));
        let to = mirror.dir.join(layout::object_key(*first));
        std::fs::rename(&from, &to)
            .map_err(|e| Failure::invalid(format!("moving {} into place: {e}", from.display())))?;
    }
    let _ = std::fs::remove_dir(&staging);
    std::fs::File::open(&entries_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Failure::invalid(format!("syncing {}: {e}", entries_dir.display())))?;
    let history = mirror.dir.join(layout::checkpoint_history_key(cp.size));
    if !history.exists() {
        crate::files::write_atomic(&history, note.as_bytes())?;
    }
    crate::files::write_atomic(&mirror.dir.join(layout::CHECKPOINT), note.as_bytes())?;
    progress.finish();
    mirror.tree = tree;
    mirror.size = cp.size;
    mirror.note = Some(note);
    Ok(Round {
        source: source.name(),
        dest: mirror.dir.display().to_string(),
        from_size,
        size: cp.size,
        source_size: cp.size,
        lag_entries: cp.size - from_size,
        entries_copied: cp.size - from_size,
        blobs_copied: blobs,
        blob_bytes_copied: blob_bytes,
    })
}

/// Holds `DEST/mirror/lock` for as long as the mirror runs: two mirrors
/// into one folder would set aside each other's uncommitted objects. A
/// folder a registry writes (it holds `registry.lock`) is refused too.
fn lock(dest: &Path) -> Outcome<std::fs::File> {
    let taken = |path: &Path| -> Outcome<Option<std::fs::File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Failure::invalid(format!("locking {}: {e}", path.display())))
            }
        }
    };
    let registry = dest.join("registry.lock");
    if registry.exists() && taken(&registry)?.is_none() {
        return Err(Failure::invalid(format!(
            "{} is the data folder of a running registry (it holds {}): a mirror is a folder of \
             its own",
            dest.display(),
            registry.display()
        )));
    }
    let path = dest.join("mirror/lock");
    std::fs::create_dir_all(dest.join("mirror"))
        .map_err(|e| Failure::invalid(format!("{}: {e}", dest.display())))?;
    taken(&path)?.ok_or_else(|| {
        Failure::invalid(format!(
            "another `stackpin mirror` is copying into {} (it holds {})",
            dest.display(),
            path.display()
        ))
    })
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
