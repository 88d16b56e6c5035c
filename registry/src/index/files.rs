//! The index's flat files: Merkle hashes and entry copies.
//!
//! Like the rest of the index these are derived from the log, but they are
//! plain files rather than sled trees. Both grow strictly in log order and
//! are read at computed offsets, so a file needs no lookup structure; kept
//! in sled they were most of its pages (at a million entries, three of every
//! four keys and nine tenths of the bytes), which pushed the small, hot
//! lookup keys out of its cache and made rebuilds rewrite them again and
//! again.
//!
//! ```text
//! hashes       32 bytes per complete Merkle subtree, in the order subtrees
//!              complete: leaf i, then every subtree leaf i completes (the
//!              "stored hashes" layout of Go's sumdb tlog package)
//! entries.pos  per entry: u64 BE offset and u64 BE length in entries.dat
//! entries.dat  the entries' bytes, back to back
//! ```
//!
//! The hashes of subtrees of 16 leaves and more (one in eight hashes) are
//! also kept in memory: every proof needs one at each upper level, and a
//! read there would be a system call per level.
//!
//! How much of each file is valid follows from the count of entries the
//! sled tree says are applied. Bytes beyond it are left over from a batch
//! that was written here but never applied in sled; the next apply of those
//! entries writes the same positions again. Files are written before the
//! sled batch that applies their entries, so a killed process leaves them
//! at least as far as sled. They are synced before sled at shutdown, but
//! sled also flushes on its own, so after a power loss they may hold less
//! than sled says: files shorter than that make the registry rebuild the
//! index at start, a damaged copy is refused when read (and marks the index
//! for a rebuild), and the start-up check of the root against the stored
//! checkpoint covers the newest hashes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::merkle::Hash;

/// The position, in hashes, of the complete subtree `n` at `level`.
pub fn stored_hash_index(level: u8, n: u64) -> u64 {
    // A subtree is written right after the right child that completes it;
    // walk down to the leaf that completes it. Before leaf m come m leaves
    // and m/2 + m/4 + ... parents; after it, `level` parents up to this one.
    let mut leaf = n;
    for _ in 0..level {
        leaf = 2 * leaf + 1;
    }
    let mut before = 0u64;
    let mut m = leaf;
    while m > 0 {
        before += m;
        m >>= 1;
    }
    before + u64::from(level)
}

/// How many hashes a log of `n` entries stores.
pub fn stored_hash_count(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut count = stored_hash_index(0, n - 1) + 1;
    let mut i = n - 1;
    while i & 1 == 1 {
        count += 1;
        i >>= 1;
    }
    count
}

/// One flat file, on disk or (for tests) in memory.
enum Backing {
    Disk(File),
    Memory(RwLock<Vec<u8>>),
}

impl Backing {
    fn open(path: &Path) -> Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(Self::Disk)
            .map_err(|e| Error::internal(format!("opening index file {}: {e}", path.display())))
    }

    fn len(&self) -> Result<u64> {
        match self {
            Self::Disk(f) => f
                .metadata()
                .map(|m| m.len())
                .map_err(|e| Error::internal(format!("index file: {e}"))),
            Self::Memory(v) => Ok(v.read().map_or(0, |v| v.len() as u64)),
        }
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        let short = || Error::internal(format!("index file is shorter than expected (at {at})"));
        match self {
            Self::Disk(f) => f.read_exact_at(buf, at).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => short(),
                _ => Error::internal(format!("reading index file: {e}")),
            }),
            Self::Memory(v) => {
                let v = v.read().map_err(|_| Error::internal("index file lock"))?;
                let start = usize::try_from(at).map_err(|_| short())?;
                let src = v.get(start..start + buf.len()).ok_or_else(short)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    fn write_at(&self, buf: &[u8], at: u64) -> Result<()> {
        match self {
            Self::Disk(f) => f
                .write_all_at(buf, at)
                .map_err(|e| Error::internal(format!("writing index file: {e}"))),
            Self::Memory(v) => {
                let mut v = v.write().map_err(|_| Error::internal("index file lock"))?;
                let start = usize::try_from(at).map_err(|_| Error::internal("index too large"))?;
                if v.len() < start + buf.len() {
                    v.resize(start + buf.len(), 0);
                }
                v[start..start + buf.len()].copy_from_slice(buf);
                Ok(())
            }
        }
    }

    fn sync(&self) -> Result<()> {
        match self {
            Self::Disk(f) => f
                .sync_data()
                .map_err(|e| Error::internal(format!("syncing index file: {e}"))),
            Self::Memory(_) => Ok(()),
        }
    }
}

/// The lowest Merkle level kept in memory; also the height of a block: the
/// hashes below it for 16 consecutive leaves, stored together.
pub const MEMORY_FROM: u8 = 4;

/// Hashes in a block: 16 leaves, 8 + 4 + 2 parents and the block's root.
const BLOCK_HASHES: usize = 31;

/// The three flat files of an index.
pub struct Files {
    hashes: Backing,
    pos: Backing,
    data: Backing,
    /// `upper[l - MEMORY_FROM][n]`: the hash of subtree `n` at level `l`.
    upper: RwLock<Vec<Vec<Hash>>>,
}

impl Files {
    /// Opens (or creates) the files in `dir`.
    ///
    /// # Errors
    /// Internal when a file cannot be opened.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            hashes: Backing::open(&dir.join("hashes"))?,
            pos: Backing::open(&dir.join("entries.pos"))?,
            data: Backing::open(&dir.join("entries.dat"))?,
            upper: RwLock::default(),
        })
    }

    /// Files held in memory, for throwaway indexes.
    pub fn memory() -> Self {
        Self {
            hashes: Backing::Memory(RwLock::default()),
            pos: Backing::Memory(RwLock::default()),
            data: Backing::Memory(RwLock::default()),
            upper: RwLock::default(),
        }
    }

    /// Checks that the files hold everything `applied` entries wrote (they
    /// may lack it after a power loss, if sled's flush outlived theirs).
    ///
    /// # Errors
    /// Internal naming the short file.
    pub fn check(&self, applied: u64) -> Result<()> {
        let need_hashes = stored_hash_count(applied) * 32;
        let need_pos = applied * 16;
        let short = |name: &str, have: u64, need: u64| {
            Error::internal(format!(
                "index file {name} holds {have} bytes, {need} are needed for {applied} applied entries"
            ))
        };
        let have = self.hashes.len()?;
        if have < need_hashes {
            return Err(short("hashes", have, need_hashes));
        }
        let have = self.pos.len()?;
        if have < need_pos {
            return Err(short("entries.pos", have, need_pos));
        }
        let need_data = self.data_end(applied)?;
        let have = self.data.len()?;
        if have < need_data {
            return Err(short("entries.dat", have, need_data));
        }
        self.load_upper(applied)
    }

    /// Reads the upper levels of the tree of `applied` entries into memory.
    fn load_upper(&self, applied: u64) -> Result<()> {
        let mut upper = Vec::new();
        let mut level = MEMORY_FROM;
        while level < 64 && applied >> level > 0 {
            let mut hashes = Vec::new();
            for n in 0..applied >> level {
                let mut h = [0u8; 32];
                self.hashes
                    .read_at(&mut h, stored_hash_index(level, n) * 32)?;
                hashes.push(Hash::from_bytes(h));
            }
            upper.push(hashes);
            level += 1;
        }
        *self
            .upper
            .write()
            .map_err(|_| Error::internal("index lock"))? = upper;
        Ok(())
    }

    /// Checks every stored interior hash of the tree of `applied` leaves
    /// against its two children, in one sequential read of the file, and
    /// returns the first node `(level, n)` that disagrees. Together with a
    /// signed root this ties every stored hash to the signature: a cache
    /// damaged in a way no file length shows is found at start instead of
    /// being signed or served.
    ///
    /// # Errors
    /// Internal when the file is short or unreadable.
    pub fn check_tree(&self, applied: u64) -> Result<Option<(u8, u64)>> {
        const CHUNK: u64 = 1 << 15; // hashes per read: 1 MiB
        let total = stored_hash_count(applied);
        let mut buf = Vec::new();
        let mut at = 0u64; // next hash to read, in stored order
        let mut pos = 0usize; // next hash within `buf`
        let mut next = |buf: &mut Vec<u8>, pos: &mut usize| -> Result<Hash> {
            if *pos * 32 >= buf.len() {
                let n = CHUNK.min(total - at);
                buf.resize(usize::try_from(n * 32).unwrap_or(0), 0);
                self.hashes.read_at(buf, at * 32)?;
                at += n;
                *pos = 0;
            }
            let h = Hash::from_slice(&buf[*pos * 32..*pos * 32 + 32])
                .ok_or_else(|| Error::internal("index hash out of range"))?;
            *pos += 1;
            Ok(h)
        };
        let mut stack: Vec<Hash> = Vec::new();
        for i in 0..applied {
            stack.push(next(&mut buf, &mut pos)?);
            for (level, n) in crate::merkle::completed_nodes(i) {
                let stored = next(&mut buf, &mut pos)?;
                let (Some(right), Some(left)) = (stack.pop(), stack.pop()) else {
                    return Ok(Some((level, n)));
                };
                if crate::merkle::node_hash(&left, &right) != stored {
                    return Ok(Some((level, n)));
                }
                stack.push(stored);
            }
        }
        Ok(None)
    }

    /// The hash of the complete subtree `n` at `level`.
    ///
    /// # Errors
    /// Internal when the file is short or unreadable.
    pub fn hash(&self, level: u8, n: u64) -> Result<Hash> {
        if level >= MEMORY_FROM {
            let upper = self
                .upper
                .read()
                .map_err(|_| Error::internal("index lock"))?;
            let cached = upper
                .get(usize::from(level - MEMORY_FROM))
                .and_then(|l| l.get(usize::try_from(n).ok()?));
            if let Some(h) = cached {
                return Ok(*h);
            }
        }
        let mut h = [0u8; 32];
        self.hashes
            .read_at(&mut h, stored_hash_index(level, n) * 32)?;
        Ok(Hash::from_bytes(h))
    }

    /// The hashes of block `b` (leaves `16b..16b+16`), in stored order,
    /// with one read; the block must be complete.
    ///
    /// # Errors
    /// Internal when the file is short or unreadable.
    pub fn block(&self, b: u64) -> Result<Vec<Hash>> {
        let mut raw = [0u8; BLOCK_HASHES * 32];
        self.hashes
            .read_at(&mut raw, stored_hash_index(0, b << MEMORY_FROM) * 32)?;
        Ok(raw
            .chunks_exact(32)
            .map(|c| Hash::from_slice(c).unwrap_or(Hash::from_bytes([0; 32])))
            .collect())
    }

    /// The copy of entry `index`.
    ///
    /// # Errors
    /// Internal when a file is short or unreadable.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>> {
        let (offset, len) = self.position(index)?;
        self.entry_at(offset, len)
    }

    /// The entry copy of `len` bytes at `offset`.
    ///
    /// # Errors
    /// Internal when the file is short or unreadable, or `len` absurd.
    pub fn entry_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= 1 << 30)
            .ok_or_else(|| Error::internal(format!("index holds an entry length of {len}")))?;
        let mut buf = vec![0u8; len];
        self.data.read_at(&mut buf, offset)?;
        Ok(buf)
    }

    pub(super) fn position(&self, index: u64) -> Result<(u64, u64)> {
        let mut b = [0u8; 16];
        self.pos.read_at(&mut b, index * 16)?;
        let (offset, len) = b.split_at(8);
        Ok((
            u64::from_be_bytes(offset.try_into().unwrap_or_default()),
            u64::from_be_bytes(len.try_into().unwrap_or_default()),
        ))
    }

    /// Where the data of entry `index` starts: the end of the one before.
    fn data_end(&self, index: u64) -> Result<u64> {
        if index == 0 {
            return Ok(0);
        }
        let (offset, len) = self.position(index - 1)?;
        Ok(offset + len)
    }

    /// Starts staging the writes of entries `first..`.
    ///
    /// # Errors
    /// Internal when the files are unreadable.
    pub fn appender(&self, first: u64) -> Result<Appender> {
        Ok(Appender {
            next_hash: stored_hash_index(0, first),
            first_hash: stored_hash_index(0, first),
            hashes: Vec::new(),
            first_entry: first,
            pos: Vec::new(),
            data_start: self.data_end(first)?,
            data: Vec::new(),
            upper: Vec::new(),
        })
    }

    /// Writes what `a` staged.
    ///
    /// # Errors
    /// Internal when a write fails.
    pub fn write(&self, a: &Appender) -> Result<()> {
        self.data.write_at(&a.data, a.data_start)?;
        self.pos.write_at(&a.pos, a.first_entry * 16)?;
        self.hashes.write_at(&a.hashes, a.first_hash * 32)?;
        let mut upper = self
            .upper
            .write()
            .map_err(|_| Error::internal("index lock"))?;
        for (level, n, hash) in &a.upper {
            let at = usize::from(level - MEMORY_FROM);
            if upper.len() == at {
                upper.push(Vec::new());
            }
            let hashes = upper
                .get_mut(at)
                .ok_or_else(|| Error::internal("Merkle level written out of order"))?;
            let n = usize::try_from(*n).map_err(|_| Error::internal("index too large"))?;
            // A batch written here but never applied in sled is written again.
            match n.cmp(&hashes.len()) {
                std::cmp::Ordering::Less => hashes[n] = *hash,
                std::cmp::Ordering::Equal => hashes.push(*hash),
                std::cmp::Ordering::Greater => {
                    return Err(Error::internal("Merkle node written out of order"));
                }
            }
        }
        Ok(())
    }

    /// Forces the files to disk.
    ///
    /// # Errors
    /// Internal when the sync fails.
    pub fn sync(&self) -> Result<()> {
        self.data.sync()?;
        self.pos.sync()?;
        self.hashes.sync()
    }
}

/// The writes of a batch of entries, staged in memory (all three files grow
/// contiguously, so each is one write).
pub struct Appender {
    first_hash: u64,
    next_hash: u64,
    hashes: Vec<u8>,
    first_entry: u64,
    pos: Vec<u8>,
    data_start: u64,
    data: Vec<u8>,
    /// The staged hashes that [`Files`] also keeps in memory.
    upper: Vec<(u8, u64, Hash)>,
}

impl Appender {
    /// Stages the hash of subtree `n` at `level`, which must be the next
    /// one to complete.
    ///
    /// # Errors
    /// Internal when it is not.
    pub fn push_hash(&mut self, level: u8, n: u64, hash: &Hash) -> Result<()> {
        if stored_hash_index(level, n) != self.next_hash {
            return Err(Error::internal(format!(
                "Merkle node {level}/{n} staged out of order"
            )));
        }
        self.hashes.extend_from_slice(hash.as_bytes());
        self.next_hash += 1;
        if level >= MEMORY_FROM {
            self.upper.push((level, n, *hash));
        }
        Ok(())
    }

    /// The hash of subtree `n` at `level`, staged here or already written.
    ///
    /// # Errors
    /// Internal when the files are unreadable.
    pub fn hash(&self, files: &Files, level: u8, n: u64) -> Result<Hash> {
        let at = stored_hash_index(level, n);
        match at.checked_sub(self.first_hash) {
            Some(i) if i < self.next_hash - self.first_hash => {
                let i = usize::try_from(i * 32).map_err(|_| Error::internal("index too large"))?;
                Hash::from_slice(&self.hashes[i..i + 32])
                    .ok_or_else(|| Error::internal("staged hash out of range"))
            }
            _ => files.hash(level, n),
        }
    }

    /// Stages the copy of the next entry; returns where it will be
    /// (offset and length in entries.dat).
    pub fn push_entry(&mut self, bytes: &[u8]) -> (u64, u64) {
        let offset = self.data_start + self.data.len() as u64;
        let len = bytes.len() as u64;
        self.pos.extend_from_slice(&offset.to_be_bytes());
        self.pos.extend_from_slice(&len.to_be_bytes());
        self.data.extend_from_slice(bytes);
        (offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hash_layout_matches_go_tlog() {
        // From golang.org/x/mod/sumdb/tlog: leaves 0,1 then node 1/0, leaf 2,
        // leaf 3, node 1/1, node 2/0, leaf 4, ...
        assert_eq!(stored_hash_index(0, 0), 0);
        assert_eq!(stored_hash_index(0, 1), 1);
        assert_eq!(stored_hash_index(1, 0), 2);
        assert_eq!(stored_hash_index(0, 2), 3);
        assert_eq!(stored_hash_index(0, 3), 4);
        assert_eq!(stored_hash_index(1, 1), 5);
        assert_eq!(stored_hash_index(2, 0), 6);
        assert_eq!(stored_hash_index(0, 4), 7);
        assert_eq!(stored_hash_count(0), 0);
        assert_eq!(stored_hash_count(1), 1);
        assert_eq!(stored_hash_count(2), 3);
        assert_eq!(stored_hash_count(3), 4);
        assert_eq!(stored_hash_count(4), 7);
        assert_eq!(stored_hash_count(5), 8);
    }

    #[test]
    fn every_hash_has_its_own_slot_in_completion_order() {
        // Walking the leaves in order and the subtrees each completes must
        // visit slots 0, 1, 2, ... with no gap or repeat.
        let mut next = 0;
        for i in 0..5000u64 {
            assert_eq!(stored_hash_index(0, i), next);
            next += 1;
            for (level, n) in crate::merkle::completed_nodes(i) {
                assert_eq!(stored_hash_index(level, n), next, "{level}/{n}");
                next += 1;
            }
            assert_eq!(stored_hash_count(i + 1), next);
        }
    }

    #[test]
    fn staged_and_written_entries_and_hashes_read_back() {
        let files = Files::memory();
        let mut a = files.appender(0).unwrap();
        a.push_hash(0, 0, &Hash::from_bytes([1; 32])).unwrap();
        assert_eq!(a.push_entry(b"zero"), (0, 4));
        assert!(
            a.push_hash(1, 0, &Hash::from_bytes([9; 32])).is_err(),
            "out of order"
        );
        a.push_hash(0, 1, &Hash::from_bytes([2; 32])).unwrap();
        assert_eq!(a.push_entry(b"one!"), (4, 4));
        assert_eq!(a.hash(&files, 0, 1).unwrap(), Hash::from_bytes([2; 32]));
        a.push_hash(1, 0, &Hash::from_bytes([3; 32])).unwrap();
        files.write(&a).unwrap();
        files.check(2).unwrap();
        assert!(files.check(3).is_err());
        let mut b = files.appender(2).unwrap();
        assert_eq!(b.hash(&files, 1, 0).unwrap(), Hash::from_bytes([3; 32]));
        b.push_hash(0, 2, &Hash::from_bytes([4; 32])).unwrap();
        assert_eq!(b.push_entry(b"two"), (8, 3));
        files.write(&b).unwrap();
        assert_eq!(files.entry(0).unwrap(), b"zero");
        assert_eq!(files.entry(1).unwrap(), b"one!");
        assert_eq!(files.entry(2).unwrap(), b"two");
        assert_eq!(files.entry_at(4, 4).unwrap(), b"one!");
        assert_eq!(files.hash(0, 2).unwrap(), Hash::from_bytes([4; 32]));
        assert!(files.entry(3).is_err());
    }

    #[test]
    fn check_tree_finds_the_first_stored_node_that_disagrees_with_its_children() {
        use crate::merkle::NodeSource as _;
        let files = Files::memory();
        let mut tree = crate::merkle::MemoryTree::new();
        for i in 0..40u64 {
            let leaf = crate::merkle::leaf_hash(&i.to_be_bytes());
            tree.push(leaf);
            let mut a = files.appender(i).unwrap();
            a.push_hash(0, i, &leaf).unwrap();
            let _ = a.push_entry(b"x");
            for (level, n) in crate::merkle::completed_nodes(i) {
                a.push_hash(level, n, &tree.node(level, n).unwrap())
                    .unwrap();
            }
            files.write(&a).unwrap();
        }
        assert_eq!(files.check_tree(40).unwrap(), None);
        // One byte of the node over leaves 16..32 flipped.
        let at = stored_hash_index(4, 1) * 32;
        let mut byte = [0u8; 1];
        files.hashes.read_at(&mut byte, at).unwrap();
        files.hashes.write_at(&[byte[0] ^ 1], at).unwrap();
        assert_eq!(files.check_tree(40).unwrap(), Some((4, 1)));
        assert_eq!(
            files.check_tree(16).unwrap(),
            None,
            "a smaller tree does not reach it"
        );
    }

    #[test]
    fn upper_levels_read_the_same_from_memory_and_from_the_file() {
        let files = Files::memory();
        let mut next = 0u64;
        for i in 0..100u64 {
            let mut a = files.appender(i).unwrap();
            a.push_hash(0, i, &Hash::from_bytes([i as u8; 32])).unwrap();
            let _ = a.push_entry(b"x");
            for (level, n) in crate::merkle::completed_nodes(i) {
                let h = Hash::from_bytes([(next % 251) as u8; 32]);
                next += 1;
                a.push_hash(level, n, &h).unwrap();
            }
            files.write(&a).unwrap();
        }
        // What was kept in memory while writing equals what a reopen loads.
        let written = files.upper.read().unwrap().clone();
        assert_eq!(written.len(), 3, "levels 4, 5 and 6 of 100 leaves");
        files.check(100).unwrap();
        assert_eq!(*files.upper.read().unwrap(), written);
        // A block read returns what single reads do.
        for b in 0..6u64 {
            let block = files.block(b).unwrap();
            let first = stored_hash_index(0, b << MEMORY_FROM);
            for level in 0..=MEMORY_FROM {
                for n in (b << (MEMORY_FROM - level))..((b + 1) << (MEMORY_FROM - level)) {
                    let at = (stored_hash_index(level, n) - first) as usize;
                    let mut raw = [0u8; 32];
                    files
                        .hashes
                        .read_at(&mut raw, stored_hash_index(level, n) * 32)
                        .unwrap();
                    assert_eq!(block[at].as_bytes(), &raw, "block {b} node {level}/{n}");
                }
            }
        }
        for (l, hashes) in written.iter().enumerate() {
            for (n, h) in hashes.iter().enumerate() {
                let mut raw = [0u8; 32];
                files
                    .hashes
                    .read_at(
                        &mut raw,
                        stored_hash_index(l as u8 + MEMORY_FROM, n as u64) * 32,
                    )
                    .unwrap();
                assert_eq!(&raw, h.as_bytes());
            }
        }
    }
}
