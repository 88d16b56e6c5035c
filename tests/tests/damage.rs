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

/// Flips one bit of the byte at `at` in `path`.
fn flip(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
}

/// The sha256 digest a publish entry records, from its JSON.
fn published_digest(data: &std::path::Path, index: u64) -> String {
    let entry = std::fs::read_to_string(data.join(format!("log/entries/{index:020}"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&entry).unwrap();
    v["digest"].as_str().unwrap().to_owned()
}

#[test]
fn an_edited_pin_is_refused_at_start_not_signed_again_even_without_the_index() {
    let s = Stopped::new();
    // The last pin (entry 5, release rel-3) made to name rel-1 instead: a
    // valid entry by every rule, and of the same length.
    let (rel1, rel3) = (published_digest(&s.data, 0), published_digest(&s.data, 2));
    let last = s.data.join("log/entries/00000000000000000005");
    let text = std::fs::read_to_string(&last).unwrap();
    assert!(text.contains("rel-3") && text.contains(&rel3), "{text}");
    std::fs::write(&last, text.replace("rel-3", "rel-1").replace(&rel3, &rel1)).unwrap();
    std::fs::remove_dir_all(s.data.join("index")).unwrap();
    let log = s.start_fails("on an edited log");
    assert!(
        log.contains("is not what the log key signed")
            && log.contains("log/checkpoint")
            && log.contains("size 6"),
        "{log}"
    );
    // Deleting the newest checkpoint does not hide it: the history still
    // signs the edited entry.
    std::fs::remove_file(s.data.join("log/checkpoint")).unwrap();
    let log = s.start_fails("once log/checkpoint was deleted");
    assert!(
        log.contains("log/checkpoints/00000000000000000006")
            && log.contains("is not what the log key signed"),
        "{log}"
    );
    // Nothing was signed meanwhile.
    let history: Vec<_> = std::fs::read_dir(s.data.join("log/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        history.iter().all(|n| n.as_str() <= "00000000000000000006"),
        "{history:?}"
    );
}

#[test]
fn a_damaged_tree_hash_is_blamed_on_the_index_and_never_signed() {
    let s = Stopped::new();
    let before = std::fs::read_to_string(s.data.join("log/checkpoint")).unwrap();
    // The root of the first four leaves (stored after leaf 3 and node 1/1),
    // with the stored checkpoint gone: only the history remains to check.
    let hashes = s.data.join("index/hashes");
    flip(&hashes, 6 * 32 + 5);
    std::fs::remove_file(s.data.join("log/checkpoint")).unwrap();
    let (w, answers) = s.start();
    let log = w.server.log();
    assert!(
        log.contains("not the hash of its children") && log.contains("rebuilding it from the log"),
        "{log}"
    );
    assert_eq!(w.answers(), answers);
    // The checkpoint it signs is the one it signed before the damage.
    let note = w.cli(&["checkpoint", "--log-key", &w.vkey]).ok().to_owned();
    assert!(
        note.contains(before.lines().nth(2).unwrap()),
        "{note}\n{before}"
    );
}

#[test]
fn a_damaged_leaf_hash_is_blamed_on_the_index_not_on_storage() {
    let w = World::new(&[]);
    w.three_releases();
    let trusted = w.dir.path().join("trusted");
    let audit = |w: &World| {
        w.cli(&[
            "audit",
            "--trusted-keys",
            trusted.to_str().unwrap(),
            "--log-key",
            &w.vkey,
        ])
    };
    audit(&w).ok();
    let answers = w.answers();
    // The leaf hash of entry 0 is the first stored hash.
    flip(&w.data().join("index/hashes"), 3);
    let run = audit(&w);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("the index's record of log entry 0 is damaged")
            && !said.contains("in storage no longer matches"),
        "{said}"
    );
    // The next start rebuilds the index; the log audits clean again.
    let (w, answers) = Stopped::stop(w, answers).start();
    assert!(
        w.server.log().contains("rebuilding it from the log"),
        "{}",
        w.server.log()
    );
    assert_eq!(w.answers(), answers);
    audit(&w).ok();
}

#[test]
fn a_second_registry_on_the_same_folder_stops_and_deletes_nothing() {
    let w = World::new(&[]);
    w.three_releases();
    let answers = w.answers();
    let trusted = w.dir.path().join("trusted");
    let log = match Server::try_start(&w.data(), &["--trusted-keys", trusted.to_str().unwrap()]) {
        Ok(_) => panic!("two registries run on one data folder"),
        Err(log) => log,
    };
    assert!(
        log.contains("is in use by another registry (pid ") && log.contains("nothing was changed"),
        "{log}"
    );
    assert!(w.data().join("index/hashes").exists());
    assert_eq!(w.answers(), answers);
    // The first one still writes.
    w.cli(&["pin", "--env", "prod", "--new-env", "--release-id", "rel-1"])
        .ok();
}

#[test]
fn a_deleted_checkpoint_history_with_the_newest_checkpoint_kept_starts_with_identical_answers() {
    let s = Stopped::new();
    std::fs::remove_dir_all(s.data.join("log/checkpoints")).unwrap();
    std::fs::remove_dir_all(s.data.join("index")).unwrap();
    let (w, answers) = s.start();
    assert_eq!(w.answers(), answers);
}

#[test]
fn a_truncated_checkpoint_stops_the_start_and_names_it() {
    let s = Stopped::new();
    let cp = s.data.join("log/checkpoint");
    let note = std::fs::read(&cp).unwrap();
    std::fs::write(&cp, &note[..note.len() / 2]).unwrap();
    let log = s.start_fails("on a truncated checkpoint");
    assert!(
        log.contains("log/checkpoint is not a checkpoint signed by this registry's log key"),
        "{log}"
    );
}

#[test]
fn a_checkpoint_signed_by_another_key_stops_the_start_and_names_it() {
    let s = Stopped::new();
    // The newest history copy replaced by a checkpoint of another registry.
    let other = World::new(&[]);
    other.three_releases();
    let theirs = other.data_signed_up_to(6).join("log/checkpoint");
    std::fs::copy(theirs, s.data.join("log/checkpoints/00000000000000000006")).unwrap();
    let log = s.start_fails("on a checkpoint signed by another key");
    assert!(
        log.contains("log/checkpoints/00000000000000000006 is not a checkpoint signed by this registry's log key"),
        "{log}"
    );
    // The offline audit reads the history too.
    let (data, trusted) = (s.data.display().to_string(), s.trusted());
    let run = stackpin_tests::stackpin(
        s.dir.path(),
        "http://127.0.0.1:1",
        &[
            "audit",
            "--data-dir",
            &data,
            "--trusted-keys",
            &trusted,
            "--log-key",
            &s.vkey,
        ],
    );
    assert_eq!(run.code, 5, "{run:#?}");
    assert!(
        run.stdout.contains("log/checkpoints/00000000000000000006"),
        "{run:#?}"
    );
}

#[test]
fn partial_writes_a_killed_process_left_are_removed_at_start() {
    let s = Stopped::new();
    // What the local backend leaves when killed mid-write: `<name>#<n>`.
    let blob = walk(&s.data.join("blobs")).remove(0);
    let staged_blob = std::path::PathBuf::from(format!("{}#7", blob.display()));
    std::fs::write(&staged_blob, vec![0u8; 1 << 20]).unwrap();
    let staged_entry = s.data.join("log/entries/00000000000000000006#1");
    std::fs::write(&staged_entry, b"{\"half\":").unwrap();
    let (w, answers) = s.start();
    assert!(!staged_blob.exists() && !staged_entry.exists());
    assert!(
        w.server.log().contains("removed partial writes"),
        "{}",
        w.server.log()
    );
    assert_eq!(w.answers(), answers);
}
