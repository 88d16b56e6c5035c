//! Damage found at start-up: a truncated or deleted log entry stops the
//! server with a clear message; a corrupted index is rebuilt from the log.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use stackpin_tests::Server;
use stackpin_tests::world::World;

fn stopped_world() -> (World, Vec<String>) {
    let w = World::new(&[]);
    w.three_releases();
    let answers = w.answers();
    (w, answers)
}

fn restart_args(w: &World) -> Vec<String> {
    vec![
        "--trusted-keys".into(),
        w.dir.path().join("trusted").display().to_string(),
    ]
}

#[test]
fn a_truncated_entry_stops_the_start_with_a_clear_message() {
    let (w, _) = stopped_world();
    let World { dir, server, .. } = w;
    let data = server.data_dir.clone();
    assert!(server.stop().success());
    let entry = data.join("log/entries/00000000000000000004");
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let trusted = dir.path().join("trusted").display().to_string();
    let args = ["--trusted-keys", trusted.as_str()];
    let log = Server::try_start(&data, &args)
        .err()
        .expect("the server started on a truncated log");
    assert!(
        log.contains("log object 4") && log.contains("truncated"),
        "{log}"
    );
}

#[test]
fn a_deleted_entry_stops_the_start_instead_of_leaving_a_silent_gap() {
    let (w, _) = stopped_world();
    let World { dir, server, .. } = w;
    let data = server.data_dir.clone();
    assert!(server.stop().success());
    std::fs::remove_file(data.join("log/entries/00000000000000000002")).unwrap();
    let trusted = dir.path().join("trusted").display().to_string();
    let args = ["--trusted-keys", trusted.as_str()];
    let log = Server::try_start(&data, &args)
        .err()
        .expect("the server started with a gap in its log");
    assert!(
        log.contains("log object 2") && log.contains("missing"),
        "{log}"
    );
    // Deleting the index does not hide the gap either.
    std::fs::remove_dir_all(data.join("index")).unwrap();
    let log = Server::try_start(&data, &args)
        .err()
        .expect("a rebuilt index hid the gap");
    assert!(log.contains("missing"), "{log}");
}

#[test]
fn a_corrupted_index_is_rebuilt_from_the_log_with_identical_answers() {
    let (w, answers) = stopped_world();
    let args = restart_args(&w);
    let World { dir, server, vkey } = w;
    let data = server.data_dir.clone();
    assert!(server.stop().success());
    // Overwrite every file of the sled index with garbage of the same size.
    for entry in walk(&data.join("index")) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0x5a; len.max(64)]).unwrap();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&data, &args);
    assert!(
        server.log().contains("rebuilding it from the log"),
        "{}",
        server.log()
    );
    let w = World { dir, server, vkey };
    assert_eq!(w.answers(), answers);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_short_index_file_is_rebuilt_from_the_log_with_identical_answers() {
    let (w, answers) = stopped_world();
    let args = restart_args(&w);
    let World { dir, server, vkey } = w;
    let data = server.data_dir.clone();
    assert!(server.stop().success());
    // As a power loss could leave it: sled says more is applied than the
    // Merkle hash file holds.
    let hashes = data.join("index/hashes");
    let len = std::fs::metadata(&hashes).unwrap().len();
    assert!(len >= 64, "{len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&hashes)
        .unwrap()
        .set_len(len - 32)
        .unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&data, &args);
    assert!(server.log().contains("hashes holds"), "{}", server.log());
    let w = World { dir, server, vkey };
    assert_eq!(w.answers(), answers);
}

#[test]
fn a_damaged_entry_copy_in_the_index_is_refused_then_rebuilt() {
    let (w, answers) = stopped_world();
    let args = restart_args(&w);
    let World { dir, server, vkey } = w;
    let data = server.data_dir.clone();
    assert!(server.stop().success());
    // Flip bytes in the entry copies: a resolve must not answer from them,
    // and the next start rebuilds the index, after which every answer is
    // exactly as before.
    let copies = data.join("index/entries.dat");
    let mut bytes = std::fs::read(&copies).unwrap();
    assert!(!bytes.is_empty());
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0x01;
    }
    std::fs::write(&copies, &bytes).unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&data, &args);
    let w = World { dir, server, vkey };
    let run = w.cli(&["resolve", "--env", "prod", "--at", "2026-03-01T10:30:00Z"]);
    assert_ne!(run.code, 0, "answered from a damaged copy: {}", run.stdout);
    assert!(
        run.stderr.contains("copy of log entry") && run.stderr.contains("rebuild"),
        "{}",
        run.stderr
    );
    let World { dir, server, vkey } = w;
    assert!(server.stop().success());
    let server = Server::start(&data, &args);
    assert!(
        server.log().contains("found damaged while serving")
            && server.log().contains("rebuilding it from the log"),
        "{}",
        server.log()
    );
    let w = World { dir, server, vkey };
    assert_eq!(w.answers(), answers);
}
