//! The registry's edges under attack, with the real binaries on loopback:
//! idle and non-reading connections on both listeners, a diff of large
//! artifacts, a witness and a webhook receiver that misbehave, and
//! watchers that would take the byte budget from writers. Limits are set
//! small so each attack shows in seconds.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use stackpin_tests::tlog;
use stackpin_tests::world::World;

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the server has closed `tcp` (EOF or reset) within `within`,
/// reading and discarding whatever it sent; and how many bytes came.
fn closed_within(tcp: &mut TcpStream, within: Duration) -> (bool, usize) {
    let deadline = Instant::now() + within;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        match tcp.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, got);
            }
            Err(_) => return (true, got), // reset
        }
    }
}

/// The start of an answer's body, for messages.
fn head(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// The peak resident memory of a process, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
fn connections_that_send_nothing_are_closed_at_the_header_deadline_on_both_listeners() {
    let world = World::new(&[
        "--http-listen",
        "127.0.0.1:0",
        "--max-connections",
        "8",
        "--header-timeout",
        "1s",
    ]);
    let tiles = world.server.tiles_addr();
    // More idle sockets than either listener serves at once.
    let mut idle: Vec<TcpStream> = (0..12)
        .flat_map(|_| {
            [
                TcpStream::connect(tiles),
                TcpStream::connect(world.server.addr),
            ]
        })
        .map(Result::unwrap)
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Served anyway, as soon as the idle ones are closed.
    let started = Instant::now();
    let answer = tlog::get(tiles, "/checkpoint");
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    world.cli(&["status"]).ok();
    // Every idle socket was closed by the registry, within the deadline
    // and the time the queued ones waited for a slot.
    for tcp in &mut idle {
        let (closed, _) = closed_within(tcp, Duration::from_secs(5));
        assert!(closed, "an idle connection is still open");
    }
    // A connection that starts a request and stalls mid-head is closed too.
    let mut slow = TcpStream::connect(tiles).unwrap();
    slow.write_all(b"GET /checkpoint HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(4)).0);
}

#[test]
fn an_answer_its_client_never_reads_is_cut_and_counted_in_the_budget_until_then() {
    // A budget of 40 MiB: the web view's share (a quarter, 10 MiB) holds
    // one answer of 8 MiB, not two, and a publish of 8 MiB (which checks
    // the bytes stored: about twice their size) still fits beside it.
    let world = World::new(&[
        "--http-listen",
        "127.0.0.1:0",
        "--max-inflight-bytes",
        "41943040",
        "--stream-idle-timeout",
        "4s",
    ]);
    let tiles = world.server.tiles_addr();
    // 8 MiB: more than loopback's socket buffers take from a client that
    // reads nothing, so the registry holds the rest.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 << 20));
    world.write("big.json", big.as_bytes());
    world
        .cli(&[
            "publish",
            "big.json",
            "--release-id",
            "big",
            "--key",
            "ci.pem",
        ])
        .ok();
    // A client asks for it and never reads.
    let mut stalled = TcpStream::connect(tiles).unwrap();
    write!(
        stalled,
        "GET /artifact/big/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Its answer is counted: another does not fit the web view's share
    // meanwhile (it waits 2 s for room, well within the idle timeout)...
    let second = tlog::get(tiles, "/artifact/big/json");
    assert_eq!(second.status, 503, "{}", head(&second.body));
    // ... while a publish and a download of the same size still work.
    world.write("other.json", big.replace('x', "y").as_bytes());
    world
        .cli(&[
            "publish",
            "other.json",
            "--release-id",
            "other",
            "--key",
            "ci.pem",
        ])
        .ok();
    world
        .cli(&["fetch", "--release-id", "other", "--out", "other.out"])
        .ok();
    // After stream_idle_timeout of not reading, it is cut: its bytes
    // never all arrive, and the share is free again.
    std::thread::sleep(Duration::from_secs(3));
    let (closed, got) = closed_within(&mut stalled, Duration::from_secs(5));
    assert!(closed, "a non-reading client's connection is still open");
    assert!(got < big.len(), "the whole answer arrived: it was not cut");
    let again = tlog::get(tiles, "/artifact/big/json");
    assert_eq!(again.status, 200);
    assert_eq!(again.body.len(), big.len());
}

#[test]
fn a_diff_of_artifacts_too_large_to_parse_within_the_budget_is_refused_with_413() {
    let world = World::new(&["--http-listen", "127.0.0.1:0"]);
    let tiles = world.server.tiles_addr();
    // 6 MiB each, of small values: many times that once parsed.
    let doc = |v: u8| format!("[{}{v}]", "0,".repeat(3 << 20));
    for (name, v) in [("a", 1), ("b", 2)] {
        world.write(&format!("{name}.json"), doc(v).as_bytes());
        world
            .cli(&[
                "publish",
                &format!("{name}.json"),
                "--release-id",
                name,
                "--key",
                "ci.pem",
            ])
            .ok();
    }
    let answer = tlog::get(tiles, "/diff?from=a&to=b");
    assert_eq!(
        answer.status,
        413,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        String::from_utf8_lossy(&answer.body).contains("stackpin fetch"),
        "the refusal says what to do instead"
    );
    assert!(peak_rss_mib(world.server.pid()) < 200);
    // Small artifacts are still compared.
    world.write("c.json", b"{\"v\":1}");
    world.write("d.json", b"{\"v\":2}");
    for name in ["c", "d"] {
        world
            .cli(&[
                "publish",
                &format!("{name}.json"),
                "--release-id",
                name,
                "--key",
                "ci.pem",
            ])
            .ok();
    }
    let answer = tlog::get(tiles, "/diff?from=c&to=d");
    assert_eq!(answer.status, 200);
    assert!(String::from_utf8_lossy(&answer.body).contains("1 change(s)"));
}

/// A plain HTTP server on loopback: `answer` writes the reply to each
/// request (whose head and body it has read); counts requests.
struct Peer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn start(answer: impl Fn(&mut TcpStream) + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (requests.clone(), paths.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { continue };
                let Some(path) = read_request(&mut tcp) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                seen.lock().unwrap().push(path);
                answer(&mut tcp);
            }
        });
        Self {
            addr,
            requests,
            paths,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request's head and body; its path.
fn read_request(tcp: &mut TcpStream) -> Option<String> {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    tcp.read_exact(&mut body).ok()?;
    head.split(' ').nth(1).map(str::to_owned)
}

#[test]
fn a_webhook_redirect_is_a_failed_delivery_and_is_not_followed() {
    let elsewhere = Peer::start(|tcp| {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let target = format!("http://{}/stolen", elsewhere.addr);
    let receiver = Peer::start(move |tcp| {
        let _ = write!(
            tcp,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
    });
    let dir = tempfile::TempDir::new().unwrap();
    let cfg = dir.path().join("hooks.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[webhook]]\nname = \"hook\"\nurl = \"http://{}/hook\"\n",
            receiver.addr
        ),
    )
    .unwrap();
    let world = World::new(&[
        "--config",
        cfg.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let cursor = world.data().join("webhooks/cursor/hook");
    wait_until("the cursor", Duration::from_secs(30), || cursor.exists());
    world.write("r.json", b"{\"r\":1}");
    world
        .cli(&["publish", "r.json", "--release-id", "r", "--key", "ci.pem"])
        .ok();
    // Retried: each 307 counted as a failure.
    wait_until("a retry", Duration::from_secs(20), || {
        receiver.requests() >= 2
    });
    assert_eq!(elsewhere.requests(), 0, "the signed event went elsewhere");
    let page = tlog::get(world.server.tiles_addr(), "/log");
    let page = String::from_utf8(page.body).unwrap();
    assert!(page.contains("HTTP 307"), "{page}");
    assert!(receiver.paths.lock().unwrap().iter().all(|p| p == "/hook"));
}

#[test]
fn a_witness_answering_an_endless_body_cannot_grow_the_registry() {
    let wdir = tempfile::TempDir::new().unwrap();
    let out = std::process::Command::new(stackpin_tests::bin("stackpin-witness"))
        .args(["key", "--name", "witness.example/w", "--data-dir"])
        .arg(wdir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let vkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // 200, no length, then 512 MiB of bytes until the registry hangs up.
    let done = Arc::new(AtomicUsize::new(0));
    let finished = done.clone();
    let witness = Peer::start(move |tcp| {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..512 {
            if tcp.write_all(&chunk).is_err() {
                break;
            }
        }
        finished.fetch_add(1, Ordering::SeqCst);
    });
    let dir = tempfile::TempDir::new().unwrap();
    let cfg = dir.path().join("witness.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[witness]]\nvkey = \"{vkey}\"\nurl = \"http://{}\"\n",
            witness.addr
        ),
    )
    .unwrap();
    let world = World::new(&["--config", cfg.to_str().unwrap()]);
    world.write("r.json", b"{\"r\":1}");
    world
        .cli(&["publish", "r.json", "--release-id", "r", "--key", "ci.pem"])
        .ok();
    // The answer ends: the registry hung up, or took it all.
    wait_until("an answer sent", Duration::from_secs(60), || {
        done.load(Ordering::SeqCst) >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(witness.requests() >= 1);
    let peak = peak_rss_mib(world.server.pid());
    assert!(peak < 150, "the registry grew to {peak} MiB");
    wait_until("the refusal", Duration::from_secs(10), || {
        world.server.log().contains("longer than")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_take_nothing_from_the_budget_writers_need_and_are_bounded() {
    use stackpin_proto::v1 as pb;
    let world = World::new(&[
        "--max-inflight-bytes",
        "12582912",
        "--max-watch-streams",
        "6",
        "--max-watch-streams-per-principal",
        "5",
    ]);
    let mut client = pb::registry_client::RegistryClient::connect(world.server.url())
        .await
        .unwrap();
    // Five watchers: each took 3 MiB of the 12 MiB budget before.
    let mut watchers = Vec::new();
    for _ in 0..5 {
        let stream = client
            .watch_log(pb::WatchLogRequest::default())
            .await
            .unwrap()
            .into_inner();
        watchers.push(stream);
    }
    // One principal (anonymous) may hold no more.
    let refused = client
        .watch_log(pb::WatchLogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("max_watch_streams_per_principal"),
        "{refused:?}"
    );
    // Publishes and downloads still work meanwhile.
    let dir = world.dir.path().to_owned();
    let url = world.server.url();
    tokio::task::spawn_blocking(move || {
        std::fs::write(dir.join("w.json"), b"{\"w\":1}").unwrap();
        let state = dir.join("state");
        let state = state.to_str().unwrap();
        for args in [
            &[
                "--state-dir",
                state,
                "publish",
                "w.json",
                "--release-id",
                "w",
                "--key",
                "ci.pem",
            ][..],
            &[
                "--state-dir",
                state,
                "fetch",
                "--release-id",
                "w",
                "--out",
                "w.out",
            ][..],
        ] {
            stackpin_tests::stackpin(&dir, &url, args).ok();
        }
        assert_eq!(std::fs::read(dir.join("w.out")).unwrap(), b"{\"w\":1}");
    })
    .await
    .unwrap();
    // A closed watch gives its place back.
    drop(watchers.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = client.watch_log(pb::WatchLogRequest::default()).await;
    assert!(again.is_ok(), "{again:?}");
}

/// A gRPC client that is not the CLI: what it sends, only the registry's
/// rules judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_the_cli_would_refuse_is_refused_by_the_registry_itself() {
    use stackpin_proto::v1 as pb;
    let world = World::new(&[]);
    world.three_releases(); // prod: rel-3 live from T3
    let mut client = pb::registry_client::RegistryClient::connect(world.server.url())
        .await
        .unwrap();
    let ts = |text: &str| {
        let t: jiff::Timestamp = text.parse().unwrap();
        Some(prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: 0,
        })
    };
    let now = jiff::Timestamp::now().to_string();
    let check = |name: &str| pb::DrillCheck {
        name: name.into(),
        passed: true,
        detail: String::new(),
    };
    let drill = |f: &dyn Fn(&mut pb::RecordDrillRequest)| {
        let mut d = pb::RecordDrillRequest {
            env: "prod".into(),
            driver: "sqlite".into(),
            target: ts(stackpin_tests::world::T3),
            checks: vec![check("PRAGMA integrity_check")],
            rto_millis: Some(60_000),
            passed: true,
            started_at: ts(&now),
            ..pb::RecordDrillRequest::default()
        };
        f(&mut d);
        d
    };
    let refused: [(&str, pb::RecordDrillRequest); 4] = [
        ("ran no checks", drill(&|d| d.checks.clear())),
        ("rto_millis", drill(&|d| d.rto_millis = Some(u64::MAX))),
        (
            "more than 30 days before",
            drill(&|d| d.started_at = ts("0001-01-02T00:00:00Z")),
        ),
        (
            "U+202E",
            drill(&|d| d.checks = vec![check("rows \u{202E}kcehc")]),
        ),
    ];
    for (says, request) in refused {
        let e = client.record_drill(request).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{says}: {e:?}");
        assert!(e.message().contains(says), "{says}: {e:?}");
    }
    let e = client
        .record_snapshot(pb::RecordSnapshotRequest {
            env: "prod".into(),
            driver: "sqlite".into(),
            location: "s3://backups/\u{202E}lqs.bd".into(),
            db_time: ts(stackpin_tests::world::T3),
            ..pb::RecordSnapshotRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Nothing was logged; a sound drill still is.
    client.record_drill(drill(&|_| {})).await.unwrap();

    // An in-toto statement naming the subject's sha256 twice, a bogus
    // digest first: a first-wins verifier would read that one.
    let body = br#"{"release":"dup"}"#;
    let real = hex(&sha2::Sha256::digest(body));
    let statement = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"dup","digest":{{"sha256":"{}","sha256":"{real}"}}}}],"predicateType":"https://stackpin.local/publish/v1"}}"#,
        "0".repeat(64)
    );
    let pem = std::fs::read_to_string(world.dir.path().join("ci.pem")).unwrap();
    let key = stackpin_core::signing::signing_key_from_pem(&pem).unwrap();
    let envelope = stackpin_core::signing::sign_envelope(statement.as_bytes(), &key);
    let messages = vec![
        pb::PublishRequest {
            part: Some(pb::publish_request::Part::Header(pb::PublishHeader {
                release_id: "dup".into(),
                media_type: "application/json".into(),
                envelope: envelope.into(),
                size: body.len() as u64,
                request_id: String::new(),
            })),
        },
        pb::PublishRequest {
            part: Some(pb::publish_request::Part::Chunk(body.to_vec().into())),
        },
    ];
    let e = client
        .publish(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("duplicate member name"), "{e:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// gRPC downloads whose clients never read: HTTP/2 flow control keeps the
/// socket quiet, so only the end of the connection (asked to close at
/// request_timeout, cut after as long again) gives their budget back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_their_clients_never_read_give_their_budget_back_in_bounded_time() {
    use stackpin_proto::v1 as pb;
    use tonic::transport::Channel;
    // A publish of 6 MiB fits (checking it takes about 18 MiB); six
    // downloads (3 MiB each) fill it.
    let world = World::new(&[
        "--max-inflight-bytes",
        "20971520",
        "--request-timeout",
        "3s",
        "--stream-idle-timeout",
        "1s",
    ]);
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(6 << 20));
    world.write("big.json", big.as_bytes());
    let dir = world.dir.path().to_owned();
    let url = world.server.url();
    tokio::task::spawn_blocking(move || {
        let state = dir.join("state");
        stackpin_tests::stackpin(
            &dir,
            &url,
            &[
                "--state-dir",
                state.to_str().unwrap(),
                "publish",
                "big.json",
                "--release-id",
                "big",
                "--key",
                "ci.pem",
            ],
        )
        .ok();
    })
    .await
    .unwrap();
    let connect = || async {
        let channel = Channel::from_shared(world.server.url())
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        pb::registry_client::RegistryClient::new(channel)
    };
    let request = || pb::GetArtifactRequest {
        artifact: Some(pb::ArtifactRef {
            r#ref: Some(pb::artifact_ref::Ref::ReleaseId("big".into())),
        }),
    };
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut client = connect().await;
        let stream = client.get_artifact(request()).await.unwrap().into_inner();
        held.push((client, stream)); // never read
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = connect().await.get_artifact(request()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Within twice request_timeout the stalled connections are closed,
    // though their clients still hold them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut stream = connect()
        .await
        .get_artifact(request())
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(pb::get_artifact_response::Part::Chunk(c)) = m.part {
            got += c.len();
        }
    }
    assert_eq!(got, big.len());
    drop(held);
}
