//! A drill's PostgreSQL side: the cluster recovered from a base backup on
//! a unix socket in the drill's work folder, where its programs are, and
//! `drill run --print-postgresql`, the same drill as commands to run where
//! the backup is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use stackpin_core::time::Timestamp;

use super::run::RunArgs;
use crate::exit::Outcome;
use crate::files::copy_tree;
use crate::view::Format;

/// Whether this process runs as root (PostgreSQL refuses to).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// A backup tool's restore a drill performs: which backup, to what.
pub(super) enum ToolRestore {
    Pgbackrest {
        tool: crate::backups::pgbackrest::PgBackRest,
        repo: Option<u32>,
        set: String,
        target: crate::backups::Target,
    },
    Barman {
        tool: crate::backups::barman::Barman,
        backup: String,
        target: crate::backups::Target,
    },
}

/// A PostgreSQL cluster recovered from a base backup into a drill's work
/// folder, listening only on a unix socket there.
pub(super) struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    /// Whether it was stopped; dropped running (an error path, Ctrl-C or
    /// SIGTERM), it is stopped as it drops, before its folder is removed.
    stopped: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop_command().output();
        }
    }
}

/// The port that names the cluster's socket file (nothing listens on TCP).
const PG_PORT: &str = "5432";

impl Cluster {
    /// Copies `base` into `work`, adds the recovery `settings` exactly as
    /// `stackpin restore` prints them (plus the socket and no TCP), starts
    /// it and waits until it has recovered to the target and promoted.
    pub(super) async fn recover(
        bin: Option<&Path>,
        base: &Path,
        work: &Path,
        settings: &[String],
    ) -> Result<Self, String> {
        let data = work.join("pgdata");
        copy_tree(base, &data).map_err(|e| format!("copying {}: {e}", base.display()))?;
        // PostgreSQL refuses a data folder others can read.
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        for stale in ["postmaster.pid", "standby.signal"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        std::fs::write(data.join("recovery.signal"), "").map_err(|e| e.to_string())?;
        Self::start_recovery(bin, work, settings).await
    }

    /// Has a backup tool restore its backup into `work` recovering to its
    /// target (the tool writes the recovery settings and recovery.signal
    /// itself, with archiving off), then starts it as
    /// [`Cluster::recover`] does.
    pub(super) async fn from_backup_tool(
        bin: Option<&Path>,
        restore: &ToolRestore,
        work: &Path,
    ) -> Result<Self, String> {
        let data = work.join("pgdata");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        match restore {
            ToolRestore::Pgbackrest {
                tool,
                repo,
                set,
                target,
            } => tool.restore_into(*repo, set, *target, &data).await?,
            ToolRestore::Barman {
                tool,
                backup,
                target,
            } => tool.recover_into(backup, *target, &data).await?,
        }
        Self::start_recovery(bin, work, &[]).await
    }

    /// Starts the cluster in `work`/pgdata on a socket in `work`, with
    /// `settings` added, and waits until it has recovered and promoted.
    async fn start_recovery(
        bin: Option<&Path>,
        work: &Path,
        settings: &[String],
    ) -> Result<Self, String> {
        let bin = match bin {
            Some(b) => b.to_owned(),
            None => pg_bindir().await?,
        };
        let data = work.join("pgdata");
        let sock = work.join("sock");
        std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
        let mut conf = format!(
            "\n# stackpin drill\nlisten_addresses = ''\nunix_socket_directories = '{}'\nport = {PG_PORT}\n",
            sock.display()
        );
        for line in settings {
            conf.push_str(line);
            conf.push('\n');
        }
        // postgresql.auto.conf is read last, so these win over anything the
        // primary set with ALTER SYSTEM (archive_mode = on, a listen
        // address) that the base backup carries.
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| format!("writing the recovery settings: {e}"))?;
        let mut cluster = Self {
            bin,
            data,
            sock,
            stopped: false,
        };
        let log = work.join("postgresql.log");
        let started = tokio::process::Command::new(cluster.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "600", "start"])
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run pg_ctl from {}: {e}", cluster.bin.display()))?;
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .rev()
                .find(|l| l.contains("FATAL") || l.contains("ERROR"))
                .or_else(|| text.lines().last())
                .unwrap_or("no log")
                .to_owned()
        };
        if !started.status.success() {
            return Err(format!("PostgreSQL did not start: {}", log_tail()));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match cluster.first_value("SELECT pg_is_in_recovery()::text") {
                Ok(Some(v)) if v == "false" => return Ok(cluster),
                _ if Instant::now() > deadline => {
                    cluster.stop().await;
                    return Err(format!(
                        "PostgreSQL did not finish recovery in 10 minutes: {}",
                        log_tail()
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            if !cluster.data.join("postmaster.pid").exists() {
                return Err(format!(
                    "PostgreSQL stopped during recovery: {}",
                    log_tail()
                ));
            }
        }
    }

    pub(super) fn first_value(&self, q: &str) -> Result<Option<String>, String> {
        let out = std::process::Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.sock)
            .args([
                "-p",
                PG_PORT,
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                q,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(err.trim().to_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().next() {
            None => Err("no rows".into()),
            Some(line) => {
                let first = line.split('|').next().unwrap_or_default();
                Ok((!first.is_empty()).then(|| first.to_owned()))
            }
        }
    }

    /// `pg_ctl stop -m immediate`: the copy is thrown away, so nothing
    /// needs a clean shutdown.
    fn stop_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        c
    }

    pub(super) async fn stop(&mut self) {
        let _ = tokio::process::Command::from(self.stop_command())
            .kill_on_drop(true)
            .output()
            .await;
        self.stopped = true;
    }
}

/// Where the PostgreSQL programs are: `pg_config --bindir`, else the
/// folder of `pg_ctl` on PATH.
async fn pg_bindir() -> Result<PathBuf, String> {
    if let Ok(out) = tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .await
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("pg_ctl").exists())
        .ok_or_else(|| {
            "cannot find pg_ctl: pass --pg-bin DIR (e.g. /usr/lib/postgresql/15/bin)".to_owned()
        })
}

/// `drill run --print-postgresql`: the drill as commands, with the
/// recovery settings `stackpin restore` gives for the instant (checked
/// against the log like a restore plan), ending with the `drill record`
/// that puts the result in the log.
pub(super) async fn print_postgresql(
    args: &RunArgs,
    server: &crate::client::Connection,
    state: Option<&Path>,
    target: Timestamp,
    base: Option<&Path>,
    format: Format,
) -> Outcome {
    let plan = crate::cmd::restore::RestoreArgs::drill(
        args.env.clone(),
        target,
        PathBuf::from("objectstack.json"),
        args.trusted_keys.clone(),
        args.log_key.clone(),
        args.wal_archive.as_deref(),
    )
    .planned();
    let planned = crate::cmd::restore::restore_verified(&plan, server, state).await?;
    let base = base.map_or_else(
        || "/path/to/base_backup".to_owned(),
        |b| b.display().to_string(),
    );
    let (env, at) = (args.env.to_string(), target.to_string());
    // The settings go into postgresql.auto.conf, read last, so they win
    // over what the primary set with ALTER SYSTEM; the heredoc is quoted,
    // so nothing in them is expanded by the shell.
    let mut commands = vec![
        "set -eu".to_owned(),
        "D=$(mktemp -d)".to_owned(),
        "trap 'pg_ctl -D \"$D/pgdata\" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf \"$D\"' EXIT".to_owned(),
        format!(
            "cp -a {} \"$D/pgdata\" && chmod 700 \"$D/pgdata\" && mkdir \"$D/sock\"",
            shell_quote(&base)
        ),
        "rm -f \"$D/pgdata/postmaster.pid\" \"$D/pgdata/standby.signal\"".to_owned(),
        format!(
            "printf \"listen_addresses = ''\\nunix_socket_directories = '%s'\\nport = {PG_PORT}\\n\" \"$D/sock\" >> \"$D/pgdata/postgresql.auto.conf\""
        ),
        format!(
            "cat >> \"$D/pgdata/postgresql.auto.conf\" <<'EOF'\n{}\nEOF",
            planned.postgres_settings().join("\n")
        ),
        "touch \"$D/pgdata/recovery.signal\"".to_owned(),
        "START=$(date +%s)".to_owned(),
        "pg_ctl -D \"$D/pgdata\" -l \"$D/postgresql.log\" -w -t 600 start".to_owned(),
        format!(
            "until [ \"$(psql -h \"$D/sock\" -p {PG_PORT} -d postgres -XAtc 'SELECT pg_is_in_recovery()')\" = f ]; do sleep 1; done"
        ),
        format!(
            "stackpin restore --env {env} --at {at} --out \"$D/objectstack.json\" {}",
            args.trusted_keys.shell_words(shell_quote)
        ),
    ];
    for c in &args.check {
        let query = c.rsplit_once(" => ").map_or(c.as_str(), |(q, _)| q);
        let query = query
            .replace("{release_id}", planned.resolution.pin.release_id.as_str())
            .replace("{digest}", planned.resolution.pin.digest.as_str());
        commands.push(format!(
            "psql -h \"$D/sock\" -p {PG_PORT} -d postgres -XAtc {}",
            shell_quote(&query)
        ));
    }
    let snapshot = args
        .snapshot
        .map(|i| format!(" --snapshot {i}"))
        .unwrap_or_default();
    commands.push(format!(
        "stackpin drill record --env {env} --driver postgresql --at {at}{snapshot} --rto \"$(( $(date +%s) - START ))s\" --check-passed NAME  # or --check-failed NAME / --failed WHY"
    ));
    #[derive(Serialize)]
    struct Printed<'a> {
        env: &'a str,
        target: &'a str,
        release_id: &'a str,
        digest: &'a str,
        settings: &'a [String],
        commands: &'a [String],
    }
    let printed = Printed {
        env: &env,
        target: &at,
        release_id: &planned.resolution.pin.release_id,
        digest: &planned.resolution.pin.digest,
        settings: &planned.postgres_settings(),
        commands: &commands,
    };
    format.emit(&printed, || {
        format!(
            "# PostgreSQL drill of {env} at {at}, paired with {} ({}); run where the base backup \
             and the WAL archive are, as their owner (not root)\n{}\n",
            printed.release_id,
            printed.digest,
            commands.join("\n")
        )
    });
    Ok(())
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
