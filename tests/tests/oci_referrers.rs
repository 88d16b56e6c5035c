//! OCI referrers, read as a verifier holding only a manifest's digest
//! would: the publisher's signature (checked with securesystemslib) and the
//! pin's `.tlog-proof` (checked offline by `stackpin verify`).

#![allow(clippy::unwrap_used)]

use stackpin_tests::oci::{error_code, get, json, securesystemslib_verifies};
use stackpin_tests::world::World;

#[test]
fn the_signature_and_the_pins_proof_are_found_from_a_manifest_digest_alone() {
    let mut w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();
    let prod = get(addr, "/v2/objectstack/manifests/prod");
    assert_eq!(prod.status, 200);
    let subject = prod.headers["docker-content-digest"].clone();

    // The referrers API: the signature and the pin's proof, annotated with
    // release and pin.
    let listed = get(addr, &format!("/v2/objectstack/referrers/{subject}"));
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        listed.headers["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index = json(&listed);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let of_type = |t: &str| {
        entries
            .iter()
            .find(|e| e["artifactType"] == t)
            .unwrap_or_else(|| panic!("no {t} referrer: {index}"))
            .clone()
    };
    let entry = &of_type("application/vnd.dsse.envelope.v1+json");
    let a = &entry["annotations"];
    assert_eq!(a["dev.stackpin.release"], "rel-3");
    assert_eq!(a["dev.stackpin.environment"], "prod");
    assert_eq!(a["dev.stackpin.pin"], "3");
    assert_eq!(a["dev.stackpin.publish.log-index"], "2");
    assert_eq!(a["dev.stackpin.pin.log-index"], "5");

    // The referrer's manifest names the subject; its layer is the envelope,
    // which verifies under the publisher's key with a DSSE library.
    let referrer_digest = entry["digest"].as_str().unwrap().to_owned();
    let referrer = get(
        addr,
        &format!("/v2/objectstack/manifests/{referrer_digest}"),
    );
    assert_eq!(referrer.status, 200, "{referrer:?}");
    let manifest = json(&referrer);
    assert_eq!(manifest["subject"]["digest"], subject.as_str());
    assert_eq!(manifest["subject"]["size"], prod.body.len());
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let envelope = get(addr, &format!("/v2/objectstack/blobs/{layer}"));
    assert_eq!(envelope.status, 200);
    let said = securesystemslib_verifies(&envelope.body, &w.dir.path().join("trusted/ci.pub.pem"));
    assert_eq!(said.trim(), "verified; a changed payload is refused");

    // The proof referrer's layer is the pin's .tlog-proof: with the
    // artifact's bytes (the raw layer), `stackpin verify` checks it offline,
    // for the live pin and for one that has a successor.
    for (tag, release, until) in [
        ("prod", "rel-3", None),
        (
            "prod.at.20260301T103000Z",
            "rel-1",
            Some("2026-03-01T11:00:00"),
        ),
    ] {
        let m = get(addr, &format!("/v2/objectstack/manifests/{tag}"));
        let digest = &m.headers["docker-content-digest"];
        let list = json(&get(
            addr,
            &format!(
                "/v2/objectstack/referrers/{digest}?artifactType=application%2Fvnd.dev.stackpin.tlog-proof.v1"
            ),
        ));
        let found = list["manifests"].as_array().unwrap();
        assert_eq!(found.len(), 1, "{tag}: {list}");
        assert_eq!(found[0]["annotations"]["dev.stackpin.release"], release);
        let proof_manifest = json(&get(
            addr,
            &format!(
                "/v2/objectstack/manifests/{}",
                found[0]["digest"].as_str().unwrap()
            ),
        ));
        assert_eq!(proof_manifest["subject"]["digest"], digest.as_str());
        let layer = &proof_manifest["layers"][0];
        assert_eq!(
            layer["annotations"]["org.opencontainers.image.title"],
            "objectstack.json.tlog-proof"
        );
        let proof = get(
            addr,
            &format!(
                "/v2/objectstack/blobs/{}",
                layer["digest"].as_str().unwrap()
            ),
        );
        let artifact = get(
            addr,
            &format!(
                "/v2/objectstack/blobs/{}",
                json(&m)["layers"][0]["digest"].as_str().unwrap()
            ),
        );
        w.write("pulled.json", &artifact.body);
        w.write("pulled.json.tlog-proof", &proof.body);
        let verified = w
            .cli(&[
                "--output",
                "json",
                "verify",
                "pulled.json",
                "--trusted-keys",
                "trusted",
            ])
            .json();
        assert_eq!(verified["release_id"], release, "{tag}: {verified}");
        assert_eq!(verified["env"], "prod");
        match until {
            None => assert!(verified["live_until"].is_null(), "{verified}"),
            Some(t) => assert!(
                verified["live_until"].as_str().unwrap().starts_with(t),
                "{verified}"
            ),
        }
    }

    // Filtering by artifact type, and the tag fallback.
    let only = get(
        addr,
        &format!(
            "/v2/objectstack/referrers/{subject}?artifactType=application%2Fvnd.dsse.envelope.v1%2Bjson"
        ),
    );
    assert_eq!(only.headers["oci-filters-applied"], "artifactType");
    assert_eq!(json(&only)["manifests"].as_array().unwrap().len(), 1);
    let none = get(
        addr,
        &format!("/v2/objectstack/referrers/{subject}?artifactType=text%2Fplain"),
    );
    assert_eq!(json(&none)["manifests"], serde_json::json!([]));
    let hex = subject.strip_prefix("sha256:").unwrap();
    let by_tag = get(addr, &format!("/v2/objectstack/manifests/sha256-{hex}"));
    assert_eq!(by_tag.status, 200, "{by_tag:?}");
    assert_eq!(
        by_tag.headers["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(by_tag.body, listed.body);

    // A release's manifest has its signature without a pin; a digest this
    // registry serves nothing under has an empty list (not 404); a hostile
    // digest is refused.
    let release = get(addr, "/v2/objectstack-tgz/manifests/rel-2");
    let of_release = json(&get(
        addr,
        &format!(
            "/v2/objectstack-tgz/referrers/{}",
            release.headers["docker-content-digest"]
        ),
    ));
    let a = &of_release["manifests"][0]["annotations"];
    assert_eq!(a["dev.stackpin.release"], "rel-2");
    assert!(a.get("dev.stackpin.pin").is_none(), "{of_release}");
    let unknown = get(
        addr,
        &format!("/v2/objectstack/referrers/sha256:{}", "0".repeat(64)),
    );
    assert_eq!(unknown.status, 200);
    assert_eq!(json(&unknown)["manifests"], serde_json::json!([]));
    let hostile = get(addr, "/v2/objectstack/referrers/sha256:..%2F..");
    assert_eq!(hostile.status, 400);
    assert_eq!(error_code(&hostile), "DIGEST_INVALID");

    // After a restart (nothing in memory) the referrer is read back from
    // storage, derived again, and the same bytes.
    w.server = w.server.restart();
    let addr = w.server.tiles_addr();
    let again = get(
        addr,
        &format!("/v2/objectstack/manifests/{referrer_digest}"),
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, referrer.body);
    let proof_digest = of_type("application/vnd.dev.stackpin.tlog-proof.v1")["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let proof_again = get(addr, &format!("/v2/objectstack/manifests/{proof_digest}"));
    assert_eq!(proof_again.status, 200, "{proof_again:?}");
    let layer = json(&proof_again)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();

    // Someone with write access to storage edits the stored proof, and
    // names the edited file for the pin under its own digest: after a
    // restart it is no longer listed nor served; the signature still is.
    let blobs = w.dir.path().join("data/oci/blobs");
    let text = std::fs::read_to_string(blobs.join(&layer)).unwrap();
    let edited = text.replacen("\nindex 5\n", "\nindex 4\n", 1);
    assert_ne!(edited, text);
    let hex: String = <sha2::Sha256 as sha2::Digest>::digest(edited.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(blobs.join(&hex), &edited).unwrap();
    std::fs::write(
        w.dir.path().join("data/oci/proofs/5"),
        format!("sha256:{hex} {}", edited.len()),
    )
    .unwrap();
    w.server = w.server.restart();
    let addr = w.server.tiles_addr();
    let now = json(&get(addr, &format!("/v2/objectstack/referrers/{subject}")));
    let types: Vec<&str> = now["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["artifactType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["application/vnd.dsse.envelope.v1+json"], "{now}");
    let gone = get(addr, &format!("/v2/objectstack/manifests/{proof_digest}"));
    assert_eq!(gone.status, 404, "{gone:?}");
}
