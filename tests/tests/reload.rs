//! Rotating tokens and certificates without a restart, with the real
//! binaries: SIGHUP and watched files reload tokens, TLS and trusted keys
//! all or nothing; `token revoke` and expiry take effect from the next
//! request on.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stackpin_tests::certs::{certificates, issue};
use stackpin_tests::{Server, bin, create_token, stackpin_with};
use tempfile::TempDir;

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                          extendedKeyUsage=serverAuth\n";

fn hangup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Waits until the server's log holds `needle` at least `count` times.
fn wait_for_log(server: &Server, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {count} × {needle:?} in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The serial of the certificate a new TLS client is shown at `port`.
fn served_serial(dir: &Path, port: u16) -> String {
    let shown = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            "ca.crt",
            "-alpn",
            "h2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let pem = String::from_utf8_lossy(&shown.stdout).into_owned();
    std::fs::write(dir.join("served.pem"), pem).unwrap();
    file_serial(dir, "served.pem")
}

fn file_serial(dir: &Path, file: &str) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["x509", "-in", file, "-noout", "-serial"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A folder with a CA and server certificate, a publisher key `ci.pem`
/// trusted in `trusted/`, and the registry's data folder `data`.
fn setup() -> TempDir {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    certificates(dir, "unused");
    std::fs::create_dir(dir.join("trusted")).unwrap();
    stackpin_tests::stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem")).unwrap();
    tmp
}

#[test]
fn a_token_replaced_and_a_certificate_reissued_under_steady_tls_load_fail_no_request() {
    let tmp = setup();
    let dir = tmp.path();
    let (deployer, deployer_entry) = create_token(dir, "deployer", &["publish", "pin", "read"]);
    let (old, old_entry) = create_token(dir, "reader-2026", &["read"]);
    let (new, new_entry) = create_token(dir, "reader-2027", &["read"]);
    let head = "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\ntrusted_keys = \"trusted\"\n\
                reload_check_interval = \"0s\"\n";
    let config = dir.join("stackpin.toml");
    let write = |entries: &[&str]| {
        std::fs::write(&config, format!("{head}\n{}", entries.join("\n"))).unwrap();
    };
    write(&[&deployer_entry, &old_entry]);
    let vkey = stackpin_tests::world::log_vkey(&dir.join("data"));
    let server = Server::start_in(
        dir,
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let port = server.addr.port();
    let url = format!("https://127.0.0.1:{port}");
    let run = |token: &str, args: &[&str]| {
        let mut all = vec!["--ca-cert", "ca.crt"];
        all.extend_from_slice(args);
        stackpin_with(
            dir,
            &url,
            &all,
            &[("STACKPIN_TOKEN", token), ("STACKPIN_LOG_VKEY", &vkey)],
        )
    };
    let cli = &run;
    std::fs::write(dir.join("a.json"), b"{\"objects\":[]}").unwrap();
    cli(
        &deployer,
        &["publish", "a.json", "--release-id", "r1", "--key", "ci.pem"],
    )
    .ok();
    cli(
        &deployer,
        &[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "r1",
            "--activated-at",
            "2026-03-01T10:00:00Z",
        ],
    )
    .ok();

    // An open watch stream, from before the certificate changes.
    let mut watcher = Command::new(bin("stackpin"))
        .current_dir(dir)
        .env("STACKPIN_SERVER", format!("https://127.0.0.1:{port}"))
        .env("STACKPIN_TOKEN", &deployer)
        .env("STACKPIN_STATE_DIR", dir.join("watch-state"))
        .env("STACKPIN_LOG_VKEY", &vkey)
        .args(["--ca-cert", "ca.crt", "watch", "--env", "prod"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Steady load: resolves over TLS, each a new connection, as the token
    // the readers currently hold.
    let token = Arc::new(Mutex::new(old.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let (token, stop, runs, failures) = (&token, &stop, &runs, &failures);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = token.lock().unwrap().clone();
                    let r = cli(
                        &t,
                        &["resolve", "--env", "prod", "--at", "2026-03-02T00:00:00Z"],
                    );
                    runs.fetch_add(1, Ordering::Relaxed);
                    if r.code != 0 {
                        failures.lock().unwrap().push(format!("{r:?}"));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(800));
        // 1. The new token next to the old one.
        write(&[&deployer_entry, &old_entry, &new_entry]);
        hangup(&server);
        wait_for_log(&server, "settings reloaded", 1);
        // 2. Readers move to it.
        *token.lock().unwrap() = new.clone();
        std::thread::sleep(Duration::from_millis(500));
        // 3. The old one goes.
        write(&[&deployer_entry, &new_entry]);
        hangup(&server);
        wait_for_log(&server, "settings reloaded", 2);
        // 4. The certificate is re-issued: a new key, the same CA.
        let before = file_serial(dir, "server.crt");
        issue(dir, "server", "/CN=127.0.0.1", SERVER_EXT);
        let after = file_serial(dir, "server.crt");
        assert_ne!(before, after);
        hangup(&server);
        wait_for_log(&server, "settings reloaded", 3);
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, Ordering::Relaxed);
        // A new client is shown the new certificate.
        assert_eq!(served_serial(dir, port), after);
    });
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert!(runs.load(Ordering::Relaxed) >= 10, "too little load");

    // The old token is refused from then on; the new one reads.
    cli(&old, &["list"]).fails(7, "not one this registry knows");
    cli(&new, &["list"]).ok();

    // The watch stream opened before the re-issue still delivers.
    std::fs::write(dir.join("b.json"), b"{\"objects\":[1]}").unwrap();
    cli(
        &deployer,
        &["publish", "b.json", "--release-id", "r2", "--key", "ci.pem"],
    )
    .ok();
    cli(
        &deployer,
        &["pin", "--env", "prod", "--new-env", "--release-id", "r2"],
    )
    .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    let mut out = watcher.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("r2") {
                break;
            }
        }
        text
    });
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    if let Ok(text) = reader.join() {
        seen = text;
    }
    assert!(seen.contains("r2"), "the watcher saw: {seen}");
    assert!(
        server.log().contains("TLS certificate serial"),
        "{}",
        server.log()
    );
}

#[test]
fn a_broken_or_fixed_setting_changes_nothing_and_says_why() {
    let tmp = setup();
    let dir = tmp.path();
    let (reader, reader_entry) = create_token(dir, "reader", &["read"]);
    let (other, other_entry) = create_token(dir, "other", &["read"]);
    let config = dir.join("stackpin.toml");
    let good = format!("reload_check_interval = \"0s\"\n\n{reader_entry}\n{other_entry}");
    std::fs::write(&config, &good).unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", stackpin_tests::s3::free_port())
        .parse()
        .unwrap();
    let server = Server::start_in(
        dir,
        &dir.join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    );
    let gauge = || {
        let page = stackpin_tests::oci::get(metrics, "/metrics");
        String::from_utf8_lossy(&page.body)
            .lines()
            .find(|l| l.starts_with("stackpin_config_reload_failed "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let url = server.url();
    let list = |token: &str| stackpin_with(dir, &url, &["list"], &[("STACKPIN_TOKEN", token)]);
    list(&reader).ok();

    // Each broken reload leaves both tokens working; the last one would
    // have dropped `other` along with an impossible key folder.
    let broken = [
        ("this is = = not toml", "stackpin.toml:1"),
        (
            &*format!("max_batch = 7\n{good}"),
            "setting max_batch changed, and is read only at start",
        ),
        (
            &*format!(
                "trusted_keys = \"no-such-folder\"\nreload_check_interval = \"0s\"\n{reader_entry}"
            ),
            "trusted_keys",
        ),
        (&*format!("max_batch = \"many\"\n{good}"), "max_batch"),
        (
            &*format!("storage = \"memory://\"\nallow_memory_storage = true\n{good}"),
            "setting allow_memory_storage, storage changed",
        ),
    ];
    for (i, (text, why)) in broken.iter().enumerate() {
        std::fs::write(&config, text).unwrap();
        hangup(&server);
        wait_for_log(&server, "settings reload refused", i + 1);
        let log = server.log();
        let line = log
            .lines()
            .filter(|l| l.contains("settings reload refused"))
            .nth(i)
            .unwrap();
        assert!(line.contains(why), "{why:?} not in {line}");
        list(&reader).ok();
        list(&other).ok();
    }
    // The web view's log page says so too.
    let page = stackpin_tests::oci::request(
        server.tiles_addr(),
        "GET",
        "/log",
        &[("Cookie", &format!("stackpin_token={reader}"))],
    );
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("was refused"), "{html}");
    assert_eq!(gauge(), "stackpin_config_reload_failed 1");

    // Put right, it applies: `other` is gone.
    std::fs::write(
        &config,
        format!("reload_check_interval = \"0s\"\n{reader_entry}"),
    )
    .unwrap();
    hangup(&server);
    wait_for_log(&server, "settings reloaded", 1);
    list(&other).fails(7, "not one this registry knows");
    list(&reader).ok();
    assert_eq!(gauge(), "stackpin_config_reload_failed 0");
}

#[test]
fn a_revoked_or_expired_token_is_refused_at_once() {
    let tmp = setup();
    let dir = tmp.path();
    let (kept, kept_entry) = create_token(dir, "kept", &["read"]);
    let (gone, gone_entry) = create_token(dir, "gone", &["read"]);
    let out = Command::new(bin("stackpin-registry"))
        .args([
            "token",
            "create",
            "--name",
            "brief",
            "--role",
            "read",
            "--expires-in",
            "3s",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let brief = text.lines().nth(1).unwrap().to_owned();
    let brief_entry = text.split("add to the settings file:\n").nth(1).unwrap();
    let config = dir.join("stackpin.toml");
    std::fs::write(
        &config,
        format!(
            "# tokens\nreload_check_interval = \"0s\"\n\n{kept_entry}\n{gone_entry}\n{brief_entry}"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let server = Server::start_in(dir, &data, &["--config", config.to_str().unwrap()]);
    let url = server.url();
    let list = |token: &str| stackpin_with(dir, &url, &["list"], &[("STACKPIN_TOKEN", token)]);
    list(&gone).ok();
    list(&brief).ok();

    let listed = Command::new(bin("stackpin-registry"))
        .args(["token", "list", "--output", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let tokens: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept", "gone", "brief"]);
    assert!(tokens[2]["expires"].is_string());
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&gone));

    let revoke = Command::new(bin("stackpin-registry"))
        .args(["token", "revoke", "gone", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&revoke.stdout);
    assert!(revoke.status.success(), "{revoke:?}");
    assert!(said.contains(&format!("(pid {})", server.pid())), "{said}");
    wait_for_log(&server, "settings reloaded", 1);
    list(&gone).fails(7, "not one this registry knows");
    list(&kept).ok();
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .starts_with("# tokens\n")
    );

    // The brief token: refused once its instant passes, with no reload.
    std::thread::sleep(Duration::from_millis(3200));
    list(&brief).fails(7, "expired at");
    list(&kept).ok();
}

#[test]
fn watched_files_reload_by_themselves_and_a_trusted_key_cannot_be_dropped() {
    let tmp = setup();
    let dir = tmp.path();
    let (admin, admin_entry) = create_token(dir, "deployer", &["publish", "pin", "read"]);
    let config = dir.join("stackpin.toml");
    std::fs::write(
        &config,
        format!(
            "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\ntrusted_keys = \"trusted\"\n\
             reload_check_interval = \"200ms\"\n\n{admin_entry}"
        ),
    )
    .unwrap();
    let server = Server::start_in(
        dir,
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let port = server.addr.port();
    let url = format!("https://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let mut all = vec!["--ca-cert", "ca.crt"];
        all.extend_from_slice(args);
        stackpin_with(dir, &url, &all, &[("STACKPIN_TOKEN", &admin)])
    };
    // A second publisher's key, not trusted yet.
    stackpin_tests::stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ops.pem"]).ok();
    std::fs::write(dir.join("a.json"), b"{\"objects\":[]}").unwrap();
    cli(&[
        "publish",
        "a.json",
        "--release-id",
        "r1",
        "--key",
        "ops.pem",
    ])
    .fails(2, "trusted publisher key");

    // cert-manager renews the certificate: no signal, the file changes.
    issue(dir, "server", "/CN=127.0.0.1", SERVER_EXT);
    let renewed = file_serial(dir, "server.crt");
    wait_for_log(&server, "a watched file changed", 1);
    assert_eq!(served_serial(dir, port), renewed);

    // A key dropped into the trusted folder is trusted.
    std::fs::copy(dir.join("ops.pub.pem"), dir.join("trusted/ops.pub.pem")).unwrap();
    wait_for_log(&server, "settings reloaded", 2);
    cli(&[
        "publish",
        "a.json",
        "--release-id",
        "r1",
        "--key",
        "ops.pem",
    ])
    .ok();

    // Removing a configured key is refused (revoke it in the log instead):
    // publishes with it still work.
    std::fs::remove_file(dir.join("trusted/ci.pub.pem")).unwrap();
    wait_for_log(&server, "settings reload refused", 1);
    assert!(
        server.log().contains("stackpin key revoke"),
        "{}",
        server.log()
    );
    std::fs::write(dir.join("b.json"), b"{\"objects\":[2]}").unwrap();
    cli(&["publish", "b.json", "--release-id", "r2", "--key", "ci.pem"]).ok();
}
