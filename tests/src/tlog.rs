//! A C2SP tlog-tiles client written from the specs alone
//! (<https://c2sp.org/tlog-tiles>, <https://c2sp.org/signed-note>,
//! <https://c2sp.org/tlog-checkpoint>, RFC 6962 hashing), sharing no code
//! with stackpin: what an ecosystem tool reading stackpin's log does. A
//! plain HTTP/1.1 GET over a TCP socket, so headers are seen as sent.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// `GET path` on `addr`, HTTP/1.1 with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).expect("read");
    parse_answer(&raw)
}

/// Reads a raw HTTP/1.1 answer.
pub fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// A checkpoint as the spec reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
}

/// Opens a signed note with the vkey `<name>+<hex id>+<base64(0x01 ‖ key)>`
/// and reads the checkpoint in it.
pub fn open_checkpoint(note: &str, vkey: &str) -> Result<Checkpoint, String> {
    let mut parts = vkey.splitn(3, '+');
    let (name, id, key) = (
        parts.next().ok_or("vkey name")?,
        parts.next().ok_or("vkey id")?,
        parts.next().ok_or("vkey key")?,
    );
    let key = B64.decode(key).map_err(|e| e.to_string())?;
    let [1, key @ ..] = key.as_slice() else {
        return Err("not an Ed25519 vkey".into());
    };
    let key = ed25519_dalek::VerifyingKey::from_bytes(key.try_into().map_err(|_| "key length")?)
        .map_err(|e| e.to_string())?;
    let id = u32::from_str_radix(id, 16).map_err(|e| e.to_string())?;
    let (text, sigs) = note.split_once("\n\n").ok_or("no blank line")?;
    let text = format!("{text}\n");
    let mut verified = false;
    for line in sigs.lines() {
        let Some(rest) = line.strip_prefix("— ") else {
            return Err(format!("not a signature line: {line:?}"));
        };
        let (who, sig) = rest.split_once(' ').ok_or("signature line")?;
        let sig = B64.decode(sig).map_err(|e| e.to_string())?;
        if who != name || sig.len() != 68 || sig[..4] != id.to_be_bytes() {
            continue; // another signer (a witness)
        }
        let sig = ed25519_dalek::Signature::from_slice(&sig[4..]).map_err(|e| e.to_string())?;
        key.verify_strict(text.as_bytes(), &sig)
            .map_err(|e| format!("signature: {e}"))?;
        verified = true;
    }
    if !verified {
        return Err("no signature by the log key".into());
    }
    let mut lines = text.lines();
    let origin = lines.next().ok_or("origin")?.to_owned();
    let size = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("tree size")?;
    let root = B64
        .decode(lines.next().ok_or("root hash")?)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "root length")?;
    Ok(Checkpoint { origin, size, root })
}

/// The spec's path of tile `n` at `level` (`"entries"` for bundles), `w`
/// wide: `n` in 3-digit groups with `x` on all but the last.
pub fn tile_path(level: &str, n: u64, w: u64) -> String {
    let digits = format!("{n}");
    let padded = format!("{:0>width$}", digits, width = digits.len().div_ceil(3) * 3);
    let groups: Vec<&str> = padded
        .as_bytes()
        .chunks(3)
        .map(|c| std::str::from_utf8(c).expect("digits"))
        .collect();
    let (last, rest) = groups.split_last().expect("a group");
    let mut path = format!("tile/{level}/");
    for g in rest {
        path.push_str(&format!("x{g}/"));
    }
    path.push_str(last);
    if w < 256 {
        path.push_str(&format!(".p/{w}"));
    }
    path
}

fn leaf(entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0]);
    h.update(entry);
    h.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// RFC 6962 MTH over `leaves`.
pub fn root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = n.next_power_of_two() / 2;
            node(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// What reading a whole log of `size` entries over tiles found.
#[derive(Debug)]
pub struct Read {
    pub entries: Vec<Vec<u8>>,
    /// Every object fetched: path to bytes.
    pub fetched: BTreeMap<String, Vec<u8>>,
}

/// Reads every tile and bundle of the tree of `cp` through `fetch` and
/// checks them as the spec defines them: bundles hold the entries whose
/// leaf hashes the level-0 tiles hold; each level-L tile holds the roots of
/// the full level-(L-1) tiles; the leaves hash to the checkpoint's root.
pub fn read_log(
    cp: &Checkpoint,
    fetch: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Read, String> {
    let mut fetched = BTreeMap::new();
    let mut get = |path: String| -> Result<Vec<u8>, String> {
        let bytes = fetch(&path)?;
        fetched.insert(path, bytes.clone());
        Ok(bytes)
    };
    let mut entries = Vec::new();
    for n in 0..cp.size.div_ceil(256) {
        let w = (cp.size - n * 256).min(256);
        let bundle = get(tile_path("entries", n, w))?;
        let mut rest = bundle.as_slice();
        while let [a, b, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*a, *b]));
            let entry = tail.get(..len).ok_or("bundle ends inside an entry")?;
            entries.push(entry.to_vec());
            rest = &tail[len..];
        }
        if !rest.is_empty() || entries.len() as u64 != n * 256 + w {
            return Err(format!("bundle {n} does not hold {w} entries"));
        }
    }
    // Level by level: the row of hashes the tiles of that level hold.
    let mut row: Vec<[u8; 32]> = entries.iter().map(|e| leaf(e)).collect();
    let leaves = row.clone();
    let mut level = 0;
    while !row.is_empty() {
        for n in 0..(row.len() as u64).div_ceil(256) {
            let w = (row.len() as u64 - n * 256).min(256);
            let tile = get(tile_path(&level.to_string(), n, w))?;
            let want: Vec<u8> = row[(n * 256) as usize..(n * 256 + w) as usize]
                .iter()
                .flatten()
                .copied()
                .collect();
            if tile != want {
                return Err(format!("tile {level}/{n} (width {w}) is not the tree's"));
            }
        }
        // The next level's hashes: the root of each full 256-wide chunk.
        row = row.chunks_exact(256).map(root_of).collect();
        level += 1;
    }
    if root_of(&leaves) != cp.root {
        return Err("the entries do not hash to the checkpoint's root".into());
    }
    Ok(Read { entries, fetched })
}

/// `POST path` with `body` on `addr`, HTTP/1.1 with `Connection: close`.
pub fn post(addr: SocketAddr, path: &str, body: &str) -> Answer {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).expect("read");
    parse_answer(&raw)
}
