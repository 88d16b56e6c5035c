//! The web view in a real browser (Debian's Chromium, driven over
//! WebDriver by chromedriver): a person who has never used the CLI finds
//! what was live in prod at an instant last week, and what changed at the
//! switch after it; the answers are compared with `stackpin resolve`.
//! Screenshots of each page are saved under the tests' target folder
//! (`target/tmp/web-screenshots/`), kept by CI as artifacts.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use stackpin_tests::world::World;

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start ({e}): install Debian's chromium and \
                     chromium-driver (tests/run does, as root)"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            profile: tempfile::TempDir::new().unwrap(),
        }
    }

    /// A headless Chromium session; `script` false turns JavaScript off.
    async fn browser(&self, script: bool) -> Client {
        let profile = self.profile.path().join(if script { "js" } else { "nojs" });
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if !script {
            args.push("--blink-settings=scriptEnabled=false".to_owned());
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 1000, "{name}");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits for an element matching `css`, then its attribute `attr`.
async fn attr_of(c: &Client, css: &str, attr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(Some(v)) = e.attr(attr).await
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no {css}[{attr}]");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Three releases pinned 20, 9 and 2 days ago, each artifact a little
/// different from the one before.
fn history(world: &World) -> [jiff::Timestamp; 3] {
    let now = jiff::Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    let at = [now - day * 20, now - day * 9, now - day * 2];
    let docs = [
        r#"{"objects":[{"name":"account","fields":[{"name":"email","type":"text"}]}],"version":1}"#,
        r#"{"objects":[{"name":"account","fields":[{"name":"email","type":"text"}]},{"name":"invoice"}],"version":2}"#,
        r#"{"objects":[{"name":"account","fields":[{"name":"email","type":"email"}]},{"name":"invoice"}],"version":3}"#,
    ];
    for (i, doc) in docs.iter().enumerate() {
        let name = format!("a{}.json", i + 1);
        world.write(&name, doc.as_bytes());
        let release = format!("rel-{}", i + 1);
        world
            .cli(&[
                "publish",
                &name,
                "--release-id",
                &release,
                "--key",
                "ci.pem",
            ])
            .ok();
        world
            .cli(&[
                "pin",
                "--env",
                "prod",
                "--new-env",
                "--release-id",
                &release,
                "--activated-at",
                &rfc3339(at[i]),
                "--db-lsn",
                &format!("0/{}000", i + 1),
            ])
            .ok();
    }
    world
        .cli(&[
            "pin",
            "--env",
            "staging",
            "--new-env",
            "--release-id",
            "rel-3",
        ])
        .ok();
    at
}

fn resolve(world: &World, at: &str) -> serde_json::Value {
    world
        .cli(&["--output", "json", "resolve", "--env", "prod", "--at", at])
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_what_was_live_and_what_changed_in_a_real_browser() {
    let world = World::new(&["--http-listen", "127.0.0.1:0"]);
    let at = history(&world);
    let web: SocketAddr = world.server.tiles_addr();
    let base = format!("http://{web}");
    let driver = Driver::start();
    let c = driver.browser(true).await;

    // The overview: every environment with what is live now.
    c.goto(&base).await.unwrap();
    let overview = text_of(&c, "main table").await;
    assert!(
        overview.contains("prod") && overview.contains("staging"),
        "{overview}"
    );
    assert!(
        overview.contains("rel-3") && overview.contains("LSN 0/3000"),
        "{overview}"
    );
    screenshot(&c, "1-overview").await;

    // Pick prod; the timeline draws its three intervals.
    c.find(Locator::LinkText("prod"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    attr_of(&c, "#timeline", "data-drawn").await;
    attr_of(&c, "#timeline rect[data-release='rel-1']", "width").await;
    screenshot(&c, "2-timeline").await;

    // A click in the middle of rel-2's band asks for that instant; the
    // page's answer is the CLI's.
    c.find(Locator::Css("#timeline rect[data-release='rel-2']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let picked = attr_of(&c, "#answer .answer", "data-at").await;
    let shown = attr_of(&c, "#answer .answer", "data-release").await;
    assert_eq!(shown, "rel-2");
    let cli = resolve(&world, &picked);
    assert_eq!(cli["pin"]["release_id"], shown.as_str(), "at {picked}");
    screenshot(&c, "3-picked").await;

    // Zoom and scroll from the keyboard: the window changes.
    let before = attr_of(&c, "#timeline", "data-end").await;
    let drawn = attr_of(&c, "#timeline", "data-drawn").await;
    c.find(Locator::Css("#timeline"))
        .await
        .unwrap()
        .send_keys("+")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while attr_of(&c, "#timeline", "data-drawn").await == drawn {
        assert!(Instant::now() < deadline, "zooming did not redraw");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = attr_of(&c, "#timeline", "data-end").await;
    assert!(
        after.parse::<i64>().unwrap() < before.parse::<i64>().unwrap(),
        "zoom in: {before} -> {after}"
    );

    // "What was live last week at 14:00?" typed into the form (UTC), as a
    // person asks it: eight days ago is inside rel-2's interval.
    let asked = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 8))
        .strftime("%Y-%m-%dT14:00")
        .to_string();
    c.find(Locator::Css("#t"))
        .await
        .unwrap()
        .send_keys(&asked)
        .await
        .unwrap();
    c.find(Locator::Css("form.ask button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let release = attr_of(&c, "main .answer", "data-release").await;
    let cli = resolve(&world, &format!("{asked}:00Z"));
    assert_eq!(cli["pin"]["release_id"], release.as_str());
    let answer = text_of(&c, "main .answer").await;
    assert!(answer.contains("LSN 0/"), "{answer}");
    screenshot(&c, "4-answer").await;

    // What changed at the switch after it.
    c.find(Locator::XPath(
        "//a[contains(., 'What changed at the next switch')]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let diff = text_of(&c, "table.diff").await;
    assert!(
        diff.contains("objects[name=account].fields[name=email].type")
            && diff.contains("\"text\"")
            && diff.contains("\"email\""),
        "{diff}"
    );
    let summary = text_of(&c, "#diff-summary").await;
    assert!(summary.starts_with("2 change(s)"), "{summary}");
    screenshot(&c, "5-diff").await;

    // Near a switch, both candidates, as resolve says.
    let switch = format!(
        "{}",
        (at[1] + jiff::SignedDuration::from_millis(500)).strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    c.goto(&format!("{base}/env/prod/at?t={switch}"))
        .await
        .unwrap();
    let warning = text_of(&c, "main .warning").await;
    assert!(
        warning.contains("rel-1") && warning.contains("rel-2") && warning.contains("both"),
        "{warning}"
    );
    let cli = resolve(&world, &switch);
    assert_eq!(cli["near_switch"]["before"]["release_id"], "rel-1");
    assert_eq!(cli["near_switch"]["after"]["release_id"], "rel-2");
    screenshot(&c, "6-near-switch").await;

    // A pin page, an artifact page and the log page.
    c.goto(&format!("{base}/env/prod/pin/2")).await.unwrap();
    let pin = text_of(&c, "main").await;
    assert!(pin.contains("Included: log index"), "{pin}");
    assert!(pin.contains("LSN 0/2000"), "{pin}");
    screenshot(&c, "7-pin").await;
    c.find(Locator::Css("main dd a[href^='/artifact/']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let artifact = text_of(&c, "main").await;
    assert!(
        artifact.contains("Where and when it was live") && artifact.contains("#2"),
        "{artifact}"
    );
    // rel-2 was ended by rel-3's pin; rel-3 is live in both environments.
    assert!(!artifact.contains("still live"), "{artifact}");
    screenshot(&c, "8-artifact").await;
    c.goto(&format!("{base}/artifact/rel-3")).await.unwrap();
    let newest = text_of(&c, "main").await;
    assert_eq!(newest.matches("still live").count(), 2, "{newest}");
    assert!(
        newest.contains("prod") && newest.contains("staging"),
        "{newest}"
    );
    c.goto(&format!("{base}/log")).await.unwrap();
    let log = text_of(&c, "main").await;
    assert!(
        log.contains("the log's signature") && log.contains(&world.vkey),
        "{log}"
    );
    screenshot(&c, "9-log").await;
    c.close().await.unwrap();

    // With JavaScript off the read-only pages still answer.
    let plain = driver.browser(false).await;
    plain.goto(&format!("{base}/env/prod")).await.unwrap();
    let table = text_of(&plain, "#pins-h + table").await;
    assert!(
        table.contains("rel-1") && table.contains("diff from rel-2"),
        "{table}"
    );
    plain
        .find(Locator::Css("#t"))
        .await
        .unwrap()
        .send_keys(&asked)
        .await
        .unwrap();
    plain
        .find(Locator::Css("form.ask button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        attr_of(&plain, "main .answer", "data-release").await,
        release
    );
    screenshot(&plain, "10-no-script").await;
    plain.close().await.unwrap();
}

#[test]
fn with_tokens_a_browser_signs_in_and_nothing_is_shown_before() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::TempDir::new().unwrap();
    let (server, token) = stackpin_tests::start_with_read_token(dir.path(), "viewer");
    let addr = server.tiles_addr();
    let send = |request: String| {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        raw
    };
    let get = |path: &str, cookie: &str| {
        send(format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\r\n"
        ))
    };
    let login = |token: &str| {
        let body = format!("token={token}");
        send(format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };

    // Nothing before signing in: the sign-in form, with 401.
    let refused = get("/", "");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("name=\"token\"") && !refused.contains("Environments</h1>"));
    assert!(get("/checkpoint", "").starts_with("HTTP/1.1 401"));
    // A wrong token is refused and sets nothing.
    let wrong = login("sp_not_a_token");
    assert!(
        wrong.starts_with("HTTP/1.1 401") && !wrong.contains("set-cookie"),
        "{wrong}"
    );
    // The right one goes into an HttpOnly, SameSite=Strict cookie.
    let signed = login(&token);
    assert!(signed.starts_with("HTTP/1.1 303"), "{signed}");
    let cookie = signed
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let page = get("/", &format!("Cookie: {pair}\r\n"));
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("No environments yet"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    // The same cookie reads the tiles; a forged one does not.
    assert!(get("/checkpoint", &format!("Cookie: {pair}\r\n")).starts_with("HTTP/1.1 200"));
    assert!(get("/", "Cookie: stackpin_token=sp_forged\r\n").starts_with("HTTP/1.1 401"));
}

/// Years of history: 1,200 pins an hour apart. The timeline reads them a
/// page at a time (500 per request), draws them all when zoomed out and
/// only the visible ones when zoomed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_paged_into_the_timeline_and_only_the_visible_part_is_drawn() {
    use stackpin_proto::v1 as pb;
    let world = World::new(&["--http-listen", "127.0.0.1:0"]);
    world.three_releases();
    let mut client = pb::registry_client::RegistryClient::connect(world.server.url())
        .await
        .unwrap();
    let hour = 3_600i64;
    let start = jiff::Timestamp::now().as_second() - 1_300 * hour;
    for i in 0..1_200i64 {
        client
            .pin(pb::PinRequest {
                env: "long".into(),
                artifact: Some(pb::ArtifactRef {
                    r#ref: Some(pb::artifact_ref::Ref::ReleaseId(format!(
                        "rel-{}",
                        i % 3 + 1
                    ))),
                }),
                activated_at: Some(prost_types::Timestamp {
                    seconds: start + i * hour,
                    nanos: 0,
                }),
                reason: String::new(),
                db_position: None,
                request_id: String::new(),
                runtime_image: String::new(),
                known_env_only: false,
            })
            .await
            .unwrap();
    }
    let web = world.server.tiles_addr();

    // The pages the script reads: 500, 500, 200, newest first, no gap.
    let mut seqs = Vec::new();
    let mut from = String::new();
    loop {
        let page = stackpin_tests::tlog::get(
            web,
            &format!("/env/long/pins.json?since=0&before=9000000000000000{from}"),
        );
        assert_eq!(page.status, 200);
        let page: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        let pins = page["pins"].as_array().unwrap();
        assert!(pins.len() <= 500);
        seqs.extend(pins.iter().map(|p| p["seq"].as_u64().unwrap()));
        match page["next_from_seq"].as_u64() {
            Some(n) => from = format!("&from_seq={n}"),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=1_200).rev().collect::<Vec<u64>>());

    let driver = Driver::start();
    let c = driver.browser(true).await;
    c.goto(&format!("http://{web}/env/long")).await.unwrap();
    attr_of(&c, "#timeline", "data-drawn").await;
    let whole = text_of(&c, "p.range").await;
    assert!(whole.contains(": 1200 pin(s)"), "{whole}");
    screenshot(&c, "11-long-history").await;
    let drawn_all = c
        .find_all(Locator::Css("#timeline rect[data-release]"))
        .await
        .unwrap()
        .len();
    assert_eq!(drawn_all, 1_200);
    // Zoomed in three times: an eighth of the window, fewer bands drawn.
    let timeline = c.find(Locator::Css("#timeline")).await.unwrap();
    for _ in 0..3 {
        let drawn = attr_of(&c, "#timeline", "data-drawn").await;
        timeline.send_keys("+").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while attr_of(&c, "#timeline", "data-drawn").await == drawn {
            assert!(Instant::now() < deadline, "zooming did not redraw");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let visible = c
        .find_all(Locator::Css("#timeline rect[data-release]"))
        .await
        .unwrap()
        .len();
    assert!(
        visible > 0 && visible < 400,
        "{visible} bands drawn after zooming in"
    );
    screenshot(&c, "12-long-history-zoomed").await;
    c.close().await.unwrap();
}
