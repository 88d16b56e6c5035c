//! A registry in a scratch folder with two trusted publishers (one key from
//! `stackpin keygen`, one from OpenSSL), and helpers to drive it.

#![allow(clippy::unwrap_used)] // a test fixture: failing loudly is the point

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::{Server, stackpin};

pub const T1: &str = "2026-03-01T10:00:00Z";
pub const T2: &str = "2026-03-01T11:00:00Z";
pub const T3: &str = "2026-03-01T12:00:00Z";

/// The log key of a data folder, via `stackpin-registry key`.
pub fn log_vkey(data: &Path) -> String {
    let out = Command::new(crate::bin("stackpin-registry"))
        .args(["key", "--create", "--data-dir"])
        .arg(data)
        .output()
        .expect("run stackpin-registry key");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A publisher key made by OpenSSL, as pipelines often do.
pub fn openssl_key(dir: &Path, name: &str) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("trusted/{name}.pub.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl genpkey failed");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl pkey -pubout failed");
}

pub struct World {
    pub dir: TempDir,
    pub server: Server,
    /// The log's verifier key, as `stackpin-registry key` prints it.
    pub vkey: String,
}

impl World {
    /// A registry trusting two publishers: one key from `stackpin keygen`,
    /// one from OpenSSL.
    pub fn new(extra: &[&str]) -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("trusted")).unwrap();
        let run = stackpin(
            dir.path(),
            "http://127.0.0.1:1",
            &["keygen", "--out", "ci.pem"],
        );
        run.ok();
        std::fs::rename(
            dir.path().join("ci.pub.pem"),
            dir.path().join("trusted/ci.pub.pem"),
        )
        .unwrap();
        openssl_key(dir.path(), "ops");
        let trusted = dir.path().join("trusted");
        let data = dir.path().join("data");
        let vkey = log_vkey(&data);
        let mut args = vec!["--trusted-keys", trusted.to_str().unwrap()];
        args.extend_from_slice(extra);
        let server = Server::start(&data, &args);
        Self { dir, server, vkey }
    }

    /// Runs the CLI as an operator who followed the README: the log's key
    /// exported as STACKPIN_LOG_VKEY, so every answer is proved.
    pub fn cli(&self, args: &[&str]) -> crate::Run {
        self.cli_with(args, &[])
    }

    /// [`World::cli`] with `token` as the caller's bearer token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> crate::Run {
        self.cli_with(args, &[("STACKPIN_TOKEN", token)])
    }

    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> crate::Run {
        let state = self.dir.path().join("state");
        let mut all = vec!["--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut vars = vec![("STACKPIN_LOG_VKEY", self.vkey.as_str())];
        vars.extend_from_slice(env);
        crate::stackpin_with(self.dir.path(), &self.server.url(), &all, &vars)
    }

    /// Runs the CLI with no log key known (nothing exported), as someone
    /// who skipped the README's trust step.
    pub fn cli_without_key(&self, args: &[&str]) -> crate::Run {
        let state = self.dir.path().join("state");
        let mut all = vec!["--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        stackpin(self.dir.path(), &self.server.url(), &all)
    }

    /// `stackpin restore` with this world's trust settings.
    pub fn restore(&self, at: &str, out: &str, extra: &[&str]) -> crate::Run {
        let mut args = vec![
            "restore",
            "--env",
            "prod",
            "--at",
            at,
            "--out",
            out,
            "--trusted-keys",
            "trusted",
            "--log-key",
            &self.vkey,
        ];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    pub fn write(&self, name: &str, body: &[u8]) {
        std::fs::write(self.dir.path().join(name), body).unwrap();
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }

    pub fn data(&self) -> std::path::PathBuf {
        self.server.data_dir.clone()
    }

    /// The data folder after its stored checkpoint (`log/checkpoint`, which
    /// the registry rewrites at most once a second) covers `size` entries,
    /// so an offline audit sees the whole log signed.
    pub fn data_signed_up_to(&self, size: u64) -> std::path::PathBuf {
        let path = self.data().join("log/checkpoint");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stored = std::fs::read_to_string(&path)
                .ok()
                .and_then(|note| note.lines().nth(1)?.parse::<u64>().ok());
            if stored.is_some_and(|n| n >= size) {
                return self.data();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the stored checkpoint still covers {stored:?} entries, not {size}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Publishes `aN.json` (`{"release":N,"objects":[]}`) as `rel-N`,
    /// signed with `ci.pem`, and pins it in prod.
    pub fn ship(&self, n: u32) {
        let name = format!("a{n}.json");
        self.write(
            &name,
            format!("{{\"release\":{n},\"objects\":[]}}\n").as_bytes(),
        );
        let id = format!("rel-{n}");
        self.cli(&["publish", &name, "--release-id", &id, "--key", "ci.pem"])
            .ok();
        self.cli(&["pin", "--env", "prod", "--release-id", &id])
            .ok();
    }

    /// Publishes `rN.json` (`{"release":N}`) as `rel-N` for N in 1..=n,
    /// signed with `ci.pem`; nothing is pinned.
    pub fn publish_releases(&self, n: u32) {
        for i in 1..=n {
            let name = format!("r{i}.json");
            self.write(&name, format!("{{\"release\":{i}}}").as_bytes());
            self.cli(&[
                "publish",
                &name,
                "--release-id",
                &format!("rel-{i}"),
                "--key",
                "ci.pem",
            ])
            .ok();
        }
    }

    /// Three artifacts published and pinned at T1, T2, T3 in prod.
    pub fn three_releases(&self) {
        for (i, key) in [(1, "ci.pem"), (2, "ops.pem"), (3, "ci.pem")] {
            let name = format!("a{i}.json");
            self.write(
                &name,
                format!("{{\"release\":{i},\"objects\":[]}}\n").as_bytes(),
            );
            let out = self
                .cli(&[
                    "--output",
                    "json",
                    "publish",
                    &name,
                    "--release-id",
                    &format!("rel-{i}"),
                    "--key",
                    key,
                ])
                .json();
            assert_eq!(out["created"], true);
        }
        for (i, at) in [(1, T1), (2, T2), (3, T3)] {
            let out = self
                .cli(&[
                    "--output",
                    "json",
                    "pin",
                    "--env",
                    "prod",
                    "--new-env",
                    "--release-id",
                    &format!("rel-{i}"),
                    "--activated-at",
                    at,
                    "--reason",
                    &format!("deploy {i}"),
                ])
                .json();
            assert_eq!(out["seq"], i);
        }
    }

    /// The release `resolve` says was live in prod at `at`.
    #[allow(clippy::unwrap_used)] // a test fixture: failing loudly is the point
    pub fn release_at(&self, at: &str) -> String {
        let v = self
            .cli(&["--output", "json", "resolve", "--env", "prod", "--at", at])
            .json();
        v["pin"]["release_id"].as_str().unwrap().to_owned()
    }

    /// The answers an operator would get, as JSON text, for comparing across
    /// restarts.
    pub fn answers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for at in [
            T1,
            "2026-03-01T10:30:00Z",
            T2,
            "2026-03-01T11:59:59.500Z",
            T3,
            "2027-01-01T00:00:00Z",
        ] {
            out.push(
                self.cli(&["--output", "json", "resolve", "--env", "prod", "--at", at])
                    .ok()
                    .to_owned(),
            );
        }
        out.push(
            self.cli(&["--output", "json", "history", "--env", "prod"])
                .ok()
                .to_owned(),
        );
        out.push(self.cli(&["--output", "json", "list"]).ok().to_owned());
        out.push(
            self.cli(&["--output", "json", "stat", "--release-id", "rel-2"])
                .ok()
                .to_owned(),
        );
        out
    }
}
