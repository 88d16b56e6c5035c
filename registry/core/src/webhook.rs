//! Webhook events: one CloudEvents 1.0 event (structured JSON mode) per
//! log entry, signed as the Standard Webhooks asymmetric scheme does
//! (`webhook-signature: v1a,<base64 Ed25519 signature>` over
//! `<webhook-id>.<webhook-timestamp>.<body>`), with the log's key, so a
//! receiver checks it with the log's published vkey.
//!
//! Why the log key can sign these safely: a signed content never holds a
//! newline (the id and timestamp have none, the body is compact JSON,
//! whose strings escape theirs), while every note the log signs (a
//! checkpoint) is at least three lines; the two can never be confused.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Verifier as _;
use serde_json::{Value, json};

use crate::entry::{Entry, KeyAction};
use crate::error::{Error, Result};
use crate::note::{NoteSigner, NoteVerifier};

/// The content type of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// The CloudEvents `type` of an entry.
pub fn event_type(entry: &Entry) -> &'static str {
    match entry {
        Entry::Publish(_) => "dev.stackpin.artifact.published",
        Entry::Pin(_) => "dev.stackpin.pin.created",
        Entry::Key(k) => match k.action {
            KeyAction::Add => "dev.stackpin.key.added",
            KeyAction::Revoke => "dev.stackpin.key.revoked",
        },
        Entry::Snapshot(_) => "dev.stackpin.snapshot.recorded",
        Entry::Drill(d) if d.passed => "dev.stackpin.drill.passed",
        Entry::Drill(_) => "dev.stackpin.drill.failed",
        Entry::Promotion(_) => "dev.stackpin.log.promoted",
    }
}

/// The event id of entry `index` of the log `origin`: the same for every
/// delivery of it, so a receiver drops repeats by id.
pub fn event_id(origin: &str, index: u64) -> String {
    format!("{origin}/{index}")
}

/// The event for entry `index` of the log `origin`: CloudEvents 1.0 with
/// the entry's facts in `data` (and the whole entry under `data.entry`).
pub fn event(origin: &str, index: u64, entry: &Entry) -> Value {
    let mut data = json!({ "log_index": index, "entry": entry });
    let (subject, time) = match entry {
        Entry::Publish(p) => {
            data["release_id"] = json!(p.release_id);
            data["digest"] = json!(p.digest);
            data["size"] = json!(p.size);
            data["key_id"] = json!(p.key_id);
            (p.release_id.to_string(), p.recorded_at)
        }
        Entry::Pin(p) => {
            data["env"] = json!(p.env);
            data["seq"] = json!(p.seq);
            data["release_id"] = json!(p.release_id);
            data["digest"] = json!(p.digest);
            data["activated_at"] = json!(p.activated_at);
            data["db_position"] = json!(p.db_position.as_ref().map(ToString::to_string));
            data["actor"] = json!(p.actor);
            (p.env.to_string(), p.recorded_at)
        }
        Entry::Key(k) => {
            data["key_id"] = json!(k.key_id);
            data["action"] = json!(k.action);
            data["actor"] = json!(k.actor);
            (k.key_id.to_string(), k.recorded_at)
        }
        Entry::Snapshot(s) => {
            data["env"] = json!(s.env);
            data["driver"] = json!(s.driver);
            data["location"] = json!(s.location);
            data["db_time"] = json!(s.db_time);
            data["db_position"] = json!(s.db_position.as_ref().map(ToString::to_string));
            data["release_id"] = json!(s.live.release_id);
            data["digest"] = json!(s.live.digest);
            data["seq"] = json!(s.live.seq);
            data["actor"] = json!(s.actor);
            (s.env.to_string(), s.recorded_at)
        }
        Entry::Drill(d) => {
            data["env"] = json!(d.env);
            data["driver"] = json!(d.driver);
            data["target"] = json!(d.target);
            data["snapshot"] = json!(d.snapshot);
            data["release_id"] = json!(d.live.release_id);
            data["digest"] = json!(d.live.digest);
            data["seq"] = json!(d.live.seq);
            data["passed"] = json!(d.passed);
            data["rto_millis"] = json!(d.rto_millis);
            data["actor"] = json!(d.actor);
            (d.env.to_string(), d.recorded_at)
        }
        Entry::Promotion(p) => {
            data["epoch"] = json!(p.epoch);
            data["actor"] = json!(p.actor);
            (format!("epoch {}", p.epoch), p.promoted_at)
        }
    };
    json!({
        "specversion": "1.0",
        "id": event_id(origin, index),
        "source": origin,
        "type": event_type(entry),
        "subject": subject,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Result<Vec<u8>> {
    if id.contains('\n') || body.contains(&b'\n') {
        return Err(Error::invalid("a webhook id and body hold no newline"));
    }
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    Ok(content)
}

/// The `webhook-signature` header value for a delivery.
///
/// # Errors
/// Invalid when the id or body holds a newline (see the module docs).
pub fn sign(signer: &NoteSigner, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let sig = signer.sign_bytes(&signed_content(id, timestamp, body)?);
    Ok(format!("v1a,{}", STANDARD.encode(sig)))
}

/// Checks a `webhook-signature` header (any of its space-separated
/// signatures may match) against the log key.
///
/// # Errors
/// Invalid when no `v1a` signature in it verifies.
pub fn verify(
    log_key: &NoteVerifier,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> Result<()> {
    let content = signed_content(id, timestamp, body)?;
    let ok = header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1a,"))
        .filter_map(|b| STANDARD.decode(b).ok())
        .filter_map(|b| ed25519_dalek::Signature::from_slice(&b).ok())
        .any(|sig| log_key.key().verify(&content, &sig).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "no v1a signature in webhook-signature verifies under the log key",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_delivery_verifies_and_a_changed_one_does_not() {
        let signer = NoteSigner::new(
            "example.com/log",
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        let body = br#"{"specversion":"1.0"}"#;
        let header = sign(&signer, "example.com/log/5", 1_700_000_000, body).unwrap();
        let key = signer.verifier();
        verify(&key, "example.com/log/5", 1_700_000_000, body, &header).unwrap();
        let both = format!("v1a,AAAA {header}");
        verify(&key, "example.com/log/5", 1_700_000_000, body, &both).unwrap();
        for (id, ts, body) in [
            ("example.com/log/6", 1_700_000_000, &body[..]),
            ("example.com/log/5", 1_700_000_001, &body[..]),
            (
                "example.com/log/5",
                1_700_000_000,
                &br#"{"specversion":"1.1"}"#[..],
            ),
        ] {
            assert!(verify(&key, id, ts, body, &header).is_err());
        }
        assert!(sign(&signer, "x", 1, b"{\n}").is_err());
    }

    #[test]
    fn snapshots_and_drills_are_events_about_their_environment_and_artifact() {
        for (seed, kind, passed) in [
            (
                &include_bytes!("../../fuzz/corpus/log_entry/snapshot")[..],
                "dev.stackpin.snapshot.recorded",
                None,
            ),
            (
                &include_bytes!("../../fuzz/corpus/log_entry/drill")[..],
                "dev.stackpin.drill.passed",
                Some(true),
            ),
        ] {
            let entry = Entry::parse(9, seed).unwrap();
            let e = event("example.com/log", 9, &entry);
            assert_eq!(e["type"], kind);
            assert_eq!(e["subject"], "prod");
            assert_eq!(e["data"]["release_id"], "rel-3");
            assert_eq!(e["data"]["seq"], 3);
            assert_eq!(e["data"]["log_index"], 9);
            assert_eq!(e["data"].get("passed").and_then(Value::as_bool), passed);
        }
        let failed = br#"{"type":"drill","env":"prod","driver":"other","target":"2026-01-01T00:00:00Z","live":{"seq":1,"release_id":"r","digest":"sha256:b11a26ab2e8e81d75fa098d0d06fb4c40edc8fecfb3f3e09590a8e50a2070dfb"},"checks":[],"passed":false,"failure":"no rows","started_at":"2026-01-01T00:00:00Z","recorded_at":"2026-01-01T00:00:01Z","actor":"a"}"#;
        let entry = Entry::parse(1, failed).unwrap();
        assert_eq!(event_type(&entry), "dev.stackpin.drill.failed");
    }
}
