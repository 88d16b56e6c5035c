//! `stackpin watch` over WatchLog: each pin as it lands, checked against
//! its checkpoint, `--exec` run for each, and a resume (by cursor, or after
//! the registry is killed) with no gap and no repeat.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stackpin_tests::world::World;

const HOOK: &str = "echo \"$STACKPIN_LOG_INDEX $STACKPIN_ENTRY_TYPE $STACKPIN_ENV \
                    $STACKPIN_SEQ $STACKPIN_RELEASE_ID $STACKPIN_DIGEST\" >> hooks.txt";

/// `stackpin watch ARGS` in the background, as a deployer runs it.
fn watch(world: &World, args: &[&str]) -> Child {
    Command::new(stackpin_tests::bin("stackpin"))
        .current_dir(world.dir.path())
        .env("STACKPIN_SERVER", world.server.url())
        .arg("--state-dir")
        .arg(world.dir.path().join("state"))
        .args(["--output", "json", "watch", "--log-key", &world.vkey])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a background watch to end; its exit code, stdout and stderr.
fn finish(mut child: Child, within: Duration) -> (i32, Vec<serde_json::Value>, String) {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the watch did not end within {within:?}; its stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (status.code().unwrap_or(-1), lines, err)
}

/// The lines `--exec` wrote so far.
fn hooks(world: &World) -> Vec<String> {
    std::fs::read_to_string(world.dir.path().join("hooks.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for_hooks(world: &World, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while hooks(world).len() < n {
        assert!(
            Instant::now() < deadline,
            "hooks so far: {:?}",
            hooks(world)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pin(world: &World, env: &str, release: &str) -> u64 {
    world
        .cli(&[
            "--output",
            "json",
            "pin",
            "--env",
            env,
            "--new-env",
            "--release-id",
            release,
        ])
        .json()["log_index"]
        .as_u64()
        .unwrap()
}

fn digest_of(world: &World, release: &str) -> String {
    world
        .cli(&["--output", "json", "stat", "--release-id", release])
        .json()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn watch_shows_each_pin_as_it_lands_and_runs_the_command() {
    let world = World::new(&[]);
    world.three_releases();
    // From now on: only what lands after the watch starts.
    let child = watch(&world, &["--env", "prod", "--count", "2", "--exec", HOOK]);
    std::thread::sleep(Duration::from_millis(500));
    let staging = pin(&world, "staging", "rel-1"); // another environment: not shown
    let first = pin(&world, "prod", "rel-1");
    wait_for_hooks(&world, 1);
    let second = pin(&world, "prod", "rel-2");
    let (code, shown, err) = finish(child, Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    let indexes: Vec<u64> = shown
        .iter()
        .map(|s| s["log_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [first, second], "staging was {staging}");
    assert_eq!(shown[0]["type"], "pin");
    assert_eq!(shown[0]["entry"]["env"], "prod");
    assert_eq!(shown[1]["entry"]["release_id"], "rel-2");
    assert!(shown[1]["checkpoint_size"].as_u64().unwrap() > second);

    // The command ran once per pin, with the pin in its environment.
    assert_eq!(
        hooks(&world),
        [
            format!("{first} pin prod 4 rel-1 {}", digest_of(&world, "rel-1")),
            format!("{second} pin prod 5 rel-2 {}", digest_of(&world, "rel-2")),
        ]
    );

    // The index is the cursor: the whole prod history from 0, then a
    // resume after the first of the new pins repeats nothing.
    let (code, all, err) = finish(
        watch(&world, &["--env", "prod", "--from", "0", "--count", "5"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = all
        .iter()
        .map(|s| s["entry"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let from = (first + 1).to_string();
    let (code, rest, _) = finish(
        watch(&world, &["--env", "prod", "--from", &from, "--count", "1"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0);
    assert_eq!(rest[0]["log_index"].as_u64().unwrap(), second);

    // By type, across environments: the three publishes.
    let (code, publishes, _) = finish(
        watch(
            &world,
            &["--type", "publish", "--from", "0", "--count", "3"],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0);
    let ids: Vec<&str> = publishes
        .iter()
        .map(|s| s["entry"]["release_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["rel-1", "rel-2", "rel-3"]);

    // Wrong input is refused with a clear message.
    world
        .cli(&["watch", "--log-key", &world.vkey, "--from", "9999"])
        .fails(2, "past the end of the log");
    world
        .cli(&["watch", "--log-key", &world.vkey, "--type", "pins"])
        .fails(2, "pins");
    // A watch checks what it receives: under another log key it refuses.
    let other = World::new(&[]);
    world
        .cli(&["watch", "--log-key", &other.vkey, "--from", "0"])
        .fails(5, "checkpoint");
}

/// A world with three releases whose registry keeps its gRPC port across
/// restarts, so a running watch can reconnect to it.
fn three_releases_on_a_fixed_port() -> World {
    let listen = format!("127.0.0.1:{}", stackpin_tests::s3::free_port());
    let world = World::new(&["--listen", &listen]);
    world.three_releases();
    world
}

#[test]
fn watch_resumes_after_the_registry_is_killed_with_no_gap_and_no_repeat() {
    let world = three_releases_on_a_fixed_port();
    let child = watch(&world, &["--env", "prod", "--count", "3", "--exec", HOOK]);
    std::thread::sleep(Duration::from_millis(500));
    let first = pin(&world, "prod", "rel-1");
    wait_for_hooks(&world, 1);

    let World { dir, server, vkey } = world;
    let world = World {
        dir,
        server: server.crash_and_restart(),
        vkey,
    };
    let second = pin(&world, "prod", "rel-2");
    let third = pin(&world, "prod", "rel-3");
    let (code, shown, err) = finish(child, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reconnecting from"), "{err}");
    let indexes: Vec<u64> = shown
        .iter()
        .map(|s| s["log_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [first, second, third]);
    let hooked: Vec<u64> = hooks(&world)
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(hooked, [first, second, third]);
}

#[test]
fn a_stop_ends_ten_watch_streams_at_once_and_every_watcher_resumes_with_no_gap() {
    let world = three_releases_on_a_fixed_port();
    let watchers: Vec<Child> = (0..10)
        .map(|_| watch(&world, &["--env", "prod", "--count", "2"]))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let first = pin(&world, "prod", "rel-1");

    // SIGTERM with ten streams open: they end at once (an UNAVAILABLE the
    // watchers retry), so the stop does not wait out the 30 s grace.
    let World { dir, server, vkey } = world;
    let (took, server) = server.stop_and_restart();
    eprintln!("stopped in {took:?} with ten watch streams open");
    assert!(
        took < Duration::from_secs(5),
        "the stop took {took:?} with ten watch streams open"
    );
    let world = World { dir, server, vkey };
    let second = pin(&world, "prod", "rel-2");
    for child in watchers {
        let (code, shown, err) = finish(child, Duration::from_secs(60));
        assert_eq!(code, 0, "{err}");
        let indexes: Vec<u64> = shown
            .iter()
            .map(|s| s["log_index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [first, second], "{err}");
        assert!(err.contains("reconnecting from"), "{err}");
    }
}
