//! TLS and mutual TLS end to end, with certificates made by OpenSSL in the
//! test; tokens read from a file; plaintext refused beyond loopback.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::process::Command;

use stackpin_tests::certs::certificates;
use stackpin_tests::{Server, stackpin};
use tempfile::TempDir;

#[test]
fn tls_mutual_tls_and_tokens_end_to_end() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    certificates(dir, "ops-laptop");
    let (reader_token, reader_entry) = stackpin_tests::create_token(dir, "reader", &["read"]);
    let config = format!(
        "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\nclient_ca = \"ca.crt\"\n\n{reader_entry}\n\
         [[client_cert]]\nsubject_cn = \"ops-laptop\"\nroles = [\"read\", \"admin\"]\n"
    );
    std::fs::write(dir.join("stackpin.toml"), config).unwrap();
    let check = Command::new(stackpin_tests::bin("stackpin-registry"))
        .current_dir(dir)
        .args(["config", "check", "stackpin.toml"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    // Relative paths in the settings resolve from the server's working
    // directory: start it in `dir`.
    let config_path = dir.join("stackpin.toml").display().to_string();
    let vkey = stackpin_tests::world::log_vkey(&dir.join("data"));
    let server = Server::start_in(
        dir,
        &dir.join("data"),
        &["--config", &config_path, "--http-listen", "127.0.0.1:0"],
    );
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    assert!(server.log().contains("(https)"), "{}", server.log());

    let tls = ["--ca-cert", "ca.crt"];
    let mtls = [
        "--ca-cert",
        "ca.crt",
        "--client-cert",
        "client.crt",
        "--client-key",
        "client.key",
    ];
    let run = |extra: &[&str], args: &[&str]| {
        let mut all: Vec<&str> = extra.to_vec();
        all.extend_from_slice(args);
        stackpin(dir, &url, &all)
    };
    // The client certificate's subject maps to read + admin.
    run(&mtls, &["key", "list"]).ok();
    // Without a client certificate the handshake is refused (mutual TLS).
    let r = run(&tls, &["list"]);
    assert_ne!(r.code, 0, "{r:?}");
    // A token over mutual TLS: the token decides (read only).
    std::fs::write(dir.join("reader.token"), &reader_token).unwrap();
    let mut with_token: Vec<&str> = mtls.to_vec();
    with_token.extend(["--token-file", "reader.token"]);
    run(&with_token, &["list"]).ok();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "pub.pem"]).ok();
    run(&with_token, &["key", "add", "pub.pub.pem"]).fails(7, "permission denied");
    std::fs::write(dir.join("bad.token"), "sp_0000").unwrap();
    let mut bad: Vec<&str> = mtls.to_vec();
    bad.extend(["--token-file", "bad.token"]);
    run(&bad, &["list"]).fails(7, "not authenticated");
    // The tiles listener keeps the same rules: mutual TLS, then tokens.
    let tiles = format!("https://{}", server.tiles_addr());
    let audit = [
        "audit",
        "--tiles",
        &tiles,
        "--trusted-keys",
        "pub.pub.pem",
        "--log-key",
        &vkey,
    ];
    let report = run(&with_token, &[&["--output", "json"], &audit[..]].concat()).json();
    assert_eq!(report["ok"], true, "{report}");
    run(&mtls, &audit).ok();
    run(&bad, &audit).fails(7, "401");
    let r = run(&tls, &audit);
    assert_eq!(r.code, 6, "no client certificate, no handshake: {r:?}");
    run(&[], &audit).fails(2, "--ca-cert");

    // The OCI API on the same listener and rules: skopeo (a registry client
    // stackpin did not write) lists tags over mutual TLS, its client
    // certificate being its credential; with only the CA it gets no
    // handshake.
    let certs = dir.join("skopeo-certs");
    let ca_only = dir.join("skopeo-ca");
    for d in [&certs, &ca_only] {
        std::fs::create_dir(d).unwrap();
        std::fs::copy(dir.join("ca.crt"), d.join("ca.crt")).unwrap();
    }
    std::fs::copy(dir.join("client.crt"), certs.join("client.cert")).unwrap();
    std::fs::copy(dir.join("client.key"), certs.join("client.key")).unwrap();
    let skopeo = |cert_dir: &std::path::Path| {
        Command::new("skopeo")
            .args(["list-tags", "--cert-dir"])
            .arg(cert_dir)
            .args(["--creds", &format!("any:{reader_token}")])
            .arg(format!("docker://{}/objectstack", server.tiles_addr()))
            .output()
            .expect("run skopeo (tests/run installs it)")
    };
    let listed = skopeo(&certs);
    assert!(listed.status.success(), "{listed:?}");
    let tags: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(tags["Tags"].is_array(), "{tags}");
    let refused = skopeo(&ca_only);
    assert!(!refused.status.success(), "{refused:?}");

    // The web view on the same listener and rules: the client certificate
    // lets a browser in, and a token's sign-in cookie is Secure under TLS.
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .current_dir(dir)
            .args(["-s", "-i", "--cacert", "ca.crt"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let cert = ["--cert", "client.crt", "--key", "client.key"];
    let page = curl(&[&cert[..], &[&format!("{tiles}/")]].concat());
    assert!(
        page.contains(" 200") && page.contains("<h1>environments</h1>"),
        "{page}"
    );
    let form = format!("token={reader_token}");
    let signed = curl(&[&cert[..], &["-d", &form, &format!("{tiles}/login")]].concat());
    let cookie = signed
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{signed}"));
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly"),
        "{cookie}"
    );

    // https without a CA is a usage error; plain http to a TLS port fails.
    run(&[], &["list"]).fails(2, "--ca-cert");
    let plain = stackpin(
        dir,
        &format!("http://127.0.0.1:{}", server.addr.port()),
        &["list"],
    );
    assert_ne!(plain.code, 0);
}

#[test]
fn plaintext_beyond_loopback_is_refused_unless_asked_for() {
    let tmp = TempDir::new().unwrap();
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["--data-dir"])
        .arg(tmp.path().join("d"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen") && err.contains("insecure-listen"),
        "{err}"
    );
    // Even with --insecure-listen, no credentials means anyone could write.
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["--data-dir"])
        .arg(tmp.path().join("d"))
        .args(["--listen", "0.0.0.0:0", "--insecure-listen"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}
