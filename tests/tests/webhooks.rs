//! Webhooks against a receiver on loopback that fails the first attempts
//! and stalls once: every event arrives (at least once, none skipped),
//! signed so that the log's vkey verifies it, as CloudEvents 1.0, across
//! a registry killed in the middle of a delivery.
//!
//! The receiver checks signatures from the Standard Webhooks scheme alone
//! (`v1a,` Ed25519 over `id.timestamp.body`), with no stackpin code.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Verifier as _;
use stackpin_tests::world::World;

#[derive(Clone, Debug)]
struct Delivery {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
}

/// What the receiver does with its nth request (counting from 1).
#[derive(Clone, Copy)]
enum Answer {
    Fail,
    Stall,
    Accept,
}

struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(Delivery, u16)>>>,
}

impl Receiver {
    fn start(policy: fn(usize) -> Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                n += 1;
                let Some(d) = read_request(&mut stream) else {
                    continue;
                };
                let status = match policy(n) {
                    Answer::Fail => 500,
                    Answer::Accept => 200,
                    Answer::Stall => {
                        // Hold the request unanswered: the registry is
                        // killed meanwhile.
                        sink.lock().unwrap().push((d, 0));
                        std::thread::sleep(Duration::from_secs(8));
                        continue;
                    }
                };
                sink.lock().unwrap().push((d, status));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Self { port, got }
    }

    /// The deliveries answered 2xx, by path.
    fn accepted(&self, path: &str) -> Vec<Delivery> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, s)| d.path == path && (200..300).contains(s))
            .map(|(d, _)| d.clone())
            .collect()
    }

    fn all(&self) -> Vec<(Delivery, u16)> {
        self.got.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Delivery> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let h = |k: &str| headers.get(k).cloned().unwrap_or_default();
    Some(Delivery {
        path,
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        body,
    })
}

/// Checks a delivery's signature with the log's vkey
/// (`<name>+<hex id>+<base64(0x01 || key)>`), as a receiver would.
fn verify(vkey: &str, d: &Delivery) -> Result<(), String> {
    let key = B64
        .decode(vkey.splitn(3, '+').nth(2).unwrap())
        .map_err(|e| e.to_string())?;
    let key: [u8; 32] = key[1..].try_into().map_err(|_| "key length")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|e| e.to_string())?;
    let sig = d.signature.strip_prefix("v1a,").ok_or("not v1a")?;
    let sig = ed25519_dalek::Signature::from_slice(&B64.decode(sig).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut content = format!("{}.{}.", d.id, d.timestamp).into_bytes();
    content.extend_from_slice(&d.body);
    key.verify(&content, &sig).map_err(|e| e.to_string())
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn webhooks_arrive_signed_at_least_once_and_none_is_skipped_across_a_crash() {
    // Three failures, then success; the sixth request is held unanswered.
    let receiver = Receiver::start(|n| match n {
        1..=3 => Answer::Fail,
        6 => Answer::Stall,
        _ => Answer::Accept,
    });
    let dir = tempfile::TempDir::new().unwrap();
    let cfg = dir.path().join("webhooks.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[webhook]]\nname = \"all\"\nurl = \"http://127.0.0.1:{p}/all\"\n\n\
             [[webhook]]\nname = \"prod-pins\"\nurl = \"http://127.0.0.1:{p}/prod\"\n\
             types = [\"pin\"]\nenvs = [\"prod\"]\n",
            p = receiver.port
        ),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", stackpin_tests::s3::free_port());
    let world = World::new(&[
        "--config",
        cfg.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &metrics,
    ]);
    // A new endpoint starts at the log's size when first seen: wait for
    // both cursors before writing.
    let cursors = world.data().join("webhooks/cursor");
    wait_until("the cursors", Duration::from_secs(30), || {
        cursors.join("all").exists() && cursors.join("prod-pins").exists()
    });
    world.three_releases(); // log indexes 0-2 publishes, 3-5 prod pins
    world
        .cli(&[
            "pin",
            "--env",
            "staging",
            "--new-env",
            "--release-id",
            "rel-1",
        ])
        .ok(); // 6

    // The stalled request: kill the registry while it waits for an answer.
    wait_until("the stalled delivery", Duration::from_secs(60), || {
        receiver.all().iter().any(|(_, s)| *s == 0)
    });
    let World {
        dir: wdir,
        server,
        vkey,
    } = world;
    let world = World {
        dir: wdir,
        server: server.crash_and_restart(),
        vkey,
    };
    world
        .cli(&[
            "pin",
            "--env",
            "prod",
            "--new-env",
            "--release-id",
            "rel-2",
            "--db-lsn",
            "0/AB",
        ])
        .ok(); // 7
    world.cli(&["keygen", "--out", "extra.pem"]).ok();
    world.cli(&["key", "add", "extra.pub.pem"]).ok(); // 8

    wait_until("every event", Duration::from_secs(90), || {
        receiver
            .accepted("/all")
            .iter()
            .map(|d| d.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 9
            && receiver.accepted("/prod").len() >= 4
    });
    let origin = world.vkey.split('+').next().unwrap().to_owned();
    let all = receiver.accepted("/all");
    let mut first_seen: Vec<u64> = Vec::new();
    for d in &all {
        verify(&world.vkey, d).unwrap_or_else(|e| panic!("{}: {e}", d.id));
        assert_eq!(d.content_type, "application/cloudevents+json");
        let event: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        let index = event["data"]["log_index"].as_u64().unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], origin.as_str());
        assert_eq!(event["id"], format!("{origin}/{index}"));
        assert_eq!(event["id"], d.id.as_str());
        if !first_seen.contains(&index) {
            first_seen.push(index);
        }
    }
    // In log order, none skipped; repeats (the unanswered one) allowed.
    assert_eq!(first_seen, (0..9).collect::<Vec<_>>());
    assert!(all.len() >= 9, "{} deliveries for 9 events", all.len());
    let event = |index: u64| -> serde_json::Value {
        let d = all
            .iter()
            .find(|d| d.id == format!("{origin}/{index}"))
            .unwrap();
        serde_json::from_slice(&d.body).unwrap()
    };
    assert_eq!(event(0)["type"], "dev.stackpin.artifact.published");
    assert_eq!(event(0)["data"]["release_id"], "rel-1");
    let pin = event(7);
    assert_eq!(pin["type"], "dev.stackpin.pin.created");
    assert_eq!(pin["subject"], "prod");
    assert_eq!(pin["data"]["env"], "prod");
    assert_eq!(pin["data"]["release_id"], "rel-2");
    assert_eq!(pin["data"]["db_position"], "LSN 0/AB");
    assert!(
        pin["data"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // The filtered endpoint got prod's pins only.
    let mut prod: Vec<u64> = receiver
        .accepted("/prod")
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(&d.body).unwrap()["data"]["log_index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    prod.dedup();
    assert_eq!(prod, [3, 4, 5, 7]);
    // A forged body does not verify.
    let mut forged = all[0].clone();
    forged.body = br#"{"specversion":"1.0","id":"forged"}"#.to_vec();
    assert!(verify(&world.vkey, &forged).is_err());

    // The delivery log, in the web view.
    let page = stackpin_tests::tlog::get(world.server.tiles_addr(), "/log");
    let page = String::from_utf8(page.body).unwrap();
    assert!(
        page.contains("This replica holds the webhook lease") && page.contains("prod-pins"),
        "{page}"
    );
    assert!(page.contains("HTTP 200"), "{page}");
    // And in metrics.
    let scraped = stackpin_tests::tlog::get(metrics.parse().unwrap(), "/metrics");
    let scraped = String::from_utf8(scraped.body).unwrap();
    assert!(scraped.contains("stackpin_webhook_sender 1"), "{scraped}");
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("stackpin_webhook_attempts_total{")
                && l.contains("outcome=\"delivered\"")
                && l.contains("webhook=\"all\"")),
        "{scraped}"
    );
}

/// Two replicas on one bucket (a real SeaweedFS) with the same webhook:
/// each event is sent once, by the lease holder; when the holder is killed
/// the other takes the next epoch and sends what follows.
#[test]
fn replicas_on_one_bucket_send_each_event_once_and_one_takes_over() {
    use object_store::ObjectStoreExt as _;
    use stackpin_tests::s3::Seaweed;
    use stackpin_tests::{Server, stackpin};

    let receiver = Receiver::start(|_| Answer::Accept);
    let weed = Seaweed::start();
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("trusted")).unwrap();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "log.pem"]).ok();
    stackpin(dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem")).unwrap();
    let cfg = dir.join("webhooks.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[webhook]]\nname = \"all\"\nurl = \"http://127.0.0.1:{}/all\"\n",
            receiver.port
        ),
    )
    .unwrap();
    let prefix = "hooks";
    let storage = format!("s3://{}/{prefix}", stackpin_tests::s3::BUCKET);
    let replica = |name: &str| {
        Server::start_with_env(
            &dir.join(name),
            &[
                "--storage",
                &storage,
                "--s3-endpoint",
                &weed.endpoint(),
                "--log-signing-key",
                dir.join("log.pem").to_str().unwrap(),
                "--trusted-keys",
                dir.join("trusted").to_str().unwrap(),
                "--poll-interval",
                "100ms",
                "--config",
                cfg.to_str().unwrap(),
            ],
            &weed.env(),
        )
    };
    let a = replica("a");
    let b = replica("b");
    let store = stackpin_registry::storage::open(
        &stackpin_registry::storage::StorageUrl::S3 {
            bucket: stackpin_tests::s3::BUCKET.to_owned(),
            prefix: prefix.to_owned(),
        },
        &weed.options(),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let read = |key: &str| {
        let key = object_store::path::Path::from(key);
        runtime.block_on(async { store.get(&key).await?.bytes().await })
    };
    wait_until("the cursor", Duration::from_secs(30), || {
        read("webhooks/cursor/all").is_ok()
    });

    // Writes through both replicas.
    for (i, server) in [&a, &b].iter().enumerate() {
        let file = format!("r{i}.json");
        std::fs::write(dir.join(&file), format!("{{\"r\":{i}}}")).unwrap();
        stackpin(
            dir,
            &server.url(),
            &[
                "publish",
                &file,
                "--release-id",
                &format!("r{i}"),
                "--key",
                "ci.pem",
            ],
        )
        .ok();
    }
    for (env, release, server) in [("prod", "r0", &a), ("staging", "r1", &b), ("dev", "r0", &a)] {
        stackpin(
            dir,
            &server.url(),
            &["pin", "--env", env, "--new-env", "--release-id", release],
        )
        .ok();
    }
    let ids = || -> Vec<String> {
        receiver
            .accepted("/all")
            .iter()
            .map(|d| d.id.clone())
            .collect()
    };
    wait_until("five events", Duration::from_secs(30), || ids().len() >= 5);
    std::thread::sleep(Duration::from_secs(
        2 * stackpin_registry::webhooks::HEARTBEAT.as_secs(),
    ));
    let mut seen = ids();
    let sent = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(
        (sent, seen.len()),
        (5, 5),
        "each event once, by one replica: {seen:?}"
    );

    // The holder is killed: the other takes the next epoch.
    let holder = String::from_utf8(
        read("webhooks/lease/00000000000000000001")
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let id_of =
        |name: &str| std::fs::read_to_string(dir.join(name).join("webhook-holder")).unwrap();
    let (survivor, survivor_name) = if holder.trim() == id_of("a").trim() {
        a.kill();
        (b, "b")
    } else {
        assert_eq!(holder.trim(), id_of("b").trim());
        b.kill();
        (a, "a")
    };
    stackpin(
        dir,
        &survivor.url(),
        &["pin", "--env", "prod", "--new-env", "--release-id", "r1"],
    )
    .ok();
    let ttl = stackpin_registry::webhooks::LEASE_TTL + 4 * stackpin_registry::webhooks::HEARTBEAT;
    wait_until("the event after the takeover", ttl, || ids().len() >= 6);
    let taken = String::from_utf8(
        read("webhooks/lease/00000000000000000002")
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(taken.trim(), id_of(survivor_name).trim());
    let mut all = ids();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(
        survivor
            .log()
            .contains("this replica sends webhooks from now on")
    );
}

#[test]
fn a_webhook_added_by_a_reload_delivers_and_one_removed_stops() {
    let receiver = Receiver::start(|_| Answer::Accept);
    let settings = tempfile::TempDir::new().unwrap();
    let cfg = settings.path().join("registry.toml");
    std::fs::write(&cfg, "reload_check_interval = \"0s\"\n").unwrap();
    let world = World::new(&["--config", cfg.to_str().unwrap()]);
    world.publish_releases(1);
    std::fs::write(
        &cfg,
        format!(
            "reload_check_interval = \"0s\"\n\n[[webhook]]\nname = \"late\"\n\
             url = \"http://127.0.0.1:{}/late\"\n",
            receiver.port
        ),
    )
    .unwrap();
    let hup = |n: usize| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &world.server.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        wait_until("the reload", Duration::from_secs(15), || {
            world.server.log().matches("settings reloaded").count() >= n
        });
    };
    hup(1);
    assert!(
        world.server.log().contains("webhooks started [late]"),
        "{}",
        world.server.log()
    );
    // It starts at the log's size when first seen.
    let cursor = world.data().join("webhooks/cursor/late");
    wait_until("its cursor", Duration::from_secs(30), || cursor.exists());
    world
        .cli(&["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"])
        .ok();
    wait_until("the delivery", Duration::from_secs(30), || {
        !receiver.accepted("/late").is_empty()
    });
    for d in receiver.accepted("/late") {
        verify(&world.vkey, &d).unwrap();
    }

    // Removed: no more deliveries.
    std::fs::write(&cfg, "reload_check_interval = \"0s\"\n").unwrap();
    hup(2);
    assert!(
        world
            .server
            .log()
            .contains("webhooks started [], stopped [late]")
    );
    let delivered = receiver.accepted("/late").len();
    world
        .cli(&[
            "pin",
            "--env",
            "staging",
            "--new-env",
            "--release-id",
            "rel-1",
        ])
        .ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.accepted("/late").len(), delivered);
}
