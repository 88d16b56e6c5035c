//! Every parser of user-typed text in the core crate: times, names,
//! digests, reasons, key ids; and of text from the network: tile paths,
//! add-checkpoint requests (a witness takes them from anyone), policies.
//! Accepted names must never be able to reach a path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, Reason, ReleaseId};
use stackpin_core::signing::KeyId;
use stackpin_core::time::Timestamp;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = text.parse::<Timestamp>() {
        let again: Timestamp = t.to_string().parse().expect("printed times parse");
        assert_eq!(again, t);
    }
    for name in [text.parse::<ReleaseId>().map(|r| r.to_string()), text.parse::<EnvName>().map(|e| e.to_string())] {
        if let Ok(n) = name {
            assert!(!n.contains('/') && !n.contains("..") && !n.contains('\0'));
        }
    }
    if let Ok(d) = text.parse::<Digest>() {
        assert_eq!(d.to_string().parse::<Digest>().expect("printed digests parse"), d);
    }
    let _ = text.parse::<Reason>();
    let _ = KeyId::parse(text);
    if let Some(tile) = stackpin_core::tiles::Tile::parse(text) {
        assert_eq!(tile.path(), text, "only canonical tile paths parse");
    }
    if let Ok(req) = stackpin_core::witness::AddCheckpoint::parse(text) {
        let again = stackpin_core::witness::AddCheckpoint::parse(&req.body()).expect("bodies parse");
        assert_eq!(again, req);
    }
    let _ = stackpin_core::witness::Policy::parse(text);
});
