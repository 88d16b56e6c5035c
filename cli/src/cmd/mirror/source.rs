//! Where a mirror's entries and artifacts come from: a registry over
//! gRPC (one connection per run), or a folder or bucket in the registry's
//! storage layout; entries are handed on in chunks as they arrive.

use bytes::Bytes;
use stackpin_core::digest::Digest;
use stackpin_core::layout;
use stackpin_proto::v1 as pb;

use super::OBJECT_ENTRIES;
use crate::exit::{Failure, Outcome};
use crate::offline::Objects;
use crate::place::{Place, cap};
use crate::progress::Progress;

/// Where the entries and blobs come from.
pub(super) enum Source {
    /// A registry, and the one connection every call of a run shares.
    Registry(Box<(crate::client::Connection, Shared)>),
    /// A folder or a bucket.
    Place(Place),
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
    pub(super) fn name(&self) -> String {
        match self {
            Source::Registry(r) => r.0.url.clone(),
            Source::Place(p) => p.name(),
        }
    }

    pub(super) async fn checkpoint(&self) -> Outcome<String> {
        match self {
            Source::Registry(r) => {
                let mut client = client(&r.0, &r.1).await?;
                Ok(client
                    .get_checkpoint(pb::GetCheckpointRequest {})
                    .await?
                    .into_inner()
                    .note)
            }
            Source::Place(place) => {
                let note = place
                    .need(
                        layout::CHECKPOINT,
                        cap::NOTE,
                        "not a stackpin data folder or mirror",
                    )
                    .await?;
                String::from_utf8(note.to_vec()).map_err(|_| {
                    Failure::verify(format!("{}: not text", place.show(layout::CHECKPOINT)))
                })
            }
        }
    }

    /// Entries `[start, end)`, sent to `chunks` in order, at most
    /// [`OBJECT_ENTRIES`] at a time, so a round of any size holds a few
    /// chunks in memory.
    pub(super) async fn entries(
        &self,
        start: u64,
        end: u64,
        progress: &mut Progress,
        chunks: &Chunks,
    ) -> Outcome {
        let mut chunker = Chunker {
            next: start,
            end,
            buffer: Vec::with_capacity(OBJECT_ENTRIES),
        };
        match self {
            Source::Registry(r) => {
                let mut client = client(&r.0, &r.1).await?;
                while chunker.next < end {
                    let from = chunker.next;
                    let mut stream = client
                        .list_entries(pb::ListEntriesRequest { start: from, end })
                        .await?
                        .into_inner();
                    while chunker.next < end
                        && let Some(e) = stream.message().await?
                    {
                        if e.index != chunker.next {
                            return Err(Failure::verify(format!(
                                "the source sent entry {} where {} was due",
                                e.index, chunker.next
                            )));
                        }
                        chunker.push(e.entry, chunks).await?;
                        progress.tick("mirror: entries", chunker.next, Some(end));
                    }
                    if chunker.next == from {
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
            Source::Place(place) => {
                // One object at a time: a log of any size is copied
                // holding one object and a few chunks.
                let mut objects = Objects::open(place, start, end).await?;
                while let Some((first, object)) = objects.next().await? {
                    for (i, e) in object.into_iter().enumerate() {
                        if (start..end).contains(&(first + i as u64)) {
                            chunker.push(e, chunks).await?;
                        }
                    }
                    progress.tick("mirror: entries", chunker.next, Some(end));
                }
                if chunker.next < end {
                    return Err(Failure::new(
                        crate::exit::UNAVAILABLE,
                        anyhow::anyhow!(
                            "{} holds {} entries, short of its checkpoint's {end}",
                            place.name(),
                            chunker.next
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) async fn blob(&self, digest: &Digest, max_download: u64) -> Outcome<Bytes> {
        match self {
            Source::Registry(r) => {
                let mut client = client(&r.0, &r.1).await?;
                let what = pb::ArtifactRef {
                    r#ref: Some(pb::artifact_ref::Ref::Digest(digest.to_string())),
                };
                let (_, bytes) = crate::download::download(&mut client, what, max_download).await?;
                Ok(Bytes::from(bytes))
            }
            Source::Place(place) => place.artifact(digest, max_download).await?.ok_or_else(|| {
                Failure::verify(format!(
                    "{}: not found, though the log publishes it",
                    place.show(&layout::blob_key(digest))
                ))
            }),
        }
    }
}

/// Where the entries go as they arrive: a chunk's first index and entries.
pub(super) type Chunks = tokio::sync::mpsc::Sender<(u64, Vec<Bytes>)>;

/// Cuts the entries into chunks of [`OBJECT_ENTRIES`] (and the last one).
struct Chunker {
    next: u64,
    end: u64,
    buffer: Vec<Bytes>,
}

impl Chunker {
    async fn push(&mut self, entry: Bytes, chunks: &Chunks) -> Outcome {
        self.buffer.push(entry);
        self.next += 1;
        if self.buffer.len() == OBJECT_ENTRIES || self.next == self.end {
            let first = self.next - self.buffer.len() as u64;
            let chunk = std::mem::take(&mut self.buffer);
            // A closed channel: staging stopped, and says why.
            chunks
                .send((first, chunk))
                .await
                .map_err(|_| Failure::invalid("staging the entries stopped"))?;
        }
        Ok(())
    }
}
