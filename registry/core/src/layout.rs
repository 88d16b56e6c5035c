//! Where the log keeps its objects: the one place that spells storage keys.
//!
//! ```text
//! blobs/sha256/<hex>                 artifact bytes, written once
//! log/entries/00000000000000000000   entry 0 (JSON, the exact bytes hashed)
//! log/entries/00000000000000000001   entry 1
//! log/entries/00000000000000000002   entries 2, 3 and 4: a group commit,
//!                                    one entry per line
//! log/entries/00000000000000000005   entry 5
//! log/checkpoint                     the latest signed checkpoint
//! log/checkpoints/00000000000000000006  every stored signed checkpoint, by
//!                                    size, written once: the history a
//!                                    start checks the log against
//! ```
//!
//! An object at `log/entries/<n>` holds entries `n, n+1, …`, one per line
//! (entries are compact JSON, which never contains a raw newline). The next
//! object's key is the index after its last entry, so objects chain without
//! gaps and a batch is all or nothing. The registry writes these keys
//! through object storage; the audit reads them from a copied folder or
//! bucket with the same functions, so writer and checker cannot disagree on
//! the layout.

use bytes::Bytes;

use crate::digest::Digest;

/// The folder (key prefix) of the log's entry objects.
pub const ENTRIES: &str = "log/entries";

/// The key of the latest signed checkpoint.
pub const CHECKPOINT: &str = "log/checkpoint";

/// The folder (key prefix) of the checkpoint history: one object per
/// stored checkpoint, named by its tree size, never rewritten. Overwriting
/// or deleting `log/checkpoint` does not hide an edit the history has
/// signed.
pub const CHECKPOINTS: &str = "log/checkpoints";

/// The storage key of the history copy of the checkpoint of tree `size`.
pub fn checkpoint_history_key(size: u64) -> String {
    format!("{CHECKPOINTS}/{}", object_name(size))
}

/// The tree size of the history checkpoint called `name`, or `None` when the
/// name is not one the registry writes.
pub fn parse_checkpoint_history_name(name: &str) -> Option<u64> {
    parse_object_name(name)
}

/// The folder (key prefix) of the log's C2SP tlog-tiles: full hash tiles
/// and entry bundles (see [`crate::tiles`]), each written once beside
/// `log/`, so a mirror or an auditor can read the log from the bucket (or a
/// CDN in front of it) with no registry running. Partial tiles are served
/// by the registry, not stored.
pub const TILES: &str = "tile";

/// How many entries the full tiles stored under [`TILES`] cover (decimal
/// text, a multiple of 256): the tile writer goes on from there after a
/// restart instead of writing everything again.
pub const TILES_WRITTEN: &str = "log/tiles-written";

/// The largest log entry a new write may add: C2SP tlog-tiles entry bundles
/// prefix each entry with a big-endian uint16 length, so a longer entry
/// could not be served as tiles. Entries already in a log are read whatever
/// their size; only new ones are held to this.
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;

/// Checks a new entry's size against [`MAX_ENTRY_BYTES`].
///
/// # Errors
/// Invalid, naming both sizes.
pub fn check_entry_size(entry: &[u8]) -> crate::error::Result<()> {
    if entry.len() > MAX_ENTRY_BYTES {
        return Err(crate::error::Error::invalid(format!(
            "the log entry this request would write is {} bytes; a log entry holds at most \
             {MAX_ENTRY_BYTES} (the length prefix of tlog-tiles entry bundles): shorten the \
             envelope (fewer or smaller signatures) or the reason",
            entry.len()
        )));
    }
    Ok(())
}

/// The folder (key prefix) of artifact bytes.
pub const BLOBS: &str = "blobs/sha256";

/// Webhook delivery state, beside the log: the lease that lets one
/// replica of a bucket send (`webhooks/lease/<epoch>`, created once each),
/// its holder's heartbeat (`webhooks/heartbeat/<epoch>`), and each
/// endpoint's cursor, the next log index to deliver
/// (`webhooks/cursor/<name>`).
pub const WEBHOOK_LEASES: &str = "webhooks/lease";

/// The lease of `epoch`.
pub fn webhook_lease_key(epoch: u64) -> String {
    format!("{WEBHOOK_LEASES}/{epoch:020}")
}

/// The epoch a lease object's name holds.
pub fn parse_webhook_lease_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The heartbeat of the holder of `epoch`.
pub fn webhook_heartbeat_key(epoch: u64) -> String {
    format!("webhooks/heartbeat/{epoch:020}")
}

/// The cursor of the endpoint `name`.
pub fn webhook_cursor_key(name: &str) -> String {
    format!("webhooks/cursor/{name}")
}

/// A mirror's lock on its destination (`stackpin mirror`): held by the
/// process in a folder; in a bucket, an object created only if absent and
/// refreshed while the mirror runs. `stackpin-registry promote` refuses a
/// storage a mirror still holds.
pub const MIRROR_LOCK: &str = "mirror/lock";

/// A bucket mirror lock not refreshed for this long is a killed mirror's:
/// another may take it over, and `promote` goes ahead.
pub const MIRROR_LOCK_STALE: std::time::Duration = std::time::Duration::from_secs(600);

/// Marks a destination as a mirror's, naming its source; `promote` removes
/// it, and a mirror refuses to commit into a destination without it.
pub const MIRROR_MARK: &str = "mirror/source";

/// The file name of the log object whose first entry is `index`.
pub fn object_name(index: u64) -> String {
    format!("{index:020}")
}

/// The storage key of the log object whose first entry is `index`.
pub fn object_key(index: u64) -> String {
    format!("{ENTRIES}/{}", object_name(index))
}

/// The first entry index of the log object called `name`, or `None` when
/// the name is not one the log writes (twenty decimal digits).
pub fn parse_object_name(name: &str) -> Option<u64> {
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The storage key of the blob with `digest`.
pub fn blob_key(digest: &Digest) -> String {
    format!("{BLOBS}/{}", digest.hex())
}

/// The object bytes of a batch: its entries, one per line.
pub fn join(entries: &[Bytes]) -> Bytes {
    if let [one] = entries {
        return one.clone();
    }
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(e);
    }
    Bytes::from(out)
}

/// Splits a log object into its entries.
pub fn split(object: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in object.iter().enumerate() {
        if *b == b'\n' {
            out.push(object.slice(start..i));
            start = i + 1;
        }
    }
    out.push(object.slice(start..));
    out
}

/// The byte size of the object holding `entries` (one newline between
/// each two).
pub fn object_size(entries: &[Bytes]) -> u64 {
    entries.iter().map(|e| e.len() as u64).sum::<u64>() + (entries.len() as u64).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spelled_as_the_log_writes_them() {
        assert_eq!(object_key(7), "log/entries/00000000000000000007");
        assert_eq!(parse_object_name("00000000000000000007"), Some(7));
        assert_eq!(parse_object_name("7"), None);
        assert_eq!(parse_object_name("0000000000000000000x"), None);
        let d = Digest::of(b"{}");
        assert_eq!(blob_key(&d), format!("blobs/sha256/{}", d.hex()));
    }

    #[test]
    fn batches_split_back_into_their_entries() {
        let batch = [
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"[]"),
            Bytes::from_static(b"1"),
        ];
        let object = join(&batch);
        assert_eq!(object.len() as u64, object_size(&batch));
        assert_eq!(split(&object), batch.to_vec());
        let one = [Bytes::from_static(b"{\"a\":1}")];
        assert_eq!(join(&one), one[0]);
        assert_eq!(split(&join(&one)), one.to_vec());
    }
}
