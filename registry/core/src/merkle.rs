//! RFC 6962 / RFC 9162 Merkle tree hashing, inclusion proofs and consistency
//! proofs over the append-only log.
//!
//! Long because its known-answer vectors and property tests sit beside the
//! proofs they check: the code itself is about half the file.
//!
//!
//! Leaves hash as `SHA-256(0x00 || entry)`, interior nodes as
//! `SHA-256(0x01 || left || right)`, and a tree of `n > 1` leaves splits at the
//! largest power of two `k < n`: the left part is always a *perfect* subtree.
//! Node `(level, index)` names the perfect, aligned subtree over leaves
//! `[index << level, (index + 1) << level)`. A tree of 7 leaves `d0..d6`:
//!
//! ```text
//!                     root = MTH(d0..d6)
//!                   /                   \
//!             (2,0)                      MTH(d4..d6)    <- not perfect:
//!            /     \                     /         \       recomputed on read
//!       (1,0)       (1,1)           (1,2)           (0,6)
//!       /   \       /   \           /   \
//!   (0,0) (0,1) (0,2) (0,3)     (0,4) (0,5)
//! ```
//!
//! Only perfect subtrees are stored. Once its last leaf is appended a perfect
//! subtree never changes again, so it can be written exactly once (like the
//! log entries themselves) and never rewritten. The right edge of the tree,
//! which changes on every append, is never stored; it is rebuilt from at most
//! `log2 n` perfect subtrees, so roots and proofs cost `O(log n)` reads of
//! write-once data. [`completed_nodes`] says which nodes to store after each
//! append; [`NodeSource`] is how the functions here read them back.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest as _, Sha256};

/// A SHA-256 tree hash: a leaf, an interior node or a root.
///
/// A value of its own rather than a bare `[u8; 32]`, so a tree hash cannot be
/// mistaken for an artifact digest or a key, and so its text form (lowercase
/// hex, as in entries and the index) is spelled in one place.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; 32]);

impl Hash {
    /// The hash with these bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The hash in `bytes`, `None` unless it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, the spelling used in log entries (`prev_pin`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// When `text` is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| {
            format!(
                "{} is not a hash (64 hex digits)",
                crate::error::shown(text)
            )
        })?;
        Ok(Self(out))
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<[u8; 32]> for Hash {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.hex())
    }
}

/// Serialized as its hex text, as the index has always stored it.
impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The RFC 6962 root of the empty tree: `SHA-256("")`.
pub const EMPTY_ROOT: Hash = Hash([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

/// The hash of a log entry: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    Hash(
        Sha256::new()
            .chain_update([0x00])
            .chain_update(entry)
            .finalize()
            .into(),
    )
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Hash(
        Sha256::new()
            .chain_update([0x01])
            .chain_update(left.0)
            .chain_update(right.0)
            .finalize()
            .into(),
    )
}

/// Source of stored hashes of *perfect, aligned* subtrees: level `L`, index
/// `i` covers leaves `[i * 2^L, (i + 1) * 2^L)`; level 0 holds leaf hashes.
pub trait NodeSource {
    /// Why a node could not be read.
    type Error;

    /// The stored hash of node `(level, index)`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;

    /// A hash of the imperfect range `[start, end)` computed earlier, if
    /// the source keeps them. Proofs against one tree size all need the
    /// same few ranges along its right edge.
    fn memo(&self, _start: u64, _end: u64) -> Option<Hash> {
        None
    }

    /// Offers the hash of the imperfect range `[start, end)` for
    /// [`Self::memo`].
    fn remember(&self, _start: u64, _end: u64, _hash: Hash) {}
}

/// The largest power of two strictly less than `n`; `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of leaves `[start, end)` following RFC 6962's MTH recursion
/// (split at the largest power of two `k < n`), reading perfect aligned
/// subtrees from `src` instead of recursing into them.
///
/// Every range the RFC recursion visits from a root (roots, proof siblings)
/// starts at a multiple of its largest power-of-two part, and costs at most
/// `popcount(end - start)` lookups. Other ranges are still hashed correctly,
/// at up to one lookup per leaf. An empty range (`end <= start`) hashes to
/// [`EMPTY_ROOT`].
pub fn subtree_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    if end <= start {
        return Ok(EMPTY_ROOT);
    }
    let n = end - start;
    if n.is_power_of_two() && start & (n - 1) == 0 {
        let level = n.trailing_zeros();
        return src.node(level as u8, start >> level);
    }
    if let Some(h) = src.memo(start, end) {
        return Ok(h);
    }
    let mid = start + split_point(n);
    let left = subtree_hash(src, start, mid)?;
    let right = subtree_hash(src, mid, end)?;
    let hash = node_hash(&left, &right);
    src.remember(start, end, hash);
    Ok(hash)
}

/// The root of the first `size` leaves; [`EMPTY_ROOT`] for 0.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    subtree_hash(src, 0, size)
}

/// Which perfect nodes become complete when leaf `index` (0-based) is
/// appended: `(level, node_index)` for levels >= 1, lowest level first.
///
/// Appending leaf 3 completes `(1, 1)` and `(2, 0)`. Callers store the leaf at
/// `(0, index)` and then compute these in order, each from its two children
/// `(level - 1, 2 * node_index)` and `(level - 1, 2 * node_index + 1)`.
pub fn completed_nodes(index: u64) -> Vec<(u8, u64)> {
    // u128 so the very last leaf (index u64::MAX) completes the level-64 root.
    let count = u128::from(index) + 1;
    (1..=count.trailing_zeros())
        .map(|level| (level as u8, ((count >> level) - 1) as u64))
        .collect()
}

/// Why a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError<E> {
    /// The requested sizes or index do not describe a valid proof.
    Range(String),
    /// The node source failed.
    Source(E),
}

impl<E: fmt::Display> fmt::Display for ProofError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(why) => write!(f, "invalid merkle proof request: {why}"),
            Self::Source(e) => write!(f, "reading merkle nodes: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ProofError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Range(_) => None,
            Self::Source(e) => Some(e),
        }
    }
}

/// RFC 9162 2.1.3.1 `PATH(m, D[n])`: the inclusion proof for leaf `index` in
/// the tree of the first `size` leaves, deepest sibling first.
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        let why = format!("leaf {index} is not in a tree of size {size}");
        return Err(ProofError::Range(why));
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof).map_err(ProofError::Source)?;
    Ok(proof)
}

/// Appends `PATH(m, D[start:end])`, `m` being an absolute leaf index.
fn path<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if end - start <= 1 {
        return Ok(());
    }
    let mid = start + split_point(end - start);
    if m < mid {
        path(src, m, start, mid, out)?;
        out.push(subtree_hash(src, mid, end)?);
    } else {
        path(src, m, mid, end, out)?;
        out.push(subtree_hash(src, start, mid)?);
    }
    Ok(())
}

/// RFC 9162 2.1.4.1 `PROOF(m, D[n])`: the consistency proof from the tree of
/// size `old` to the tree of size `new`, for `0 < old <= new`. Equal sizes
/// give an empty proof.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old == 0 || old > new {
        let why = format!("consistency proofs need 0 < old <= new, got {old} and {new}");
        return Err(ProofError::Range(why));
    }
    let mut proof = Vec::new();
    subproof(src, old, 0, new, true, &mut proof).map_err(ProofError::Source)?;
    Ok(proof)
}

/// Appends `SUBPROOF(m, D[start:end], complete)`, `m` being an absolute size.
fn subproof<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if m == end {
        if !complete {
            out.push(subtree_hash(src, start, end)?);
        }
        return Ok(());
    }
    let mid = start + split_point(end - start);
    if m <= mid {
        subproof(src, m, start, mid, complete, out)?;
        out.push(subtree_hash(src, mid, end)?);
    } else {
        subproof(src, m, mid, end, false, out)?;
        out.push(subtree_hash(src, start, mid)?);
    }
    Ok(())
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError(pub String);

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "merkle proof does not verify: {}", self.0)
    }
}

impl std::error::Error for VerifyError {}

fn reject<T>(why: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError(why.into()))
}

/// The hash chain of RFC 9162 2.1.4.2 step 6 (2.1.3.2 step 4 is the same
/// chain, its `r` being `sr`): folds `path` into `(fr, sr)` starting from
/// `seed`, where `fn_` and `sn` are the RFC's node counters.
fn fold_path(
    mut fn_: u64,
    mut sn: u64,
    seed: &Hash,
    path: &[Hash],
) -> Result<(Hash, Hash), VerifyError> {
    let (mut fr, mut sr) = (*seed, *seed);
    for c in path {
        if sn == 0 {
            return reject("the proof is longer than the tree shape needs");
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return reject("the proof is shorter than the tree shape needs");
    }
    Ok((fr, sr))
}

/// RFC 9162 2.1.3.2: checks that `leaf` is leaf `index` of the tree of `size`
/// leaves whose root is `root`.
///
/// Like every RFC 9162 verifier this binds `size` only through `root` and the
/// proof's shape: a proof can also verify for a different claimed size whose
/// path has the same shape (leaf 0 in sizes 3 and 4, say). Check signed tree
/// heads, not bare sizes.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return reject(format!("leaf {index} is not in a tree of size {size}"));
    }
    let (_, r) = fold_path(index, size - 1, leaf, proof)?;
    if r != *root {
        return reject("the computed root does not match the expected root");
    }
    Ok(())
}

/// RFC 9162 2.1.4.2: checks that the tree of `old_size` leaves with root
/// `old_root` is a prefix of the tree of `new_size` leaves with root
/// `new_root`.
///
/// Equal sizes need an empty proof and equal roots; `old_size == 0` needs an
/// empty proof and `old_root == EMPTY_ROOT`. As with [`verify_inclusion`],
/// `new_size` is bound only through `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old_size > new_size {
        return reject(format!("old size {old_size} exceeds new size {new_size}"));
    }
    if old_size == new_size || old_size == 0 {
        if !proof.is_empty() {
            return reject("the proof between these sizes must be empty");
        }
        if old_size == new_size && old_root != new_root {
            return reject("equal sizes but different roots");
        }
        if old_size == 0 && *old_root != EMPTY_ROOT {
            return reject("the old root of an empty tree must be EMPTY_ROOT");
        }
        return Ok(());
    }
    // Steps 1-2: a non-empty proof, prefixed by the old root when the old
    // tree is a perfect subtree of the new one.
    let Some((first, rest)) = proof.split_first() else {
        return reject("empty consistency proof between different sizes");
    };
    let (seed, path) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    // Steps 3-4.
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (fr, sr) = fold_path(fn_, sn, seed, path)?;
    if fr != *old_root {
        return reject("the computed old root does not match");
    }
    if sr != *new_root {
        return reject("the computed new root does not match");
    }
    Ok(())
}

/// The root of a tree whose leaves are exactly `leaves` (RFC 6962 MTH
/// over leaf hashes); [`EMPTY_ROOT`] for none.
fn range_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => EMPTY_ROOT,
        [one] => *one,
        _ => {
            let k = usize::try_from(split_point(leaves.len() as u64)).unwrap_or(usize::MAX);
            node_hash(&range_root(&leaves[..k]), &range_root(&leaves[k..]))
        }
    }
}

/// Checks that `leaves` are exactly the leaves `[first, size)` of the tree
/// of `size` leaves whose root is `root`, given the inclusion `proof` of
/// leaf `first` in that tree.
///
/// The proof's left siblings (the subtrees before `first`) are taken from
/// it; every right sibling is recomputed from `leaves` instead of read from
/// the proof, so the root matches only when every leaf from `first` to the
/// end of the tree is the one given. This is how a client proves that
/// nothing it was not shown lies after an entry (no later pin of an
/// environment, say): the cost grows with `size - first`, not with the log.
pub fn verify_range(
    first: u64,
    leaves: &[Hash],
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    let count = leaves.len() as u64;
    if count == 0 || first.checked_add(count) != Some(size) {
        return reject(format!(
            "{count} leaves from {first} do not end a tree of size {size}"
        ));
    }
    let (mut fn_, mut sn) = (first, size - 1);
    let mut level = 0u32;
    let mut r = leaves[0];
    let slice = |start: u64, end: u64| {
        let at = |i: u64| usize::try_from(i - first).unwrap_or(usize::MAX);
        &leaves[at(start)..at(end)]
    };
    for c in proof {
        if sn == 0 {
            return reject("the proof is longer than the tree shape needs");
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(c, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
                level += 1;
            }
        } else {
            // The right sibling, node fn_ + 1 at this level, covers leaves
            // that all lie after `first`: it is computed, not trusted.
            let start = (u128::from(fn_) + 1) << level;
            let end = ((u128::from(fn_) + 2) << level).min(u128::from(size));
            let (Ok(start), Ok(end)) = (u64::try_from(start), u64::try_from(end)) else {
                return reject("the tree shape is out of range");
            };
            if start >= end {
                return reject("the tree shape is out of range");
            }
            r = node_hash(&r, &range_root(slice(start, end)));
        }
        fn_ >>= 1;
        sn >>= 1;
        level += 1;
    }
    if sn != 0 {
        return reject("the proof is shorter than the tree shape needs");
    }
    if r != *root {
        return reject("the leaves after the entry do not lead to the expected root");
    }
    Ok(())
}

/// An in-memory tree for tests and small uses: leaf hashes plus every
/// completed perfect node, exactly what a persistent store would hold.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    leaves: Vec<Hash>,
    nodes: HashMap<(u8, u64), Hash>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash and stores the perfect nodes it completes.
    pub fn push(&mut self, leaf: Hash) {
        let index = self.len();
        self.leaves.push(leaf);
        for (level, node) in completed_nodes(index) {
            // Both children were stored by this or an earlier push; were one
            // ever missing, later reads would name it rather than see garbage.
            let children = (
                self.node(level - 1, 2 * node),
                self.node(level - 1, 2 * node + 1),
            );
            let (Ok(left), Ok(right)) = children else {
                break;
            };
            self.nodes.insert((level, node), node_hash(&left, &right));
        }
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
}

impl NodeSource for MemoryTree {
    type Error = String;

    fn node(&self, level: u8, index: u64) -> Result<Hash, String> {
        let found = if level == 0 {
            usize::try_from(index).ok().and_then(|i| self.leaves.get(i))
        } else {
            self.nodes.get(&(level, index))
        };
        found.copied().ok_or_else(|| {
            format!(
                "merkle node (level {level}, index {index}) is not in this {}-leaf tree",
                self.len()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(hex: &str) -> Hash {
        Hash::from_hex(hex).unwrap()
    }

    fn hashes(hexes: &[&str]) -> Vec<Hash> {
        hexes.iter().map(|x| h(x)).collect()
    }

    // Known-answer vectors from github.com/transparency-dev/merkle: leaf inputs
    // and roots from `testonly/constants.go` (also in `proof/verify_test.go`);
    // inclusion and consistency proofs from `proof/verify_test.go`, where leaf
    // numbers are 1-based (the indices below are 0-based).
    const LEAF_INPUTS: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Roots for sizes 1..=8 (`RootHashes()[1..]`).
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (index, size, proof).
    const INCLUSION: [(u64, u64, &[&str]); 4] = [
        (0, 8, &INC_0_8),
        (5, 8, &INC_5_8),
        (2, 3, &INC_2_3),
        (1, 5, &INC_1_5),
    ];
    const INC_0_8: [&str; 3] = [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ];
    const INC_5_8: [&str; 3] = [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ];
    const INC_2_3: [&str; 1] = ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"];
    const INC_1_5: [&str; 3] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ];

    /// (old, new, proof).
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &CON_1_1),
        (1, 8, &CON_1_8),
        (6, 8, &CON_6_8),
        (2, 5, &CON_2_5),
        (6, 7, &CON_6_7),
    ];
    const CON_1_1: [&str; 0] = [];
    const CON_1_8: [&str; 3] = [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ];
    const CON_6_8: [&str; 3] = [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ];
    const CON_2_5: [&str; 2] = [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ];
    const CON_6_7: [&str; 3] = [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ];

    fn tree_of(leaves: &[Hash]) -> MemoryTree {
        let mut tree = MemoryTree::new();
        leaves.iter().for_each(|l| tree.push(*l));
        tree
    }

    fn synthetic(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// RFC 6962 MTH, straight from the definition.
    fn naive_mth(leaves: &[Hash]) -> Hash {
        if leaves.len() <= 1 {
            return leaves
                .first()
                .copied()
                .unwrap_or(Hash::from_bytes(Sha256::digest(b"").into()));
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
    }

    /// Bits to flip: all 256 when `all`, else one that varies with `seed`.
    fn bits(all: bool, seed: u64) -> Vec<usize> {
        if all {
            (0..256).collect()
        } else {
            vec![(seed % 256) as usize]
        }
    }

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut out = *hash.as_bytes();
        out[bit / 8] ^= 1 << (bit % 8);
        Hash::from_bytes(out)
    }

    /// Copies of `proof`, each with `bit` flipped in one element.
    fn flipped_proofs(proof: &[Hash], bit: usize) -> impl Iterator<Item = Vec<Hash>> + '_ {
        (0..proof.len()).map(move |i| {
            let mut bad = proof.to_vec();
            bad[i] = flip(&bad[i], bit);
            bad
        })
    }

    #[test]
    fn known_answers() {
        assert_eq!(EMPTY_ROOT, Hash::from_bytes(Sha256::digest(b"").into()));
        let leaves: Vec<Hash> = LEAF_INPUTS.iter().map(|e| leaf_hash(e)).collect();
        let tree = tree_of(&leaves);
        assert_eq!(root(&tree, 0).unwrap(), EMPTY_ROOT);
        for (size, want) in (1..).zip(ROOTS) {
            assert_eq!(root(&tree, size).unwrap(), h(want), "root of size {size}");
        }
        let root_of = |size: u64| h(ROOTS[size as usize - 1]);
        for (index, size, want) in INCLUSION {
            let proof = inclusion_proof(&tree, index, size).unwrap();
            assert_eq!(proof, hashes(want), "leaf {index} of {size}");
            let leaf = &leaves[index as usize];
            verify_inclusion(leaf, index, size, &proof, &root_of(size)).unwrap();
        }
        for (old, new, want) in CONSISTENCY {
            let proof = consistency_proof(&tree, old, new).unwrap();
            assert_eq!(proof, hashes(want), "{old} -> {new}");
            verify_consistency(old, new, &root_of(old), &root_of(new), &proof).unwrap();
        }
    }

    #[test]
    fn completed_nodes_examples() {
        assert_eq!(completed_nodes(0), vec![]);
        assert_eq!(completed_nodes(1), vec![(1, 0)]);
        assert_eq!(completed_nodes(2), vec![]);
        assert_eq!(completed_nodes(3), vec![(1, 1), (2, 0)]);
        assert_eq!(completed_nodes(11), vec![(1, 5), (2, 2)]);
        let last = completed_nodes(u64::MAX);
        assert_eq!((last.len(), last[62], last[63]), (64, (63, 1), (64, 0)));
    }

    #[test]
    fn subtree_hashes_match_naive_mth() {
        let leaves = synthetic(70);
        let tree = tree_of(&leaves);
        for start in 0..=70 {
            for end in start..=70 {
                let got = subtree_hash(&tree, start as u64, end as u64).unwrap();
                assert_eq!(got, naive_mth(&leaves[start..end]), "[{start},{end})");
            }
            assert_eq!(
                root(&tree, start as u64).unwrap(),
                naive_mth(&leaves[..start])
            );
        }
    }

    /// A source that remembers every imperfect range, shared across tree
    /// sizes as the index's memo is.
    struct Memoizing<'a> {
        tree: &'a MemoryTree,
        memo: std::cell::RefCell<std::collections::HashMap<(u64, u64), Hash>>,
        hits: std::cell::Cell<usize>,
    }

    impl NodeSource for Memoizing<'_> {
        type Error = std::convert::Infallible;

        fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
            Ok(self.tree.node(level, index).unwrap())
        }

        fn memo(&self, start: u64, end: u64) -> Option<Hash> {
            let hit = self.memo.borrow().get(&(start, end)).copied();
            self.hits.set(self.hits.get() + usize::from(hit.is_some()));
            hit
        }

        fn remember(&self, start: u64, end: u64, hash: Hash) {
            self.memo.borrow_mut().insert((start, end), hash);
        }
    }

    #[test]
    fn remembered_ranges_give_the_same_roots_and_proofs() {
        let leaves = synthetic(70);
        let tree = tree_of(&leaves);
        let memo = Memoizing {
            tree: &tree,
            memo: Default::default(),
            hits: Default::default(),
        };
        for size in 1..=70u64 {
            assert_eq!(root(&memo, size).unwrap(), root(&tree, size).unwrap());
            for index in 0..size {
                assert_eq!(
                    inclusion_proof(&memo, index, size).unwrap(),
                    inclusion_proof(&tree, index, size).unwrap()
                );
            }
            for old in 1..=size {
                assert_eq!(
                    consistency_proof(&memo, old, size).unwrap(),
                    consistency_proof(&tree, old, size).unwrap()
                );
            }
        }
        assert!(memo.hits.get() > 1000, "{}", memo.hits.get());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let leaves = synthetic(70);
        let tree = tree_of(&leaves);
        for size in 1..=70u64 {
            let root = root(&tree, size).unwrap();
            for index in 0..size {
                let leaf = leaves[index as usize];
                let proof = inclusion_proof(&tree, index, size).unwrap();
                let check = |leaf: &Hash, index, size, proof: &[Hash], root: &Hash| {
                    verify_inclusion(leaf, index, size, proof, root).is_ok()
                };
                assert!(check(&leaf, index, size, &proof, &root));
                for bit in bits(size <= 8, index * 37 + size * 11) {
                    assert!(!check(&flip(&leaf, bit), index, size, &proof, &root));
                    assert!(!check(&leaf, index, size, &proof, &flip(&root, bit)));
                    for bad in flipped_proofs(&proof, bit) {
                        assert!(!check(&leaf, index, size, &bad, &root));
                    }
                }
                for other in (0..=size).filter(|&o| o != index) {
                    assert!(!check(&leaf, other, size, &proof, &root), "index {other}");
                }
                assert!(!check(&leaf, index, size * 2, &proof, &root));
                assert!(!check(
                    &leaf,
                    index,
                    size,
                    &[&proof[..], &[root]].concat(),
                    &root
                ));
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(!check(&leaf, index, size, shorter, &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let tree = tree_of(&synthetic(70));
        let roots: Vec<Hash> = (0..=70).map(|n| root(&tree, n).unwrap()).collect();
        for new in 1..=70u64 {
            let r2 = roots[new as usize];
            for old in 1..=new {
                let r1 = roots[old as usize];
                let proof = consistency_proof(&tree, old, new).unwrap();
                let check = |old, new, r1: &Hash, r2: &Hash, proof: &[Hash]| {
                    verify_consistency(old, new, r1, r2, proof).is_ok()
                };
                assert!(check(old, new, &r1, &r2, &proof));
                if old == new {
                    assert!(proof.is_empty() && !check(old, new, &r1, &r2, &[r1]));
                    continue;
                }
                for bit in bits(new <= 8, old * 53 + new * 7) {
                    assert!(!check(old, new, &flip(&r1, bit), &r2, &proof));
                    assert!(!check(old, new, &r1, &flip(&r2, bit), &proof));
                    for bad in flipped_proofs(&proof, bit) {
                        assert!(!check(old, new, &r1, &r2, &bad));
                    }
                }
                assert!(!check(old, new, &r2, &r1, &proof));
                assert!(!check(old, new, &r1, &r2, &[]));
                assert!(!check(old, new * 2, &r1, &r2, &proof));
                assert!(!check(new, old, &r2, &r1, &proof));
                assert!(!check(old, new, &r1, &r2, &[&proof[..], &[r2]].concat()));
                assert!(!check(old, new, &r1, &r2, &proof[..proof.len() - 1]));
                for other in (1..new).filter(|&o| o != old) {
                    let r = roots[other as usize];
                    assert!(!check(other, new, &r, &r2, &proof), "old {other}");
                    assert!(!check(other, new, &r1, &r2, &proof), "old {other}");
                }
            }
        }
    }

    #[test]
    fn edge_cases_and_errors() {
        let leaves = synthetic(5);
        let tree = tree_of(&leaves);
        let range = |e| matches!(e, ProofError::Range(_));
        assert!(range(inclusion_proof(&tree, 5, 5).unwrap_err()));
        assert!(range(consistency_proof(&tree, 0, 3).unwrap_err()));
        assert!(range(consistency_proof(&tree, 4, 3).unwrap_err()));
        let missing = inclusion_proof(&tree, 0, 6).unwrap_err();
        assert!(matches!(&missing, ProofError::Source(m) if m.contains("level 1, index 2")));
        assert!(
            root(&tree, 9)
                .unwrap_err()
                .contains("not in this 5-leaf tree")
        );
        // One leaf: the root is the leaf and the proof is empty.
        assert!(inclusion_proof(&tree, 0, 1).unwrap().is_empty());
        verify_inclusion(&leaves[0], 0, 1, &[], &leaves[0]).unwrap();
        assert!(verify_inclusion(&leaves[0], 0, 0, &[], &EMPTY_ROOT).is_err());
        // Empty and equal trees.
        let r3 = root(&tree, 3).unwrap();
        verify_consistency(0, 3, &EMPTY_ROOT, &r3, &[]).unwrap();
        assert!(verify_consistency(0, 3, &r3, &r3, &[]).is_err());
        verify_consistency(0, 0, &EMPTY_ROOT, &EMPTY_ROOT, &[]).unwrap();
        verify_consistency(3, 3, &r3, &r3, &[]).unwrap();
        assert!(verify_consistency(3, 3, &r3, &EMPTY_ROOT, &[]).is_err());
        // The documented limit: sizes are bound only through the root, so
        // leaf 0's size-4 proof also verifies under a claimed size of 3.
        let (r4, proof) = (
            root(&tree, 4).unwrap(),
            inclusion_proof(&tree, 0, 4).unwrap(),
        );
        verify_inclusion(&leaves[0], 0, 3, &proof, &r4).unwrap();
        assert!(tree.len() == 5 && !tree.is_empty() && MemoryTree::new().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn proofs_verify_in_larger_trees(size in 1u64..600, a: u64, b: u64) {
            let leaves = synthetic(size);
            let tree = tree_of(&leaves);
            let (index, old) = (a % size, 1 + b % size);
            let (r1, r2) = (root(&tree, old).unwrap(), root(&tree, size).unwrap());
            let proof = inclusion_proof(&tree, index, size).unwrap();
            prop_assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &r2).is_ok());
            let proof = consistency_proof(&tree, old, size).unwrap();
            prop_assert!(verify_consistency(old, size, &r1, &r2, &proof).is_ok());
        }
    }

    #[test]
    fn a_range_after_a_leaf_proves_every_later_leaf_and_nothing_else() {
        let leaves: Vec<Hash> = (0u32..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for size in 1..=leaves.len() as u64 {
            let tree = tree_of(&leaves[..size as usize]);
            let root = root(&tree, size).unwrap();
            for first in 0..size {
                let proof = inclusion_proof(&tree, first, size).unwrap();
                let range = &leaves[first as usize..size as usize];
                assert!(verify_range(first, range, size, &proof, &root).is_ok());
                // One changed leaf anywhere in the range is caught.
                for at in 0..range.len() {
                    let mut changed = range.to_vec();
                    changed[at] = leaf_hash(b"forged");
                    assert!(verify_range(first, &changed, size, &proof, &root).is_err());
                }
                // A range cut short or run past the end is refused.
                if range.len() > 1 {
                    let short = &range[..range.len() - 1];
                    assert!(verify_range(first, short, size, &proof, &root).is_err());
                }
                let mut long = range.to_vec();
                long.push(leaf_hash(b"extra"));
                assert!(verify_range(first, &long, size, &proof, &root).is_err());
            }
        }
    }
}
