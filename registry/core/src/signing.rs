//! Publisher keys, DSSE envelopes and in-toto statements.
//!
//! A publisher proves it produced an artifact by signing a DSSE envelope
//! (<https://github.com/secure-systems-lab/dsse>) whose payload is an in-toto
//! Statement v1 naming the artifact:
//!
//! ```text
//! envelope  {"payloadType": "application/vnd.in-toto+json",
//!            "payload": base64(statement),
//!            "signatures": [{"keyid": "...", "sig": base64(ed25519(PAE))}]}
//! statement {"_type": "https://in-toto.io/Statement/v1",
//!            "subject": [{"name": <release id>, "digest": {"sha256": <hex>}}],
//!            "predicateType": ..., "predicate": {...}}
//! PAE       "DSSEv1" SP len(type) SP type SP len(payload) SP payload
//! ```
//!
//! Signatures are pure Ed25519 (RFC 8032) over the PAE bytes. Keys load from
//! PEM: PKCS#8 private keys and SPKI public keys, as OpenSSL writes them.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Deserialize as _;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::Error;
use crate::ids::ReleaseId;

/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto Statement v1 type URI.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// The predicate type stackpin's CLI writes for a publish.
pub const PUBLISH_PREDICATE: &str = "https://stackpin.local/publish/v1";
/// Largest envelope accepted; a statement naming one artifact is far smaller.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// An identifier derived from a public key: hex SHA-256 of its 32 raw bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a key id: 64 lowercase hex digits.
    ///
    /// # Errors
    /// Invalid for anything else.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::invalid(format!(
                "key id {} is not 64 lowercase hex digits",
                crate::error::shown(text)
            )))
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A publisher's public key and its id.
#[derive(Clone, Debug)]
pub struct PublicKey {
    id: KeyId,
    key: VerifyingKey,
}

impl PublicKey {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> Self {
        Self {
            id: KeyId::of(&key),
            key,
        }
    }

    /// Parses an SPKI PEM public key (`openssl pkey -pubout`).
    ///
    /// # Errors
    /// Invalid when the text is not an Ed25519 public key in PEM.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| Error::invalid(format!("not an Ed25519 public key in PEM (SPKI): {e}")))?;
        Ok(Self::new(key))
    }

    /// The SPKI PEM text of this key.
    ///
    /// # Errors
    /// Internal if encoding fails.
    pub fn to_pem(&self) -> Result<String, Error> {
        self.key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| Error::internal(format!("encoding public key: {e}")))
    }

    /// The key id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Verifies a pure Ed25519 signature (strict: no malleable signatures or
    /// weak keys).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }
}

/// The set of publisher keys the registry (or an auditor) trusts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// A set of the given keys (duplicates removed).
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut out: Vec<PublicKey> = Vec::new();
        for key in keys {
            if !out.iter().any(|k| k.id == key.id) {
                out.push(key);
            }
        }
        Self { keys: out }
    }

    /// Loads a PEM public-key file, or every `*.pem` file in a folder.
    ///
    /// # Errors
    /// Invalid when the path cannot be read, a file is not a public key, or
    /// no key is found at all.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::invalid(format!("trusted keys {}: {e}", path.display())))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| Error::invalid(format!("trusted keys {}: {e}", path.display())))?;
            for entry in entries {
                let entry = entry
                    .map_err(|e| Error::invalid(format!("trusted keys {}: {e}", path.display())))?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "pem") && p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut keys = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::invalid(format!("trusted key {}: {e}", file.display())))?;
            let key = PublicKey::from_pem(&text)
                .map_err(|e| Error::invalid(format!("trusted key {}: {e}", file.display())))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(Error::invalid(format!(
                "no trusted keys found at {} (expected a PEM public key file or a folder of *.pem)",
                path.display()
            )));
        }
        Ok(Self::new(keys))
    }

    /// The keys, as a set.
    pub fn into_keys(self) -> Vec<PublicKey> {
        self.keys
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A new Ed25519 key from the system's randomness.
///
/// # Errors
/// Internal when the system has no randomness.
pub fn generate_key() -> Result<SigningKey, Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| Error::internal(format!("no system randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
///
/// # Errors
/// Invalid when the text is not such a key.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, Error> {
    SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| Error::invalid(format!("not an Ed25519 private key in PKCS#8 PEM: {e}")))
}

/// Writes a private key as PKCS#8 v1 PEM (no embedded public key), the form
/// OpenSSL 3.0 reads.
///
/// # Errors
/// Internal if encoding fails.
pub fn signing_key_to_pem(key: &SigningKey) -> Result<String, Error> {
    let bytes = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    bytes
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| Error::internal(format!("encoding private key: {e}")))
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EnvelopeJson {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<SignatureJson>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SignatureJson {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    keyid: String,
    sig: String,
}

fn decode_b64(what: &str, text: &str) -> Result<Vec<u8>, Error> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|e| Error::invalid(format!("DSSE envelope: {what} is not base64: {e}")))
}

/// The artifact a verified envelope names, and who signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// The subject's name: the release id.
    pub release_id: ReleaseId,
    /// The subject's sha256 digest.
    pub digest: Digest,
    /// The trusted key whose signature verified.
    pub key_id: KeyId,
    /// The statement's `predicateType`: what the signer meant it for.
    pub predicate_type: String,
}

/// A DSSE envelope whose signature verified: the exact bytes received, the
/// JSON they parse to (what a publish entry embeds) and what it attests.
/// Verifying returns this so that nothing downstream parses the bytes again.
#[derive(Clone, Debug)]
pub struct VerifiedEnvelope {
    bytes: Vec<u8>,
    json: serde_json::Value,
    attestation: Attestation,
}

impl VerifiedEnvelope {
    /// What the envelope attests, and the key that signed it.
    pub fn attestation(&self) -> &Attestation {
        &self.attestation
    }

    /// The envelope exactly as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The envelope as JSON, for embedding in a log entry.
    pub fn into_json(self) -> serde_json::Value {
        self.json
    }
}

/// Parses a DSSE envelope, checks that one of its signatures verifies under a
/// trusted key, and returns it with the single in-toto subject it attests.
///
/// # Errors
/// Invalid for a malformed envelope or statement, a payload type other than
/// in-toto, or no signature that verifies under a trusted key.
pub fn verify_envelope(envelope: &[u8], trusted: &TrustedKeys) -> Result<VerifiedEnvelope, Error> {
    if envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(Error::invalid(format!(
            "DSSE envelope is {} bytes; at most {MAX_ENVELOPE_BYTES} are allowed",
            envelope.len()
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(envelope)
        .map_err(|e| Error::invalid(format!("DSSE envelope is not valid JSON: {e}")))?;
    let attestation = verify_logged_envelope(&json, trusted)?;
    Ok(VerifiedEnvelope {
        bytes: envelope.to_vec(),
        json,
        attestation,
    })
}

/// As [`verify_envelope`], for an envelope already held as JSON (as a
/// publish entry embeds it).
///
/// # Errors
/// As [`verify_envelope`].
pub fn verify_logged_envelope(
    envelope: &serde_json::Value,
    trusted: &TrustedKeys,
) -> Result<Attestation, Error> {
    let env = EnvelopeJson::deserialize(envelope)
        .map_err(|e| Error::invalid(format!("DSSE envelope is not valid: {e}")))?;
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(Error::invalid(format!(
            "DSSE payloadType is {:?}; expected {IN_TOTO_PAYLOAD_TYPE:?}",
            env.payload_type
        )));
    }
    if env.signatures.is_empty() {
        return Err(Error::invalid("DSSE envelope has no signatures"));
    }
    let payload = decode_b64("payload", &env.payload)?;
    let message = pae(&env.payload_type, &payload);
    let mut key_id = None;
    'sigs: for sig in &env.signatures {
        let raw = decode_b64("sig", &sig.sig)?;
        let Ok(signature) = Signature::from_slice(&raw) else {
            continue;
        };
        for key in trusted.keys() {
            if !sig.keyid.is_empty() && sig.keyid != key.id.0 {
                continue;
            }
            if key.verify(&message, &signature) {
                key_id = Some(key.id.clone());
                break 'sigs;
            }
        }
    }
    let Some(key_id) = key_id else {
        // Every signature names a key id and none is a trusted key's: say
        // so, since a key id in another convention is the likely cause.
        let named: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
        let trusted_ids = || -> bool {
            trusted
                .keys()
                .iter()
                .any(|k| named.iter().any(|n| *n == k.id.0))
        };
        if named.iter().all(|n| !n.is_empty()) && !trusted_ids() {
            let seen: Vec<String> = named.iter().map(|n| crate::error::shown(n)).collect();
            let known: Vec<&str> = trusted.keys().iter().map(|k| k.id.as_str()).collect();
            return Err(Error::invalid(format!(
                "DSSE signature does not verify under any trusted publisher key: none has the key \
                 id the envelope's signatures name ({}); \
                 the trusted keys' ids are {} (stackpin's key id: the hex SHA-256 of the raw \
                 32-byte Ed25519 public key; leave keyid empty to try every trusted key)",
                seen.join(", "),
                known.join(", ")
            )));
        }
        return Err(Error::invalid(
            "DSSE signature does not verify under any trusted publisher key \
             (wrong key, untrusted key, or the envelope was altered)",
        ));
    };
    let (release_id, digest, predicate_type) = parse_statement(&payload)?;
    Ok(Attestation {
        release_id,
        digest,
        key_id,
        predicate_type,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StatementJson {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<SubjectJson>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SubjectJson {
    name: String,
    digest: std::collections::BTreeMap<String, String>,
}

fn parse_statement(payload: &[u8]) -> Result<(ReleaseId, Digest, String), Error> {
    // Strict JSON first: with a key twice (a subject's `sha256`), a
    // verifier that keeps the first would read another digest than this
    // one, which keeps the last.
    crate::json::check(payload, crate::json::DEFAULT_MAX_DEPTH)
        .map_err(|e| Error::invalid(format!("in-toto statement is not strict JSON: {e}")))?;
    let st: StatementJson = serde_json::from_slice(payload)
        .map_err(|e| Error::invalid(format!("in-toto statement is not valid: {e}")))?;
    if st.type_ != STATEMENT_V1 {
        return Err(Error::invalid(format!(
            "in-toto statement _type is {:?}; expected {STATEMENT_V1:?}",
            st.type_
        )));
    }
    let [subject] = st.subject.as_slice() else {
        return Err(Error::invalid(format!(
            "in-toto statement names {} subjects; exactly one is required",
            st.subject.len()
        )));
    };
    let release_id = subject.name.parse::<ReleaseId>()?;
    let hex = subject
        .digest
        .get("sha256")
        .ok_or_else(|| Error::invalid("in-toto subject has no sha256 digest"))?;
    Ok((release_id, Digest::from_hex(hex)?, st.predicate_type))
}

/// Whether an in-toto statement of `predicate_type` is a publish: stackpin's
/// own type, or one of `also` (an operator's `accepted_predicate_types`).
pub fn is_publish_predicate(predicate_type: &str, also: &[String]) -> bool {
    predicate_type == PUBLISH_PREDICATE || also.iter().any(|t| t == predicate_type)
}

/// The in-toto statement the CLI signs for a publish.
pub fn publish_statement(release_id: &ReleaseId, digest: &Digest) -> Vec<u8> {
    publish_statement_with_source(release_id, digest, None)
}

/// [`publish_statement`], naming where the artifact's source lives (a URL
/// that passes [`crate::source::check`]).
pub fn publish_statement_with_source(
    release_id: &ReleaseId,
    digest: &Digest,
    source: Option<&str>,
) -> Vec<u8> {
    let mut predicate = serde_json::json!({ "mediaType": "application/json" });
    if let Some(url) = source {
        predicate["source"] = serde_json::Value::from(url);
    }
    let st = StatementJson {
        type_: STATEMENT_V1.to_owned(),
        subject: vec![SubjectJson {
            name: release_id.as_str().to_owned(),
            digest: [("sha256".to_owned(), digest.hex())].into_iter().collect(),
        }],
        predicate_type: PUBLISH_PREDICATE.to_owned(),
        predicate,
    };
    // Serializing plain strings and maps cannot fail.
    serde_json::to_vec(&st).unwrap_or_default()
}

/// Signs `payload` (an in-toto statement) into a DSSE envelope.
pub fn sign_envelope(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let signature = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, payload));
    let env = EnvelopeJson {
        payload_type: IN_TOTO_PAYLOAD_TYPE.to_owned(),
        payload: STANDARD.encode(payload),
        signatures: vec![SignatureJson {
            keyid: KeyId::of(&key.verifying_key()).0,
            sig: STANDARD.encode(signature.to_bytes()),
        }],
    };
    serde_json::to_vec(&env).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_no_trusted_key_has_is_named_with_the_trusted_ones() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let trusted = TrustedKeys::new([PublicKey::new(k.verifying_key())]);
        let rid: ReleaseId = "r1".parse().unwrap();
        let envelope = sign_envelope(&publish_statement(&rid, &Digest::of(b"x")), &k);
        let mut v: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
        v["signatures"][0]["keyid"] = "securesystemslib-style-id".into();
        let err = verify_envelope(&serde_json::to_vec(&v).unwrap(), &trusted).unwrap_err();
        let msg = err.message();
        assert!(msg.contains("\"securesystemslib-style-id\""), "{msg}");
        assert!(
            msg.contains(KeyId::of(&k.verifying_key()).as_str()),
            "{msg}"
        );
        // Without a key id every trusted key is tried.
        v["signatures"][0]["keyid"] = "".into();
        verify_envelope(&serde_json::to_vec(&v).unwrap(), &trusted).unwrap();
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn trusted(keys: &[&SigningKey]) -> TrustedKeys {
        TrustedKeys::new(keys.iter().map(|k| PublicKey::new(k.verifying_key())))
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn signed_envelope_verifies_and_names_its_subject() {
        let k = key(1);
        let rid: ReleaseId = "rel-1".parse().unwrap();
        let d = Digest::of(b"{}");
        let env = sign_envelope(&publish_statement(&rid, &d), &k);
        let att = verify_envelope(&env, &trusted(&[&key(2), &k])).unwrap();
        assert_eq!(att.attestation().release_id, rid);
        assert_eq!(att.attestation().digest, d);
        assert_eq!(att.attestation().key_id, KeyId::of(&k.verifying_key()));
    }

    #[test]
    fn untrusted_key_and_altered_payload_are_rejected() {
        let k = key(1);
        let rid: ReleaseId = "rel-1".parse().unwrap();
        let env = sign_envelope(&publish_statement(&rid, &Digest::of(b"{}")), &k);
        assert!(verify_envelope(&env, &trusted(&[&key(2)])).is_err());

        let mut v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        let other = publish_statement(&rid, &Digest::of(b"[]"));
        v["payload"] = STANDARD.encode(other).into();
        let altered = serde_json::to_vec(&v).unwrap();
        let err = verify_envelope(&altered, &trusted(&[&k])).unwrap_err();
        assert!(err.message().contains("does not verify"), "{err}");
    }

    #[test]
    fn malformed_envelopes_get_specific_errors() {
        let k = key(1);
        let t = trusted(&[&k]);
        assert!(
            verify_envelope(b"not json", &t)
                .unwrap_err()
                .message()
                .contains("not valid JSON")
        );
        let wrong_type = br#"{"payloadType":"text/plain","payload":"","signatures":[]}"#;
        assert!(
            verify_envelope(wrong_type, &t)
                .unwrap_err()
                .message()
                .contains("payloadType")
        );
        let no_sigs =
            br#"{"payloadType":"application/vnd.in-toto+json","payload":"","signatures":[]}"#;
        assert!(
            verify_envelope(no_sigs, &t)
                .unwrap_err()
                .message()
                .contains("no signatures")
        );
        // Two subjects.
        let payload = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"a","digest":{"sha256":"00"}},{"name":"b","digest":{}}],"predicateType":"x"}"#;
        let env = sign_envelope(payload, &k);
        assert!(
            verify_envelope(&env, &t)
                .unwrap_err()
                .message()
                .contains("exactly one")
        );
    }

    #[test]
    fn a_statement_with_a_key_twice_is_refused_wherever_it_is() {
        let digest = "a".repeat(64);
        let bogus = "b".repeat(64);
        for payload in [
            format!(
                r#"{{"_type":"{STATEMENT_V1}","subject":[{{"name":"rel-1","digest":{{"sha256":"{bogus}","sha256":"{digest}"}}}}],"predicateType":"{PUBLISH_PREDICATE}"}}"#
            ),
            format!(
                r#"{{"_type":"{STATEMENT_V1}","subject":[{{"name":"rel-1","digest":{{"sha256":"{digest}"}}}}],"predicateType":"{PUBLISH_PREDICATE}","predicate":{{"a":1,"a":2}}}}"#
            ),
            format!(
                r#"{{"_type":"{STATEMENT_V1}","_type":"{STATEMENT_V1}","subject":[{{"name":"rel-1","digest":{{"sha256":"{digest}"}}}}],"predicateType":"{PUBLISH_PREDICATE}"}}"#
            ),
        ] {
            let e = parse_statement(payload.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("duplicate member name"), "{e}");
        }
        let plain = format!(
            r#"{{"_type":"{STATEMENT_V1}","subject":[{{"name":"rel-1","digest":{{"sha256":"{digest}"}}}}],"predicateType":"{PUBLISH_PREDICATE}"}}"#
        );
        parse_statement(plain.as_bytes()).unwrap();
    }

    #[test]
    fn private_key_pem_round_trips_as_pkcs8_v1() {
        let k = key(7);
        let pem = signing_key_to_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        // PKCS#8 v1 for Ed25519 is 48 bytes of DER: 64 base64 characters.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(body.len(), 64, "{pem}");
        assert_eq!(signing_key_from_pem(&pem).unwrap().to_bytes(), k.to_bytes());
        let public = PublicKey::new(k.verifying_key());
        let again = PublicKey::from_pem(&public.to_pem().unwrap()).unwrap();
        assert_eq!(again.id(), public.id());
    }
}
