//! What on-call engineers rely on: gRPC health that follows storage,
//! reflection, Prometheus metrics, settings precedence, and a SIGTERM during
//! an upload that leaves nothing partial.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stackpin_tests::{Server, stackpin};
use tempfile::TempDir;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(url: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn wait_for(url: &str, want: ServingStatus, within: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if health(url).await == want {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health did not become {want:?} within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_storage_and_reflection_lists_the_services() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let _mount = stackpin_tests::Tmpfs::mount(&data, 32);
    let server = Server::start(&data, &[]);
    let url = server.url();
    wait_for(&url, ServingStatus::Serving, Duration::from_secs(5)).await;

    // Make the data dir unwritable by filling it up (a read-only remount is
    // refused while the index has files open for writing).
    let ballast = data.join("ballast");
    let fill = std::fs::File::create(&ballast).unwrap();
    let mut fill = std::io::BufWriter::new(fill);
    let chunk = vec![0u8; 1024 * 1024];
    while fill.write_all(&chunk).is_ok() {}
    drop(fill);
    let took = wait_for(&url, ServingStatus::NotServing, Duration::from_secs(2)).await;
    eprintln!("NOT_SERVING {took:?} after the data dir filled up");
    std::fs::remove_file(&ballast).unwrap();
    wait_for(&url, ServingStatus::Serving, Duration::from_secs(5)).await;

    // Reflection (v1) lists every service, so grpcurl and buf curl work
    // without the proto files.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["stackpin.v1.Registry", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_requests() {
    let tmp = TempDir::new().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&tmp.path().join("data"), &["--metrics-listen", &listen]);
    stackpin(
        tmp.path(),
        &server.url(),
        &["resolve", "--env", "prod", "--at", "2026-01-01T00:00:00Z"],
    )
    .fails(3, "no pins");
    stackpin(tmp.path(), &server.url(), &["list"]).ok();
    let text = scrape(port);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Every sample line is `name{labels} value` with a numeric value.
    let mut samples = 0;
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "non-numeric sample {line:?}");
        assert!(name.starts_with("stackpin_"), "{line:?}");
        samples += 1;
    }
    assert!(samples > 5, "{body}");
    assert!(
        body.contains(r#"stackpin_requests_total{rpc="Resolve",code="NotFound"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"stackpin_requests_total{rpc="ListArtifacts",code="Ok"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("stackpin_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("stackpin_build_info"), "{body}");
}

fn vkey_name(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .current_dir(dir)
        .args(["key", "--create"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('+')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn settings_layer_file_then_environment_then_flags() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("s.toml"),
        "data_dir = \"d\"\nlog_origin = \"file.example/log\"\n",
    )
    .unwrap();
    let file = ["--config", "s.toml"];
    assert_eq!(vkey_name(dir, &file, &[]), "file.example/log");
    let env = [("STACKPIN_LOG_ORIGIN", "env.example/log")];
    assert_eq!(vkey_name(dir, &file, &env), "env.example/log");
    let flags = ["--config", "s.toml", "--log-origin", "flag.example/log"];
    assert_eq!(vkey_name(dir, &flags, &env), "flag.example/log");
    // Errors name the key; `config check` and `config example` work.
    std::fs::write(dir.join("bad.toml"), "clock_skew = \"soon\"\n").unwrap();
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .current_dir(dir)
        .args(["config", "check", "bad.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("clock_skew"),
        "{out:?}"
    );
    // A file that is not TOML at all is invalid input too: exit 2.
    std::fs::write(dir.join("broken.toml"), "listen = [\n").unwrap();
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .current_dir(dir)
        .args(["config", "check", "broken.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let example = Command::new(stackpin_tests::bin("stackpin-registry"))
        .args(["config", "example"])
        .output()
        .unwrap();
    std::fs::write(dir.join("example.toml"), &example.stdout).unwrap();
    let out = Command::new(stackpin_tests::bin("stackpin-registry"))
        .current_dir(dir)
        .args(["config", "check", "example.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn sigterm_during_an_upload_finishes_or_fails_it_cleanly() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("trusted")).unwrap();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem")).unwrap();
    let trusted = dir.join("trusted").display().to_string();
    let data = dir.join("data");
    let server = Server::start(&data, &["--trusted-keys", &trusted]);
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(48 * 1024 * 1024));
    std::fs::write(dir.join("big.json"), &big).unwrap();
    let url = server.url();
    let dir2 = dir.to_path_buf();
    let upload = std::thread::spawn(move || {
        stackpin(
            &dir2,
            &url,
            &[
                "publish",
                "big.json",
                "--release-id",
                "big",
                "--key",
                "ci.pem",
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(150));
    let status = server.stop();
    assert!(status.success(), "graceful stop exited with {status}");
    let run = upload.join().unwrap();
    // Restart: the artifact is there exactly when the client was told so.
    let server = Server::start(&data, &["--trusted-keys", &trusted]);
    let list = stackpin(dir, &server.url(), &["--output", "json", "list"]).json();
    let present = list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["release_id"] == "big");
    assert_eq!(present, run.code == 0, "client saw {run:?}");
    stackpin_tests::assert_blobs_whole(&data);
    eprintln!("upload during SIGTERM: exit {}", run.code);
}
