//! The crash drill: the real server under a mixed publish/pin load from the
//! real CLI, killed with SIGKILL at random moments and restarted, again and
//! again. After each restart every write a client saw acknowledged must be
//! there; an unacknowledged write may be there or not, but never in part;
//! and the log must audit clean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::remote::Remote;
use crate::{Server, stackpin};

/// Where the drilled registry keeps its data.
pub enum Backend<'a> {
    /// The embedded default: a local folder.
    Local,
    /// A bucket or container on a running object store.
    Remote(&'a dyn Remote),
}

/// What a drill saw.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub cycles: usize,
    pub acknowledged_publishes: usize,
    pub acknowledged_pins: usize,
    /// Acknowledged writes missing after a restart (must be 0).
    pub losses: usize,
    /// The first few lost writes, by release id or pin reason.
    pub lost: Vec<String>,
    /// Writes whose client saw a failure but that were committed anyway
    /// (complete, as checked; allowed).
    pub unacknowledged_but_present: usize,
    pub longest_recovery_ms: u128,
    pub audits: usize,
}

#[derive(Default)]
struct Ledger {
    publishes: BTreeMap<String, bool>,
    pins: BTreeMap<String, (String, bool)>,
}

/// Tiny deterministic PRNG (xorshift) so a drill can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn server_args(dir: &Path, backend: &Backend<'_>) -> (Vec<String>, Vec<(&'static str, String)>) {
    let mut args = vec![
        "--trusted-keys".to_owned(),
        dir.join("trusted").display().to_string(),
    ];
    let mut env = Vec::new();
    if let Backend::Remote(remote) = backend {
        args.extend([
            "--storage".to_owned(),
            remote.storage_url(&format!("drill-{}", std::process::id())),
            "--log-signing-key".to_owned(),
            dir.join("log.pem").display().to_string(),
        ]);
        args.extend(remote.server_args());
        env = remote.env();
    }
    (args, env)
}

fn all_pages(dir: &Path, url: &str, args: &[&str], field: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let mut a: Vec<&str> = vec!["--output", "json"];
        a.extend_from_slice(args);
        a.extend(["--limit", "1000"]);
        if !token.is_empty() {
            a.extend(["--page-token", token.as_str()]);
        }
        let run = stackpin(dir, url, &a);
        if run.code == 3 {
            return out; // environment without pins yet
        }
        let page = run.json();
        out.extend(page[field].as_array().cloned().unwrap_or_default());
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_owned(),
            _ => return out,
        }
    }
}

/// Runs `cycles` kill-and-restart cycles with `workers` concurrent clients.
///
/// Losses are counted in the report (a loss is never forgotten: the ledger
/// keeps every acknowledged write and each check looks for all of them).
///
/// # Panics
/// When a write is found half-present (an artifact listed whose bytes do not
/// verify), an environment's pins are not contiguous, or an audit fails.
pub fn run(cycles: usize, workers: usize, backend: Backend<'_>, seed: u64) -> Report {
    let tmp = tempfile::TempDir::new().unwrap_or_else(|e| panic!("scratch folder: {e}"));
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir(dir.join("trusted")).unwrap_or_else(|e| panic!("{e}"));
    stackpin(&dir, "http://127.0.0.1:1", &["keygen", "--out", "ci.pem"]).ok();
    stackpin(&dir, "http://127.0.0.1:1", &["keygen", "--out", "log.pem"]).ok();
    std::fs::rename(dir.join("ci.pub.pem"), dir.join("trusted/ci.pub.pem"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (args, env) = server_args(&dir, &backend);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = dir.join("data");
    let mut server = Server::start_with_env(&data, &arg_refs, &env);
    let vkey = {
        let mut key_args = vec!["key", "--data-dir"];
        let data_s = data.display().to_string();
        key_args.push(&data_s);
        let log_key = dir.join("log.pem").display().to_string();
        if matches!(backend, Backend::Remote(_)) {
            key_args.extend(["--log-signing-key", log_key.as_str()]);
        }
        let out = std::process::Command::new(crate::bin("stackpin-registry"))
            .args(&key_args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    std::fs::write(dir.join("base.json"), "{\"base\":true}").unwrap_or_else(|e| panic!("{e}"));
    stackpin(
        &dir,
        &server.url(),
        &[
            "publish",
            "base.json",
            "--release-id",
            "base",
            "--key",
            "ci.pem",
        ],
    )
    .ok();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng(seed | 1);
    let mut report = Report::default();
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let url = server.url();
        let threads: Vec<_> = (0..workers)
            .map(|w| {
                let (dir, url, stop, ledger) =
                    (dir.clone(), url.clone(), stop.clone(), ledger.clone());
                std::thread::spawn(move || work(&dir, &url, w, cycle, &stop, &ledger))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.next() % 900));
        let started = Instant::now();
        server = server.crash_and_restart();
        report.longest_recovery_ms = report
            .longest_recovery_ms
            .max(started.elapsed().as_millis());
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let _ = t.join();
        }
        check(&dir, &server.url(), &ledger, &mut report);
        if cycle % 20 == 19 || cycle + 1 == cycles {
            let audit = stackpin(
                &dir,
                &server.url(),
                &[
                    "audit",
                    "--trusted-keys",
                    "trusted",
                    "--log-key",
                    &vkey,
                    "--state-dir",
                    "state",
                ],
            );
            assert_eq!(
                audit.code, 0,
                "audit failed after cycle {cycle}: {audit:#?}"
            );
            report.audits += 1;
        }
        report.cycles += 1;
    }
    let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
    report.acknowledged_publishes = l.publishes.values().filter(|a| **a).count();
    report.acknowledged_pins = l.pins.values().filter(|(_, a)| *a).count();
    report
}

fn work(dir: &Path, url: &str, w: usize, cycle: usize, stop: &AtomicBool, ledger: &Mutex<Ledger>) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        if i % 3 == 0 {
            let id = format!("w{w}-c{cycle}-{i}");
            let file = format!("{id}.json");
            let _ = std::fs::write(dir.join(&file), format!("{{\"id\":\"{id}\"}}"));
            let run = stackpin(
                dir,
                url,
                &["publish", &file, "--release-id", &id, "--key", "ci.pem"],
            );
            ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .publishes
                .insert(id, run.code == 0);
        } else {
            let env = format!("env{}", (w + i) % 3);
            let reason = format!("p-w{w}-c{cycle}-{i}");
            let run = stackpin(
                dir,
                url,
                &[
                    "pin",
                    "--env",
                    &env,
                    "--new-env",
                    "--release-id",
                    "base",
                    "--reason",
                    &reason,
                ],
            );
            ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pins
                .insert(reason, (env, run.code == 0));
        }
    }
}

fn check(dir: &Path, url: &str, ledger: &Mutex<Ledger>, report: &mut Report) {
    let artifacts: BTreeSet<String> = all_pages(dir, url, &["list"], "artifacts")
        .iter()
        .filter_map(|a| a["release_id"].as_str().map(str::to_owned))
        .collect();
    let mut reasons = BTreeSet::new();
    for env in ["env0", "env1", "env2"] {
        let pins = all_pages(dir, url, &["history", "--env", env], "pins");
        let seqs: Vec<u64> = pins
            .iter()
            .rev()
            .filter_map(|p| p["seq"].as_u64())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{env} is not contiguous"
        );
        reasons.extend(
            pins.iter()
                .filter_map(|p| p["reason"].as_str().map(str::to_owned)),
        );
    }
    let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
    let mut unacked_present = 0;
    for (id, acked) in &l.publishes {
        let present = artifacts.contains(id);
        if *acked && !present {
            report.losses += 1;
            if report.lost.len() < 10 {
                report.lost.push(format!("publish {id}"));
            }
        } else if !*acked && present {
            unacked_present += 1;
            // Present means complete: the blob is there and verifies.
            let out = format!("check-{id}.json");
            stackpin(dir, url, &["fetch", "--release-id", id, "--out", &out]).ok();
        }
    }
    for (reason, (_, acked)) in &l.pins {
        let present = reasons.contains(reason);
        if *acked && !present {
            report.losses += 1;
            if report.lost.len() < 10 {
                report.lost.push(format!("pin {reason}"));
            }
        } else if !*acked && present {
            unacked_present += 1;
        }
    }
    report.unacknowledged_but_present = unacked_present;
}
