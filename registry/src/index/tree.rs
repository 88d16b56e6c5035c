//! The Merkle tree over the applied log: complete subtree hashes from the
//! flat files, proofs read through a [`ProofReader`] that checks entry
//! copies against their leaf hashes.

use std::sync::atomic::Ordering;

use super::codec::EntryAt;
use super::{Index, MEMO_LIMIT, files};
use crate::error::{Error, Result};
use crate::merkle::{self, Hash, NodeSource};

impl Index {
    /// The hash of the complete subtree at `level`, `index`.
    ///
    /// # Errors
    /// Internal when the node is missing or unreadable.
    pub fn node(&self, level: u8, index: u64) -> Result<Hash> {
        if !self.complete(level, index)? {
            return Err(Error::internal(format!(
                "index lacks Merkle node {level}/{index}"
            )));
        }
        self.files.hash(level, index)
    }

    /// Whether subtree `index` at `level` (leaves index·2^level ..
    /// (index+1)·2^level) is complete in the applied log.
    pub(super) fn complete(&self, level: u8, index: u64) -> Result<bool> {
        let complete = |applied: u64| level < 64 && index < applied >> level;
        // The in-memory count is updated just after the sled batch, so a
        // reader that found a key of that batch may be ahead of it: sled's
        // own count, applied atomically with the batch, settles it.
        Ok(complete(self.applied.load(Ordering::Acquire)) || complete(self.stored_applied()?))
    }

    /// The first stored Merkle node of the applied tree that disagrees with
    /// its children (see `Files::check_tree`), `None` when all agree.
    ///
    /// # Errors
    /// Internal when the files are short or unreadable.
    pub fn check_tree(&self) -> Result<Option<(u8, u64)>> {
        self.files.check_tree(self.applied()?)
    }

    /// Whether the index's own copy of entry `index` matches its leaf hash;
    /// when it does not, the index is marked for a rebuild. Tells a damaged
    /// index from damaged storage when storage disagrees with the leaf.
    ///
    /// # Errors
    /// Internal when the files are unreadable.
    pub fn copy_agrees(&self, index: u64) -> Result<bool> {
        let copy = self.files.entry(index)?;
        if merkle::leaf_hash(&copy) == self.node(0, index)? {
            return Ok(true);
        }
        self.mark_damaged(index);
        Ok(false)
    }

    /// A reader for one entry and its proof (see [`ProofReader`]).
    pub fn proof_reader(&self) -> ProofReader<'_> {
        ProofReader {
            index: self,
            blocks: std::sync::Mutex::default(),
        }
    }
}

pub struct ProofReader<'a> {
    index: &'a Index,
    blocks: std::sync::Mutex<Vec<(u64, Vec<Hash>)>>,
}

/// How many blocks a [`ProofReader`] keeps.
pub(super) const READER_BLOCKS: usize = 4;

impl ProofReader<'_> {
    /// The index's copy of entry `index`, checked against its leaf hash;
    /// `None` when the copy is damaged (the index is marked for a rebuild;
    /// the caller reads storage instead).
    ///
    /// # Errors
    /// Internal when the entry is not applied or the files are unreadable.
    pub fn entry(&self, index: u64) -> Result<Option<bytes::Bytes>> {
        self.check_copy(index, self.index.files.entry(index)?)
    }

    /// As [`Self::entry`], for an entry whose place is known.
    ///
    /// # Errors
    /// As [`Self::entry`].
    pub fn entry_at(&self, at: EntryAt) -> Result<Option<bytes::Bytes>> {
        self.check_copy(
            at.index,
            self.index.files.entry_at(at.offset, at.len.into())?,
        )
    }

    pub(super) fn check_copy(&self, index: u64, copy: Vec<u8>) -> Result<Option<bytes::Bytes>> {
        Ok(self.verify(index, &copy)?.map(|_| bytes::Bytes::from(copy)))
    }

    /// The leaf hash of entry `index` when `copy` matches it; `None` when
    /// the copy is damaged, which marks the index for a rebuild.
    pub(super) fn verify(&self, index: u64, copy: &[u8]) -> Result<Option<Hash>> {
        let leaf = self.node(0, index)?;
        if merkle::leaf_hash(copy) == leaf {
            return Ok(Some(leaf));
        }
        self.index.mark_damaged(index);
        Ok(None)
    }
}

impl NodeSource for ProofReader<'_> {
    type Error = Error;

    fn memo(&self, start: u64, end: u64) -> Option<Hash> {
        self.index.memo(start, end)
    }

    fn remember(&self, start: u64, end: u64, hash: Hash) {
        self.index.remember(start, end, hash);
    }

    fn node(&self, level: u8, n: u64) -> Result<Hash> {
        let height = files::MEMORY_FROM;
        if level >= height {
            return self.index.node(level, n);
        }
        let block = n >> (height - level);
        if !self.index.complete(height, block)? {
            return self.index.node(level, n);
        }
        let first = files::stored_hash_index(0, block << height);
        let at = usize::try_from(files::stored_hash_index(level, n) - first)
            .map_err(|_| Error::internal("index too large"))?;
        let mut blocks = self
            .blocks
            .lock()
            .map_err(|_| Error::internal("index reader lock"))?;
        let slot = match blocks.iter().position(|(b, _)| *b == block) {
            Some(slot) => slot,
            None => {
                if blocks.len() >= READER_BLOCKS {
                    blocks.remove(0);
                }
                blocks.push((block, self.index.files.block(block)?));
                blocks.len() - 1
            }
        };
        blocks[slot]
            .1
            .get(at)
            .copied()
            .ok_or_else(|| Error::internal(format!("index lacks Merkle node {level}/{n}")))
    }
}

impl NodeSource for Index {
    type Error = Error;

    fn memo(&self, start: u64, end: u64) -> Option<Hash> {
        self.memo.lock().ok()?.get(&(start, end)).copied()
    }

    fn remember(&self, start: u64, end: u64, hash: Hash) {
        if let Ok(mut memo) = self.memo.lock() {
            if memo.len() >= MEMO_LIMIT {
                memo.clear();
            }
            memo.insert((start, end), hash);
        }
    }

    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        Index::node(self, level, index)
    }
}
