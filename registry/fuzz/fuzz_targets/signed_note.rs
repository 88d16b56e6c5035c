//! Signed notes, checkpoints and verifier keys from untrusted text.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stackpin_core::note::{Checkpoint, NoteSigner, NoteVerifier};

static SIGNER: LazyLock<NoteSigner> = LazyLock::new(|| {
    NoteSigner::new("stackpin.local/log", ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        .expect("a valid name")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = NoteVerifier::parse(text);
    let _ = Checkpoint::parse(text);
    let verifier = SIGNER.verifier();
    if let Ok(opened) = verifier.open(text) {
        // Only the signer's own notes open; they must end in a newline.
        assert!(opened.ends_with('\n'));
    }
    let _ = Checkpoint::open(text, &verifier);
});
