//! The log as C2SP tlog-tiles: read by a client written from the spec
//! (tests/src/tlog.rs), with no stackpin code, at sizes across tile edges;
//! the full tiles stored beside the log; `stackpin audit --tiles` against
//! the registry and against a static mirror, intact and tampered.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stackpin_proto::v1 as pb;
use stackpin_tests::tlog;
use stackpin_tests::world::World;

/// `count` more pins in `env`, sent at once over gRPC.
fn pins(world: &World, count: usize) {
    let url = world.server.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = pb::registry_client::RegistryClient::connect(url)
            .await
            .unwrap();
        let calls = (0..count).map(|_| {
            let mut client = client.clone();
            async move {
                client
                    .pin(pb::PinRequest {
                        env: "staging".into(),
                        artifact: Some(pb::ArtifactRef {
                            r#ref: Some(pb::artifact_ref::Ref::ReleaseId("rel-1".into())),
                        }),
                        activated_at: None,
                        reason: String::new(),
                        db_position: None,
                        request_id: String::new(),
                        runtime_image: String::new(),
                        known_env_only: false,
                    })
                    .await
                    .unwrap();
            }
        });
        futures::future::join_all(calls).await;
    });
}

fn checkpoint(addr: SocketAddr, vkey: &str) -> tlog::Checkpoint {
    let answer = tlog::get(addr, "/checkpoint");
    assert_eq!(answer.status, 200);
    tlog::open_checkpoint(std::str::from_utf8(&answer.body).unwrap(), vkey).unwrap()
}

fn read_over_http(addr: SocketAddr, cp: &tlog::Checkpoint) -> tlog::Read {
    tlog::read_log(cp, |path| {
        let answer = tlog::get(addr, &format!("/{path}"));
        if answer.status != 200 {
            return Err(format!("{path}: HTTP {}", answer.status));
        }
        assert_eq!(
            answer.headers["cache-control"], "public, max-age=31536000, immutable",
            "{path}"
        );
        Ok(answer.body)
    })
    .unwrap()
}

#[test]
fn a_spec_client_reads_the_log_over_tiles_and_the_audit_runs_from_them() {
    let world = World::new(&["--http-listen", "127.0.0.1:0"]);
    let addr = world.server.tiles_addr();
    world.three_releases();
    let answer = tlog::get(addr, "/checkpoint");
    assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(answer.headers["cache-control"], "public, max-age=1");

    // Across the edges of a tile: every tile of every size checks out.
    let mut size = 6;
    for target in [6u64, 255, 256, 257, 511, 512, 513, 600] {
        pins(&world, (target - size) as usize);
        size = target;
        let cp = checkpoint(addr, &world.vkey);
        assert_eq!(cp.size, size);
        let read = read_over_http(addr, &cp);
        assert_eq!(read.entries.len() as u64, size);
    }
    // The first entry is the first publish, as the log has it.
    let cp = checkpoint(addr, &world.vkey);
    let read = read_over_http(addr, &cp);
    let first: serde_json::Value = serde_json::from_slice(&read.entries[0]).unwrap();
    assert_eq!(first["type"], "publish", "{first}");

    // Not tiles of this tree: 404, not cached.
    for path in [
        "/tile/0/003",
        "/tile/entries/002.p/89",
        "/tile/0/2",
        "/other",
    ] {
        let answer = tlog::get(addr, path);
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.headers["cache-control"], "no-store");
    }

    // The project's own audit, from the tiles URL.
    let url = format!("http://{addr}");
    let audit = |url: &str| {
        world.cli(&[
            "--output",
            "json",
            "audit",
            "--tiles",
            url,
            "--trusted-keys",
            "trusted",
            "--log-key",
            &world.vkey,
        ])
    };
    let report = audit(&url).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries"], 600);
    assert!(report["tiles_checked"].as_u64().unwrap() >= 3, "{report}");

    // The full tiles are stored beside the log, once, and the offline
    // audit of the folder checks them.
    let data = world.data();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(data.join("log/tiles-written"))
        .ok()
        .as_deref()
        != Some("512")
    {
        assert!(Instant::now() < deadline, "tiles were not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (path, bytes) in &read.fetched {
        let stored = std::fs::read(data.join(path));
        if path.contains(".p/") {
            assert!(stored.is_err(), "partial {path} stored");
        } else {
            assert_eq!(&stored.unwrap(), bytes, "{path}");
        }
    }
    let offline = world
        .cli(&[
            "--output",
            "json",
            "audit",
            "--data-dir",
            world.data_signed_up_to(600).to_str().unwrap(),
            "--trusted-keys",
            "trusted",
            "--log-key",
            &world.vkey,
        ])
        .json();
    assert_eq!(offline["ok"], true, "{offline}");
    // Of 512 entries: two bundles and two level-0 tiles are full.
    assert_eq!(offline["tiles_checked"], 4, "{offline}");

    // A static mirror: the files a client fetched, served by a plain file
    // server. The audit reads it as it reads the registry.
    let mirror = world.dir.path().join("mirror");
    std::fs::write(mirror_path(&mirror, "checkpoint"), checkpoint_note(addr)).unwrap();
    for (path, bytes) in &read.fetched {
        std::fs::write(mirror_path(&mirror, path), bytes).unwrap();
    }
    let server = FileServer::start(&mirror);
    let mirror_url = format!("http://{}", server.addr);
    assert_eq!(audit(&mirror_url).json()["ok"], true);

    // One byte of one entry changed in the mirror: the audit says where.
    let bundle = mirror.join(tlog::tile_path("entries", 1, 256));
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&bundle, bytes).unwrap();
    let run = audit(&mirror_url);
    assert_eq!(run.code, 5, "{run:#?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let classes: Vec<&str> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["class"].as_str().unwrap())
        .collect();
    assert!(
        classes.contains(&"tiles") && classes.contains(&"checkpoint"),
        "{report}"
    );

    // A URL serving no log: a clear error, nothing remembered.
    world
        .cli(&[
            "audit",
            "--tiles",
            "http://127.0.0.1:1",
            "--trusted-keys",
            "trusted",
            "--log-key",
            &world.vkey,
        ])
        .fails(6, "127.0.0.1:1/checkpoint");
}

fn checkpoint_note(addr: SocketAddr) -> Vec<u8> {
    tlog::get(addr, "/checkpoint").body
}

fn mirror_path(root: &std::path::Path, path: &str) -> std::path::PathBuf {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    full
}

/// Python's static file server on a loopback port, stopped on drop.
struct FileServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl FileServer {
    fn start(root: &std::path::Path) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the file server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
