//! Damage found at start-up: a truncated or deleted log entry stops the
//! server with a clear message; a corrupted index is rebuilt from the log.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::path::PathBuf;

use stackpin_tests::Server;
use stackpin_tests::world::World;
use tempfile::TempDir;

/// A world with three releases whose server was stopped, so that its data
/// folder can be damaged before a server starts on it again.
struct Stopped {
    dir: TempDir,
    vkey: String,
    data: PathBuf,
    /// What `World::answers` gave before the damage.
    answers: Vec<String>,
}

impl Stopped {
    fn new() -> Self {
        let w = World::new(&[]);
        w.three_releases();
        let answers = w.answers();
        Self::stop(w, answers)
    }

    fn stop(w: World, answers: Vec<String>) -> Self {
        let World { dir, server, vkey } = w;
        let data = server.data_dir.clone();
        assert!(server.stop().success());
        Self {
            dir,
            vkey,
            data,
            answers,
        }
    }

    fn trusted(&self) -> String {
        self.dir.path().join("trusted").display().to_string()
    }

    /// The log of a start that must fail.
    fn start_fails(&self, why: &str) -> String {
        let trusted = self.trusted();
        Server::try_start(&self.data, &["--trusted-keys", &trusted])
            .err()
            .unwrap_or_else(|| panic!("the server started {why}"))
    }

    /// A server on the folder again, with the answers from before.
    fn start(self) -> (World, Vec<String>) {
        let trusted = self.trusted();
        let server = Server::start(&self.data, &["--trusted-keys", &trusted]);
        let w = World {
            dir: self.dir,
            server,
            vkey: self.vkey,
        };
        (w, self.answers)
    }
}

#[test]
fn a_truncated_entry_stops_the_start_with_a_clear_message() {
    let s = Stopped::new();
    let entry = s.data.join("log/entries/00000000000000000004");
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let log = s.start_fails("on a truncated log");
    assert!(
        log.contains("log object 4") && log.contains("truncated"),
        "{log}"
    );
}

#[test]
fn a_deleted_entry_stops_the_start_instead_of_leaving_a_silent_gap() {
    let s = Stopped::new();
    std::fs::remove_file(s.data.join("log/entries/00000000000000000002")).unwrap();
    let log = s.start_fails("with a gap in its log");
    assert!(
        log.contains("log object 2") && log.contains("missing"),
        "{log}"
    );
    // Deleting the index does not hide the gap either.
    std::fs::remove_dir_all(s.data.join("index")).unwrap();
    let log = s.start_fails("and a rebuilt index hid the gap");
    assert!(log.contains("missing"), "{log}");
}

#[test]
fn a_corrupted_index_is_rebuilt_from_the_log_with_identical_answers() {
    let s = Stopped::new();
    // Overwrite every file of the sled index with garbage of the same size.
    for entry in walk(&s.data.join("index")) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0x5a; len.max(64)]).unwrap();
    }
    let (w, answers) = s.start();
    assert!(
        w.server.log().contains("rebuilding it from the log"),
        "{}",
        w.server.log()
    );
    assert_eq!(w.answers(), answers);
}

#[test]
fn a_short_index_file_is_rebuilt_from_the_log_with_identical_answers() {
    let s = Stopped::new();
    // As a power loss could leave it: sled says more is applied than the
    // Merkle hash file holds.
    let hashes = s.data.join("index/hashes");
    let len = std::fs::metadata(&hashes).unwrap().len();
    assert!(len >= 64, "{len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&hashes)
        .unwrap()
        .set_len(len - 32)
        .unwrap();
    let (w, answers) = s.start();
    assert!(
        w.server.log().contains("hashes holds"),
        "{}",
        w.server.log()
    );
    assert_eq!(w.answers(), answers);
}

#[test]
fn a_damaged_entry_copy_in_the_index_is_refused_then_rebuilt() {
    let s = Stopped::new();
    // Flip bytes in the entry copies: a resolve must not answer from them,
    // and the next start rebuilds the index, after which every answer is
    // exactly as before.
    let copies = s.data.join("index/entries.dat");
    let mut bytes = std::fs::read(&copies).unwrap();
    assert!(!bytes.is_empty());
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0x01;
    }
    std::fs::write(&copies, &bytes).unwrap();
    let (w, answers) = s.start();
    let run = w.cli(&["resolve", "--env", "prod", "--at", "2026-03-01T10:30:00Z"]);
    assert_ne!(run.code, 0, "answered from a damaged copy: {}", run.stdout);
    assert!(
        run.stderr.contains("copy of log entry") && run.stderr.contains("rebuild"),
        "{}",
        run.stderr
    );
    let (w, answers) = Stopped::stop(w, answers).start();
    let log = w.server.log();
    assert!(
        log.contains("found damaged while serving") && log.contains("rebuilding it from the log"),
        "{log}"
    );
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
