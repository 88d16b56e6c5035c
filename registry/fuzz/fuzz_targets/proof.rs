//! Proof verification: tlog-proof files, and inclusion and consistency
//! proofs with arbitrary sizes, indices and hashes. Nothing may panic, and
//! nothing random may verify against the real tree.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use stackpin_core::merkle::{self, MemoryTree};
use stackpin_core::note::NoteSigner;
use stackpin_core::proof::RestoreProof;
use stackpin_core::signing::TrustedKeys;

static TREE: LazyLock<(MemoryTree, merkle::Hash)> = LazyLock::new(|| {
    let mut tree = MemoryTree::new();
    for i in 0..37u8 {
        tree.push(merkle::leaf_hash(&[i]));
    }
    let root = merkle::root(&tree, 37).expect("root of a full tree");
    (tree, root)
});

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(proof) = RestoreProof::parse_tlog_proof(text)
    {
        let signer = NoteSigner::new("stackpin.local/log", ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
            .expect("a valid name");
        let _ = proof.verify(b"{}", &signer.verifier(), &TrustedKeys::default());
    }
    if data.len() < 16 {
        return;
    }
    let index = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
    let size = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    let hashes: Vec<merkle::Hash> = data[16..]
        .chunks_exact(32)
        .filter_map(merkle::Hash::from_slice)
        .collect();
    let (tree, root) = &*TREE;
    let leaf = merkle::leaf_hash(&[(index % 256) as u8]);
    if merkle::verify_inclusion(&leaf, index, size, &hashes, root).is_ok() {
        // Only the true proof can verify.
        let real = merkle::inclusion_proof(tree, index, size.min(37)).expect("a real proof");
        assert_eq!(real, hashes);
    }
    let _ = merkle::verify_consistency(index, size, root, root, &hashes);
});
