//! The OCI Distribution pull API, read by a client stackpin did not write
//! (skopeo, from Debian) and by plain HTTP requests as the spec writes
//! them.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use stackpin_tests::oci::{Distribution, error_code, get, json, oras_pull, request, skopeo_run};
use stackpin_tests::world::World;

#[test]
fn tags_follow_pins_and_instants_answer_as_resolve_does() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();

    let base = get(addr, "/v2/");
    assert_eq!(base.status, 200, "{base:?}");
    assert_eq!(
        base.headers
            .get("docker-distribution-api-version")
            .map(String::as_str),
        Some("registry/2.0")
    );

    // prod is release rel-3 (pin #3), an instant tag what resolve says.
    let prod = get(addr, "/v2/objectstack/manifests/prod");
    assert_eq!(prod.status, 200, "{prod:?}");
    let manifest = json(&prod);
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.objectos.objectstack.v1+json"
    );
    assert_eq!(manifest["annotations"]["dev.stackpin.release"], "rel-3");
    assert_eq!(manifest["annotations"]["dev.stackpin.pin"], "3");
    let digest = prod.headers["docker-content-digest"].clone();
    assert_eq!(
        digest,
        format!(
            "sha256:{}",
            <sha2::Sha256 as sha2::Digest>::digest(&prod.body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    );
    for (tag, at, release) in [
        ("prod.at.20260301T103000Z", "2026-03-01T10:30:00Z", "rel-1"),
        ("prod.at.20260301T110000Z", "2026-03-01T11:00:00Z", "rel-2"),
        (
            "prod.at.20260301T115959.5Z",
            "2026-03-01T11:59:59.5Z",
            "rel-2",
        ),
    ] {
        let answer = get(addr, &format!("/v2/objectstack/manifests/{tag}"));
        assert_eq!(answer.status, 200, "{tag}: {answer:?}");
        assert_eq!(
            json(&answer)["annotations"]["dev.stackpin.release"],
            release,
            "{tag}"
        );
        let resolved = w
            .cli(&["--output", "json", "resolve", "--env", "prod", "--at", at])
            .json();
        assert_eq!(resolved["pin"]["release_id"], release, "{tag}: {resolved}");
    }
    let before = get(addr, "/v2/objectstack/manifests/prod.at.20200101T000000Z");
    assert_eq!(before.status, 404, "{before:?}");
    assert_eq!(error_code(&before), "MANIFEST_UNKNOWN");

    // A HEAD by tag says the digest and length without a body; a pin moves
    // the tag.
    let head = request(addr, "HEAD", "/v2/objectstack/manifests/prod", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["docker-content-digest"], digest);
    assert_eq!(head.headers["content-length"], prod.body.len().to_string());
    assert!(head.body.is_empty());
    w.cli(&[
        "pin",
        "--env",
        "prod",
        "--new-env",
        "--release-id",
        "rel-1",
        "--reason",
        "back",
    ])
    .ok();
    let moved = request(addr, "HEAD", "/v2/objectstack/manifests/prod", &[]);
    assert_ne!(moved.headers["docker-content-digest"], digest);
    // The earlier manifest stays readable by its digest, and unchanged.
    let by_digest = get(addr, &format!("/v2/objectstack/manifests/{digest}"));
    assert_eq!(by_digest.status, 200, "{by_digest:?}");
    assert_eq!(by_digest.body, prod.body);
    let unchanged = request(
        addr,
        "GET",
        &format!("/v2/objectstack/manifests/{digest}"),
        &[("If-None-Match", &format!("\"{digest}\""))],
    );
    assert_eq!(unchanged.status, 304);

    // The release tag never moves; the layer is the artifact's bytes.
    let rel = json(&get(addr, "/v2/objectstack/manifests/rel-2"));
    let layer = rel["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = get(addr, &format!("/v2/objectstack/blobs/{layer}"));
    assert_eq!(blob.status, 200);
    assert_eq!(
        blob.body,
        std::fs::read(w.dir.path().join("a2.json")).unwrap()
    );
    let part = request(
        addr,
        "GET",
        &format!("/v2/objectstack/blobs/{layer}"),
        &[("Range", "bytes=2-8")],
    );
    assert_eq!(part.status, 206, "{part:?}");
    assert_eq!(part.body, blob.body[2..=8]);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 2-8/{}", blob.body.len())
    );
    let config = get(
        addr,
        "/v2/objectstack/blobs/sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    );
    assert_eq!(config.body, b"{}");

    // tags/list pages in lexical order.
    let all = json(&get(addr, "/v2/objectstack/tags/list"));
    assert_eq!(
        all["tags"],
        serde_json::json!(["prod", "rel-1", "rel-2", "rel-3"])
    );
    let page = get(addr, "/v2/objectstack/tags/list?n=2&last=prod");
    assert_eq!(json(&page)["tags"], serde_json::json!(["rel-1", "rel-2"]));
    assert!(page.headers["link"].contains("last=rel-2"), "{page:?}");
}

#[test]
fn every_write_verb_and_every_hostile_reference_gets_the_specs_error() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();
    for (method, path) in [
        ("PUT", "/v2/objectstack/manifests/prod"),
        ("DELETE", "/v2/objectstack/manifests/rel-1"),
        ("POST", "/v2/objectstack/blobs/uploads/"),
        ("PATCH", "/v2/objectstack/blobs/uploads/x"),
        (
            "DELETE",
            "/v2/objectstack/blobs/sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        ),
    ] {
        let a = request(addr, method, path, &[("Content-Length", "0")]);
        assert_eq!(a.status, 405, "{method} {path}: {a:?}");
        assert_eq!(error_code(&a), "UNSUPPORTED");
    }
    let prod = json(&get(addr, "/v2/objectstack/manifests/prod"));
    assert_eq!(
        prod["annotations"]["dev.stackpin.release"], "rel-3",
        "nothing changed"
    );

    for (path, status, code) in [
        ("/v2/other/manifests/prod", 404, "NAME_UNKNOWN"),
        ("/v2/objectstack/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        (
            "/v2/objectstack/manifests/..%2F..%2Fetc",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/objectstack/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        (
            "/v2/objectstack/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/objectstack/blobs/sha512:00", 400, "DIGEST_INVALID"),
        (
            "/v2/objectstack/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "/v2/objectstack/tags/list?n=x",
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            "/v2/objectstack/manifests/prod.at.20269999T000000Z",
            404,
            "MANIFEST_UNKNOWN",
        ),
    ] {
        let a = get(addr, path);
        assert_eq!(a.status, status, "{path}: {a:?}");
        assert_eq!(error_code(&a), code, "{path}");
    }
    let huge = get(addr, "/v2/objectstack/tags/list?n=99999999999999999999");
    assert_eq!(huge.status, 400);
    let capped = json(&get(addr, "/v2/objectstack/tags/list?n=100000"));
    assert_eq!(capped["tags"].as_array().map(Vec::len), Some(4));
    let layer = json(&get(addr, "/v2/objectstack/manifests/rel-1"))["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    for range in [
        "bytes=999999-",
        "bytes=5-2",
        "bytes=-0",
        "items=0-1",
        "bytes=0-1,3-4",
    ] {
        let a = request(
            addr,
            "GET",
            &format!("/v2/objectstack/blobs/{layer}"),
            &[("Range", range)],
        );
        assert_eq!(a.status, 416, "{range}: {a:?}");
    }
}

#[test]
fn with_tokens_registry_clients_get_a_basic_challenge_and_read_with_the_token() {
    let dir = tempfile::TempDir::new().unwrap();
    let (server, token) = stackpin_tests::start_with_read_token(dir.path(), "flux");
    let addr = server.tiles_addr();
    let anonymous = get(addr, "/v2/objectstack/tags/list");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(
        anonymous.headers["www-authenticate"].starts_with("Basic realm="),
        "{anonymous:?}"
    );
    assert_eq!(error_code(&anonymous), "UNAUTHORIZED");
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("flux:{token}"))
    };
    let ok = request(
        addr,
        "GET",
        "/v2/objectstack/tags/list",
        &[("Authorization", &format!("Basic {basic}"))],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let bearer = request(
        addr,
        "GET",
        "/v2/objectstack/tags/list",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(bearer.status, 200);
    assert_eq!(bearer.body, ok.body);
    let wrong = request(
        addr,
        "GET",
        "/v2/objectstack/tags/list",
        &[("Authorization", "Basic Zmx1eDpub3BlCg==")],
    );
    assert_eq!(wrong.status, 401);

    let inspected = skopeo_run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("flux:{token}"),
        &format!("docker://{addr}/objectstack:nope"),
    ]);
    // Past the challenge with the token: the tag is unknown, not refused.
    let said = String::from_utf8_lossy(&inspected.stderr);
    assert!(!inspected.status.success());
    assert!(said.contains("manifest unknown"), "{said}");
}

#[test]
fn a_token_scoped_to_one_environment_sees_and_reads_only_its_tags() {
    let keys = tempfile::TempDir::new().unwrap();
    let (ci, ci_entry) =
        stackpin_tests::create_token(keys.path(), "ci", &["publish", "pin", "read"]);
    let (stage, stage_entry) =
        stackpin_tests::create_scoped_token(keys.path(), "stage-flux", &["read"], &["staging"]);
    let (all, all_entry) = stackpin_tests::create_token(keys.path(), "auditor", &["read"]);
    let cfg = keys.path().join("tokens.toml");
    std::fs::write(&cfg, format!("{ci_entry}\n{stage_entry}\n{all_entry}")).unwrap();
    let w = World::new(&[
        "--http-listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    for i in [1, 2] {
        let name = format!("a{i}.json");
        w.write(&name, format!("{{\"release\":{i}}}").as_bytes());
        w.cli_as(
            &ci,
            &[
                "publish",
                &name,
                "--release-id",
                &format!("rel-{i}"),
                "--key",
                "ci.pem",
            ],
        )
        .ok();
    }
    for (env, release) in [("prod", "rel-1"), ("staging", "rel-2")] {
        w.cli_as(
            &ci,
            &[
                "pin",
                "--env",
                env,
                "--new-env",
                "--release-id",
                release,
                "--activated-at",
                stackpin_tests::world::T1,
                "--reason",
                "setup",
            ],
        )
        .ok();
    }
    let addr = w.server.tiles_addr();
    let bearer = |t: &str| format!("Bearer {t}");
    let as_ = |token: &str, method: &str, path: &str| {
        request(addr, method, path, &[("Authorization", &bearer(token))])
    };
    let tags = |token: &str, query: &str| {
        let a = as_(token, "GET", &format!("/v2/objectstack/tags/list{query}"));
        assert_eq!(a.status, 200, "{a:?}");
        (json(&a)["tags"].clone(), a.headers.get("link").cloned())
    };

    // The list is filtered, not refused; release ids stay (an artifact is
    // no environment's), paging walks the filtered list.
    assert_eq!(
        tags(&all, "").0,
        serde_json::json!(["prod", "rel-1", "rel-2", "staging"])
    );
    assert_eq!(
        tags(&stage, "").0,
        serde_json::json!(["rel-1", "rel-2", "staging"])
    );
    let (first, link) = tags(&stage, "?n=2");
    assert_eq!(first, serde_json::json!(["rel-1", "rel-2"]));
    assert!(link.unwrap().contains("last=rel-2"));
    assert_eq!(
        tags(&stage, "?n=2&last=rel-2").0,
        serde_json::json!(["staging"])
    );
    assert_eq!(tags(&stage, "?last=prod").0, tags(&stage, "").0);

    // Its own tags read; another environment's do not, by tag, by instant,
    // by HEAD or by the digest another caller was given.
    for path in ["staging", "staging.at.20260301T103000Z", "rel-1"] {
        let a = as_(&stage, "GET", &format!("/v2/objectstack/manifests/{path}"));
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
    let prod = as_(&all, "GET", "/v2/objectstack/manifests/prod");
    assert_eq!(prod.status, 200, "{prod:?}");
    let digest = prod.headers["docker-content-digest"].clone();
    for (method, path) in [
        ("GET", "/v2/objectstack/manifests/prod".to_owned()),
        ("HEAD", "/v2/objectstack/manifests/prod".to_owned()),
        ("GET", "/v2/objectstack-tgz/manifests/prod".to_owned()),
        (
            "GET",
            "/v2/objectstack/manifests/prod.at.20260301T103000Z".to_owned(),
        ),
        ("GET", format!("/v2/objectstack/manifests/{digest}")),
        ("GET", format!("/v2/objectstack/referrers/{digest}")),
        (
            "GET",
            format!(
                "/v2/objectstack/manifests/sha256-{}",
                digest.trim_start_matches("sha256:")
            ),
        ),
    ] {
        let a = as_(&stage, method, &path);
        assert_eq!(a.status, 403, "{method} {path}: {a:?}");
        if method == "GET" {
            assert_eq!(error_code(&a), "DENIED", "{path}");
        }
    }
    // Asked again (now from memory), still refused.
    let again = as_(&stage, "GET", "/v2/objectstack/manifests/prod");
    assert_eq!(again.status, 403);
    let inspected = skopeo_run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("stage-flux:{stage}"),
        &format!("docker://{addr}/objectstack:prod"),
    ]);
    let said = String::from_utf8_lossy(&inspected.stderr);
    assert!(!inspected.status.success());
    assert!(said.contains("denied"), "{said}");
}

#[test]
fn skopeo_copies_the_live_artifact_into_an_oci_layout_byte_for_byte() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();
    let raw = skopeo_run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{addr}/objectstack:prod"),
    ]);
    assert!(raw.status.success(), "{raw:?}");
    let manifest: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(manifest["annotations"]["dev.stackpin.release"], "rel-3");

    let layout = w.dir.path().join("layout");
    let copied = skopeo_run(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{addr}/objectstack:prod"),
        &format!("oci:{}:prod", layout.display()),
    ]);
    assert!(copied.status.success(), "{copied:?}");
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(bytes, std::fs::read(w.dir.path().join("a3.json")).unwrap());
}

#[test]
fn the_tar_gzip_form_unpacks_to_the_artifact_and_keeps_its_digest_across_restarts() {
    let mut w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();
    let first = get(addr, "/v2/objectstack-tgz/manifests/prod");
    assert_eq!(first.status, 200, "{first:?}");
    let manifest = json(&first);
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let digest = layer["digest"].as_str().unwrap().to_owned();
    let blob = get(addr, &format!("/v2/objectstack-tgz/blobs/{digest}"));
    assert_eq!(blob.status, 200, "{blob:?}");
    assert_eq!(Some(blob.body.len() as u64), layer["size"].as_u64());
    let archive = w.dir.path().join("prod.tar.gz");
    std::fs::write(&archive, &blob.body).unwrap();
    let out = w.dir.path().join("unpacked");
    std::fs::create_dir(&out).unwrap();
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(tar.status.success(), "{tar:?}");
    assert_eq!(
        std::fs::read(out.join("objectstack.json")).unwrap(),
        std::fs::read(w.dir.path().join("a3.json")).unwrap()
    );

    // Another process on the same folder serves the same bytes under the
    // same digests.
    w.server = w.server.restart();
    let addr = w.server.tiles_addr();
    let again = get(addr, "/v2/objectstack-tgz/manifests/prod");
    assert_eq!(again.body, first.body);
    let by_digest = get(
        addr,
        &format!(
            "/v2/objectstack-tgz/manifests/{}",
            first.headers["docker-content-digest"]
        ),
    );
    assert_eq!(by_digest.status, 200, "{by_digest:?}");
    assert_eq!(by_digest.body, first.body);
    // The raw form's manifest of the same pin is another document.
    let raw = get(addr, "/v2/objectstack/manifests/prod");
    assert_ne!(
        raw.headers["docker-content-digest"],
        first.headers["docker-content-digest"]
    );
}

#[test]
fn a_stored_archive_or_manifest_changed_in_storage_is_never_served() {
    let mut w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();
    let tgz = get(addr, "/v2/objectstack-tgz/manifests/rel-1");
    let layer = json(&tgz)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let raw = get(addr, "/v2/objectstack/manifests/rel-2");
    let raw_digest = raw.headers["docker-content-digest"].clone();
    // Someone with write access to the bucket swaps the archive for one of
    // another file, and rewrites a stored manifest.
    let data = w.dir.path().join("data");
    let hex = layer.strip_prefix("sha256:").unwrap();
    let other = get(addr, "/v2/objectstack-tgz/manifests/rel-3");
    let other_layer = json(&other)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_hex = other_layer.strip_prefix("sha256:").unwrap();
    std::fs::copy(
        data.join("oci/blobs").join(other_hex),
        data.join("oci/blobs").join(hex),
    )
    .unwrap();
    let stored = data
        .join("oci/manifests")
        .join(raw_digest.strip_prefix("sha256:").unwrap());
    let edited = String::from_utf8(std::fs::read(&stored).unwrap())
        .unwrap()
        .replace("rel-2", "rel-9");
    std::fs::write(&stored, edited).unwrap();
    w.server = w.server.restart();
    let addr = w.server.tiles_addr();

    let refused = get(addr, "/v2/objectstack-tgz/manifests/rel-1");
    assert_eq!(refused.status, 500, "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.body).contains("does not hold its artifact"));
    let blob = get(addr, &format!("/v2/objectstack-tgz/blobs/{layer}"));
    assert_eq!(blob.status, 404, "a blob not hashing to its name: {blob:?}");
    let manifest = get(addr, &format!("/v2/objectstack/manifests/{raw_digest}"));
    assert_eq!(manifest.status, 404, "{manifest:?}");
    // Asked by tag, the manifest is derived again, and matches its digest.
    let again = get(addr, "/v2/objectstack/manifests/rel-2");
    assert_eq!(again.headers["docker-content-digest"], raw_digest);
}

/// The ORAS Python SDK (PyPI `oras`, installed by tests/run), pulling
/// `reference` into `out`: the files it wrote, one a line.

#[test]
fn oras_pulls_the_file_live_at_an_instant_for_a_restore() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let addr = w.server.tiles_addr();
    let out = w.dir.path().join("restore");
    let wrote = oras_pull(
        &format!("{addr}/objectstack:prod.at.20260301T113000Z"),
        &out,
    );
    assert!(wrote.contains("objectstack.json"), "{wrote}");
    assert_eq!(
        std::fs::read(out.join("objectstack.json")).unwrap(),
        std::fs::read(w.dir.path().join("a2.json")).unwrap()
    );
}

#[test]
fn skopeo_copies_into_cncf_distribution_and_back_keeping_every_digest() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    w.three_releases();
    let (ours, theirs) = (w.server.tiles_addr(), Distribution::start());
    for repo in ["objectstack", "objectstack-tgz"] {
        let source = get(ours, &format!("/v2/{repo}/manifests/prod"));
        assert_eq!(source.status, 200);
        let digest = &source.headers["docker-content-digest"];
        let copied = skopeo_run(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{ours}/{repo}:prod"),
            &format!("docker://{}/{repo}:prod", theirs.addr),
        ]);
        assert!(copied.status.success(), "{repo}: {copied:?}");
        // Distribution holds the same manifest bytes under the same digest,
        // and every blob under its digest.
        let there = request(
            theirs.addr,
            "GET",
            &format!("/v2/{repo}/manifests/prod"),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        );
        assert_eq!(there.status, 200, "{there:?}");
        assert_eq!(&there.headers["docker-content-digest"], digest, "{repo}");
        assert_eq!(there.body, source.body, "{repo}");
        let manifest = json(&source);
        for blob in [&manifest["config"], &manifest["layers"][0]] {
            let d = blob["digest"].as_str().unwrap();
            let a = get(theirs.addr, &format!("/v2/{repo}/blobs/{d}"));
            let b = get(ours, &format!("/v2/{repo}/blobs/{d}"));
            assert_eq!(a.status, 200, "{repo} {d}");
            assert_eq!(a.body, b.body, "{repo} {d}");
        }
        // And back out of Distribution: the same digest again.
        let layout = w.dir.path().join(format!("{repo}-layout"));
        let back = skopeo_run(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{}/{repo}:prod", theirs.addr),
            &format!("oci:{}:prod", layout.display()),
        ]);
        assert!(back.status.success(), "{repo}: {back:?}");
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], digest.as_str(), "{repo}");
    }
}

#[test]
fn the_source_a_publisher_signed_is_the_image_source_and_a_bad_one_is_refused() {
    let w = World::new(&["--http-listen", "127.0.0.1:0"]);
    let addr = w.server.tiles_addr();
    let publish = |file: &str, release: &str, source: Option<&str>| {
        w.write(file, format!("{{\"release\":\"{release}\"}}").as_bytes());
        let mut args = vec!["publish", file, "--release-id", release, "--key", "ci.pem"];
        if let Some(url) = source {
            args.extend(["--source", url]);
        }
        w.cli(&args)
    };
    let url = "https://git.example.com/objectos/app";
    publish("a.json", "rel-1", Some(url)).ok();
    let with = json(&get(addr, "/v2/objectstack/manifests/rel-1"));
    assert_eq!(with["annotations"]["org.opencontainers.image.source"], url);
    publish("b.json", "rel-2", None).ok();
    let without = json(&get(addr, "/v2/objectstack/manifests/rel-2"));
    assert!(
        without["annotations"]
            .get("org.opencontainers.image.source")
            .is_none(),
        "{without}"
    );
    for bad in ["javascript:alert(1)", "https://", "https://x/a b"] {
        publish("c.json", "rel-3", Some(bad)).fails(2, "--source");
    }
    assert_eq!(
        get(addr, "/v2/objectstack/manifests/rel-3").status,
        404,
        "a refused publish wrote nothing"
    );
}
