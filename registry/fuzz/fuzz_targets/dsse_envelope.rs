//! DSSE envelope parsing and verification against a fixed trusted key.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stackpin_core::signing::{self, PublicKey, TrustedKeys};

static TRUSTED: LazyLock<TrustedKeys> = LazyLock::new(|| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    TrustedKeys::new([PublicKey::new(key.verifying_key())])
});

fuzz_target!(|data: &[u8]| {
    let _ = signing::verify_envelope(data, &TRUSTED);
});
