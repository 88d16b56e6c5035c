//! `stackpin mirror SOURCE DEST`: a verified copy of a log, in the
//! registry's own storage layout, kept where the source's region is not.
//!
//! Each round reads the source's signed checkpoint (the log's key, and a
//! policy's quorum when given), fetches the entries the mirror lacks, and
//! checks that the mirror's entries followed by the new ones lead to that
//! checkpoint's root, before anything is written. Then every new
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
use crate::offline::read_entries;
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
    Registry(crate::client::Connection),
    Folder(PathBuf),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Registry(c) => c.url.clone(),
            Source::Folder(p) => p.display().to_string(),
        }
    }

    async fn checkpoint(&self) -> Outcome<String> {
        match self {
            Source::Registry(c) => {
                let mut client = crate::client::connect(c).await?;
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

    /// Entries `[start, end)`.
    async fn entries(&self, start: u64, end: u64, progress: &mut Progress) -> Outcome<Vec<Bytes>> {
        let mut out = Vec::new();
        match self {
            Source::Registry(c) => {
                let mut client = crate::client::connect(c).await?;
                while start + (out.len() as u64) < end {
                    let from = start + out.len() as u64;
                    let mut stream = client
                        .list_entries(pb::ListEntriesRequest { start: from, end })
                        .await?
                        .into_inner();
                    let before = out.len();
                    while let Some(e) = stream.message().await? {
                        if e.index != start + out.len() as u64 {
                            return Err(Failure::verify(format!(
                                "the source sent entry {} where {} was due",
                                e.index,
                                start + out.len() as u64
                            )));
                        }
                        out.push(e.entry);
                        progress.tick("mirror: entries", start + out.len() as u64, Some(end));
                        if start + out.len() as u64 >= end {
                            break;
                        }
                    }
                    if out.len() == before {
                        return Err(Failure::verify(format!(
                            "the source ended its entries at {from}, short of its checkpoint's {end}"
                        )));
                    }
                }
            }
            Source::Folder(dir) => {
                let all = read_entries(dir, |n| progress.tick("mirror: entries", n, Some(end)))?;
                if (all.len() as u64) < end {
                    return Err(Failure::verify(format!(
                        "{} holds {} entries, short of its checkpoint's {end}",
                        dir.display(),
                        all.len()
                    )));
                }
                out = all[usize::try_from(start).unwrap_or(usize::MAX)
                    ..usize::try_from(end).unwrap_or(usize::MAX)]
                    .to_vec();
            }
        }
        Ok(out)
    }

    async fn blob(&self, digest: &Digest) -> Outcome<Bytes> {
        match self {
            Source::Registry(c) => {
                let mut client = crate::client::connect(c).await?;
                let what = pb::ArtifactRef {
                    r#ref: Some(pb::artifact_ref::Ref::Digest(digest.to_string())),
                };
                let (_, bytes) =
                    crate::download::download(&mut client, what, c.max_download).await?;
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

    /// Keeps the refused checkpoint beside the mirror's as evidence; the
    /// file written.
    fn keep_evidence(&self, source: &str, note: &str) -> PathBuf {
        let path = self.dir.join("mirror/refused").join(format!(
            "{}-{}.txt",
            Timestamp::now().as_micros(),
            self.size
        ));
        let text = format!(
            "source {source}\n\nthe source's checkpoint:\n{note}\nthe mirror's checkpoint:\n{}",
            self.note.as_deref().unwrap_or("(none)\n")
        );
        let _ = crate::files::write_atomic(&path, text.as_bytes());
        path
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
        Source::Registry(c)
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
        if let Some(path) = &args.metrics_file {
            write_metrics(path, &round)?;
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
    policy.check_quorum(&note)?;
    let from_size = mirror.size;
    let refuse = |why: String, mirror: &Mirror| {
        let kept = mirror.keep_evidence(&source.name(), &note);
        Failure::verify(format!(
            "{why}: the source's checkpoint (size {}, root {}) is not consistent with the \
             mirror's (size {}); nothing was written; both are kept in {}",
            cp.size,
            cp.root.hex(),
            mirror.size,
            kept.display()
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
    let mut progress = Progress::items("mirror", Some(cp.size));
    let new = source.entries(mirror.size, cp.size, &mut progress).await?;
    let mut tree = mirror.tree.clone();
    for e in &new {
        tree.push(merkle::leaf_hash(e));
    }
    let root = merkle::root(&tree, cp.size).map_err(Failure::verify)?;
    if root != cp.root {
        return Err(refuse(
            format!(
                "the mirror's {} entries followed by the source's {} new ones do not lead to the \
                 source's root",
                mirror.size,
                new.len()
            ),
            mirror,
        ));
    }
    // Every artifact a new entry publishes, copied and checked first.
    let mut digests = Vec::new();
    for (i, e) in new.iter().enumerate() {
        if let Entry::Publish(p) = Entry::parse(mirror.size + i as u64, e)
            .map_err(|err| Failure::verify(err.to_string()))?
        {
            digests.push(p.digest);
        }
    }
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
    // Then the entries, then the checkpoint: the round is committed by its
    // last write.
    for (k, chunk) in new.chunks(OBJECT_ENTRIES).enumerate() {
        let start = mirror.size + (k * OBJECT_ENTRIES) as u64;
        let path = mirror.dir.join(layout::object_key(start));
        crate::files::write_atomic(&path, &layout::join(chunk))?;
    }
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
        entries_copied: new.len() as u64,
        blobs_copied: blobs,
        blob_bytes_copied: blob_bytes,
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
