//! C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>): the log's tree cut into
//! tiles of 256 hashes, and its entries into bundles of 256, at paths any
//! tlog-tiles client knows.
//!
//! ```text
//! tile/<L>/<N>[.p/<W>]        level L tile N: the hashes of the 2^(8L)-leaf
//!                             subtrees N*256 … N*256+W-1 (32 bytes each)
//! tile/entries/<N>[.p/<W>]    entries N*256 … N*256+W-1, each prefixed by
//!                             its length as a big-endian uint16
//! ```
//!
//! `N` is written in groups of three digits, all but the last prefixed with
//! `x` (1234067 is `x001/x234/067`); `.p/<W>` marks a partial tile (the
//! right edge of a tree whose size is not a multiple of 256), absent for a
//! full one. Full tiles never change; a partial tile of width `W` is the
//! same for every tree size that has it.
//!
//! The writer (the registry) and the readers (the audit, tests) use these
//! same functions, so they cannot disagree on the layout.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::merkle::{self, Hash, NodeSource};

/// Hashes (or entries) in a full tile (or bundle).
pub const WIDTH: u64 = 256;
/// Tree levels one tile spans.
pub const HEIGHT: u8 = 8;

/// One tile of hashes, or (`level: None`) one entry bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    /// `Some(L)` for a hash tile, `None` for an entry bundle.
    pub level: Option<u8>,
    pub index: u64,
    /// 1 ..= 256; 256 is a full tile.
    pub width: u64,
}

impl Tile {
    /// Whether this is a full tile (256 hashes or entries).
    pub fn is_full(&self) -> bool {
        self.width == WIDTH
    }

    /// The tile's path, as the spec spells it.
    pub fn path(&self) -> String {
        let level = match self.level {
            Some(l) => l.to_string(),
            None => "entries".to_owned(),
        };
        let mut path = format!("tile/{level}/{}", encode_index(self.index));
        if !self.is_full() {
            path.push_str(&format!(".p/{}", self.width));
        }
        path
    }

    /// Parses a tile path (`tile/…`), accepting only the canonical spelling.
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("tile/")?;
        let (level, rest) = rest.split_once('/')?;
        let level = if level == "entries" {
            None
        } else {
            // Digits only: `u8::from_str` also takes a sign (`+61`), which
            // would make a second spelling of the same tile.
            let digits = level.bytes().all(|b| b.is_ascii_digit());
            if !digits || level.is_empty() || (level.len() > 1 && level.starts_with('0')) {
                return None;
            }
            Some(level.parse::<u8>().ok().filter(|l| *l < 64)?)
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((index, width)) => {
                if width.is_empty()
                    || width.starts_with('0')
                    || !width.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let width: u64 = width.parse().ok()?;
                (index, Some(width).filter(|w| (1..WIDTH).contains(w))?)
            }
            None => (rest, WIDTH),
        };
        let index = decode_index(index)?;
        Some(Self {
            level,
            index,
            width,
        })
    }

    /// The hash tile at `level` holding node `index` of tree level
    /// `8 * level`, as a tree of `size` leaves has it; `None` when that tree
    /// has no such node.
    pub fn hashes_for(size: u64, level: u8, node: u64) -> Option<Self> {
        let nodes = nodes_at(size, level)?;
        (node < nodes).then(|| {
            let index = node / WIDTH;
            Self {
                level: Some(level),
                index,
                width: (nodes - index * WIDTH).min(WIDTH),
            }
        })
    }

    /// Whether a tree of `size` leaves has this tile (a partial tile of
    /// width `W` is in every tree from the size that first has it on).
    pub fn within(&self, size: u64) -> bool {
        let have = match self.level {
            Some(level) => nodes_at(size, level).unwrap_or(0),
            None => size,
        };
        (1..=WIDTH).contains(&self.width) && self.first() + self.width <= have
    }

    /// The first tree node (of level `8 * L`) or entry the tile holds.
    pub fn first(&self) -> u64 {
        self.index * WIDTH
    }
}

/// How many nodes of tree level `8 * level` a tree of `size` leaves has
/// (complete subtrees of 2^(8·level) leaves only).
fn nodes_at(size: u64, level: u8) -> Option<u64> {
    let shift = u32::from(level) * u32::from(HEIGHT);
    (shift < 64).then(|| size >> shift)
}

/// Every tile (hash tiles of every level, then entry bundles) a tree of
/// `size` leaves has, partial ones included.
pub fn tiles_of(size: u64) -> Vec<Tile> {
    let mut out = Vec::new();
    for level in 0..8u8 {
        let Some(nodes) = nodes_at(size, level).filter(|n| *n > 0) else {
            break;
        };
        for index in 0..nodes.div_ceil(WIDTH) {
            out.push(Tile {
                level: Some(level),
                index,
                width: (nodes - index * WIDTH).min(WIDTH),
            });
        }
    }
    for index in 0..size.div_ceil(WIDTH) {
        out.push(Tile {
            level: None,
            index,
            width: (size - index * WIDTH).min(WIDTH),
        });
    }
    out
}

/// The full tiles (hash tiles of every level, and entry bundles) a tree of
/// `new` leaves has and one of `old` leaves has not: what a writer that
/// stored every full tile up to `old` stores next. Bundles and level-0
/// tiles first, in order, then the higher levels.
pub fn full_tiles_between(old: u64, new: u64) -> Vec<Tile> {
    let mut out = Vec::new();
    if new <= old {
        return out;
    }
    let full = |index| Tile {
        level: None,
        index,
        width: WIDTH,
    };
    for index in old / WIDTH..new / WIDTH {
        out.push(full(index));
        out.push(Tile {
            level: Some(0),
            ..full(index)
        });
    }
    for level in 1..8u8 {
        let (Some(before), Some(after)) = (nodes_at(old, level), nodes_at(new, level)) else {
            break;
        };
        for index in before / WIDTH..after / WIDTH {
            out.push(Tile {
                level: Some(level),
                ..full(index)
            });
        }
    }
    out
}

/// `N` in three-digit groups, all but the last prefixed with `x`.
pub fn encode_index(mut n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        groups.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

fn decode_index(text: &str) -> Option<u64> {
    let groups: Vec<&str> = text.split('/').collect();
    let (last, rest) = groups.split_last()?;
    let mut n: u64 = 0;
    for (i, g) in rest.iter().enumerate() {
        let digits = g.strip_prefix('x')?;
        // No leading zero group: 000/… is not how 0 or any N is spelled.
        if i == 0 && digits == "000" {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(group(digits)?)?;
    }
    n.checked_mul(1000)?.checked_add(group(last)?)
}

fn group(g: &str) -> Option<u64> {
    (g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
        .then(|| g.parse().ok())
        .flatten()
}

/// The bytes of the hash tile at `level`, number `index`, `width` hashes
/// wide, read from `src` (which must hold the nodes of a tree that has the
/// tile).
///
/// # Errors
/// As `src` fails.
pub fn tile_bytes<S: NodeSource>(
    src: &S,
    level: u8,
    index: u64,
    width: u64,
) -> std::result::Result<Vec<u8>, S::Error> {
    let mut out = Vec::with_capacity(width as usize * 32);
    for k in 0..width {
        out.extend_from_slice(src.node(level * HEIGHT, index * WIDTH + k)?.as_bytes());
    }
    Ok(out)
}

/// An entry bundle's bytes: each entry prefixed by its big-endian uint16
/// length.
///
/// # Errors
/// Invalid for an entry longer than 65535 bytes.
pub fn bundle_bytes<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.as_ref().len() + 2).sum());
    for e in entries {
        let e = e.as_ref();
        let len = u16::try_from(e.len()).map_err(|_| {
            Error::invalid(format!(
                "a log entry of {} bytes does not fit an entry bundle",
                e.len()
            ))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Splits an entry bundle into its entries.
///
/// # Errors
/// Invalid when a length prefix runs past the end.
pub fn split_bundle(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let [a, b, tail @ ..] = rest else {
            return Err(Error::invalid(
                "an entry bundle ends inside a length prefix",
            ));
        };
        let len = usize::from(u16::from_be_bytes([*a, *b]));
        if tail.len() < len {
            return Err(Error::invalid("an entry bundle ends inside an entry"));
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(out)
}

/// The tree of `size` leaves, read from its tiles only: what a client that
/// knows nothing but the tlog-tiles layout computes. `read` returns a
/// tile's bytes; each tile is read once.
pub struct TileTree<F> {
    size: u64,
    read: F,
    cache: Mutex<HashMap<Tile, Vec<Hash>>>,
}

impl<F> TileTree<F>
where
    F: Fn(&Tile) -> Result<Vec<u8>>,
{
    /// A tree of `size` leaves whose tiles `read` fetches.
    pub fn new(size: u64, read: F) -> Self {
        Self {
            size,
            read,
            cache: Mutex::default(),
        }
    }

    /// The tree's root hash.
    ///
    /// # Errors
    /// When a tile cannot be read or has the wrong length.
    pub fn root(&self) -> Result<Hash> {
        merkle::root(self, self.size)
    }

    fn hashes(&self, tile: Tile) -> Result<Vec<Hash>> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = cache.get(&tile) {
            return Ok(h.clone());
        }
        let bytes = (self.read)(&tile)?;
        if bytes.len() as u64 != tile.width * 32 {
            return Err(Error::invalid(format!(
                "{} is {} bytes, not {}",
                tile.path(),
                bytes.len(),
                tile.width * 32
            )));
        }
        let hashes: Vec<Hash> = bytes
            .chunks_exact(32)
            .filter_map(Hash::from_slice)
            .collect();
        cache.insert(tile, hashes.clone());
        Ok(hashes)
    }
}

impl<F> NodeSource for TileTree<F>
where
    F: Fn(&Tile) -> Result<Vec<u8>>,
{
    type Error = Error;

    /// Node `(level, index)`: from the tile of level `level / 8`, hashed up
    /// `level % 8` levels from that tile's row.
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        let (tile_level, up) = (level / HEIGHT, u32::from(level % HEIGHT));
        let first = index << up;
        let count = 1u64 << up;
        let missing = || Error::invalid(format!("the tree has no node ({level}, {index})"));
        let tile =
            Tile::hashes_for(self.size, tile_level, first + count - 1).ok_or_else(missing)?;
        let row = self.hashes(tile)?;
        let offset = (first - tile.first()) as usize;
        let mut layer: Vec<Hash> = row
            .get(offset..offset + count as usize)
            .ok_or_else(missing)?
            .to_vec();
        while layer.len() > 1 {
            layer = layer
                .chunks_exact(2)
                .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        layer.pop().ok_or_else(missing)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_full_tiles_between_two_sizes_are_the_new_full_ones() {
        let full = |size| -> std::collections::BTreeSet<Tile> {
            tiles_of(size).into_iter().filter(Tile::is_full).collect()
        };
        for (old, new) in [
            (0, 255),
            (0, 256),
            (255, 257),
            (256, 512),
            (0, 65536),
            (65535, 65536 + 256),
            (300, 70000),
        ] {
            let between: std::collections::BTreeSet<Tile> =
                full_tiles_between(old, new).into_iter().collect();
            let expected: std::collections::BTreeSet<Tile> =
                full(new).difference(&full(old)).copied().collect();
            assert_eq!(between, expected, "{old}..{new}");
        }
        assert!(full_tiles_between(512, 256).is_empty());
        // Every tile of a tree is in every larger tree; a wider one is not.
        for size in [1, 255, 256, 257, 65536, 70000] {
            for tile in tiles_of(size) {
                assert!(tile.within(size) && tile.within(size + 1), "{tile:?}");
                let wider = Tile {
                    width: tile.width + 1,
                    ..tile
                };
                assert!(!wider.within(size), "{wider:?} in {size}");
            }
        }
        assert!(full_tiles_between(0, 65536).contains(&Tile {
            level: Some(1),
            index: 0,
            width: WIDTH
        }));
    }

    use super::*;
    use crate::merkle::MemoryTree;

    #[test]
    fn paths_are_spelled_as_the_spec_shows() {
        let t = |level, index, width| Tile {
            level,
            index,
            width,
        };
        assert_eq!(t(Some(0), 1_234_067, 256).path(), "tile/0/x001/x234/067");
        assert_eq!(t(Some(3), 0, 8).path(), "tile/3/000.p/8");
        assert_eq!(
            t(None, 1_234_067, 8).path(),
            "tile/entries/x001/x234/067.p/8"
        );
        for tile in [
            t(Some(0), 0, 256),
            t(Some(2), 999, 1),
            t(Some(1), 1000, 255),
            t(None, 1_234_067, 8),
            t(None, u64::MAX, 256),
        ] {
            assert_eq!(Tile::parse(&tile.path()), Some(tile), "{}", tile.path());
        }
        for bad in [
            "tile/0/1",
            "tile/0/0001",
            "tile/0/x000/001",
            "tile/0/001/x002",
            "tile/00/001",
            "tile/0/001.p/256",
            "tile/0/001.p/0",
            "tile/0/001.p/08",
            "tile/64/000",
            "tile/data/000",
            "tile/+61/150",
            "tile/0/001.p/+5",
            "checkpoint",
        ] {
            assert_eq!(Tile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bundles_round_trip_and_refuse_what_does_not_fit() {
        let entries = [b"a".to_vec(), Vec::new(), vec![7; 300]];
        let bytes = bundle_bytes(&entries).unwrap();
        assert_eq!(&bytes[..3], &[0, 1, b'a']);
        let back = split_bundle(&bytes).unwrap();
        assert_eq!(back, entries.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(bundle_bytes(&[vec![0; 65_536]]).is_err());
        assert!(split_bundle(&bytes[..bytes.len() - 1]).is_err());
        assert!(split_bundle(&[0]).is_err());
    }

    #[test]
    fn the_root_read_from_tiles_alone_is_the_tree_root_for_every_size() {
        let mut tree = MemoryTree::default();
        let mut served: HashMap<String, Vec<u8>> = HashMap::new();
        for size in 1..=600u64 {
            tree.push(merkle::leaf_hash(&size.to_be_bytes()));
            // What a registry serves for this size: every tile, by path.
            for tile in tiles_of(size) {
                if let Some(level) = tile.level {
                    let bytes = tile_bytes(&tree, level, tile.index, tile.width).unwrap();
                    served.insert(tile.path(), bytes);
                }
            }
            let client = TileTree::new(size, |tile: &Tile| {
                served
                    .get(&tile.path())
                    .cloned()
                    .ok_or_else(|| Error::invalid(format!("{} not served", tile.path())))
            });
            assert_eq!(
                client.root().unwrap(),
                merkle::root(&tree, size).unwrap(),
                "size {size}"
            );
        }
        // Sizes around tile boundaries have the tiles the spec predicts.
        let widths = |size| -> Vec<(Option<u8>, u64, u64)> {
            tiles_of(size)
                .into_iter()
                .map(|t| (t.level, t.index, t.width))
                .collect()
        };
        assert_eq!(widths(255), [(Some(0), 0, 255), (None, 0, 255)]);
        assert_eq!(
            widths(256),
            [(Some(0), 0, 256), (Some(1), 0, 1), (None, 0, 256)]
        );
        assert_eq!(
            widths(257),
            [
                (Some(0), 0, 256),
                (Some(0), 1, 1),
                (Some(1), 0, 1),
                (None, 0, 256),
                (None, 1, 1)
            ]
        );
    }
}
