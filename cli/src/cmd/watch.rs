//! `stackpin watch`: each entry as it lands (by default the pins of one
//! environment), each checked against the signed checkpoint it comes with,
//! optionally running a command for each, so a deployer can re-point
//! ObjectOS when a pin lands. The log index is the cursor: after a
//! disconnect the watch resumes where it stopped, with no gap and no
//! repeat.

use serde::Serialize;
use stackpin_core::entry::Entry;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::reader::{Anchor, HOW_TO_TRUST, Reader};
use crate::view::Format;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Only pins of this environment.
    #[arg(long, value_parser = crate::parse::<stackpin_core::ids::EnvName>)]
    env: Option<stackpin_core::ids::EnvName>,
    /// Only entries of this type: publish, pin, key, snapshot, drill
    /// (repeatable) [default: pin with --env, else all].
    #[arg(long = "type", value_name = "TYPE", value_parser = Entry::KINDS)]
    types: Vec<String>,
    /// The first log index to show [default: the log's current size, i.e.
    /// only what lands from now on]; 0 replays the whole log.
    #[arg(long)]
    from: Option<u64>,
    /// Run this command (with `sh -c`) for each entry shown, with
    /// STACKPIN_ENTRY_TYPE, STACKPIN_LOG_INDEX and, for a pin, snapshot or
    /// drill, STACKPIN_ENV, STACKPIN_RELEASE_ID, STACKPIN_DIGEST and
    /// STACKPIN_SEQ (of the pin, or of the pin live at the snapshot or
    /// drill), plus STACKPIN_ACTIVATED_AT, STACKPIN_DB_TIME or
    /// STACKPIN_DRILL_PASSED, in its environment. The watch waits for it; a
    /// failing command is reported and the watch goes on.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Stop after this many entries.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

#[derive(Serialize)]
struct Shown {
    log_index: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    checkpoint_size: u64,
    entry: serde_json::Value,
}

pub async fn run(
    args: &WatchArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let reader = Reader::new(&args.log_key, server, state, None)?;
    if !reader.verifies() {
        return Err(Failure::invalid(format!(
            "watch shows (and --exec acts on) proved entries only: {HOW_TO_TRUST}"
        )));
    }
    let types = if args.types.is_empty() && args.env.is_some() {
        vec!["pin".to_owned()]
    } else {
        args.types.clone()
    };
    let mut client = crate::client::connect(server).await?;
    // Where to start: the size of the current checkpoint, once accepted.
    let mut next = match args.from {
        Some(n) => n,
        None => {
            let note = client
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await?
                .into_inner()
                .note;
            reader.anchor(&mut client, &note).await?.checkpoint.size
        }
    };
    let mut shown = 0u64;
    let mut failures = 0u32;
    // The checkpoint the events come with, accepted once per new note
    // (signature, quorum, and that it extends the remembered one).
    let mut anchor: Option<Anchor> = None;
    // Per environment, the last pin shown: the next one must follow it.
    let mut last_pins: std::collections::HashMap<stackpin_core::ids::EnvName, (u64, String)> =
        std::collections::HashMap::new();
    let unfiltered = args.env.is_none() && types.is_empty();
    loop {
        let request = pb::WatchLogRequest {
            from: next,
            env: args
                .env
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            types: types.clone(),
        };
        let stream = client.watch_log(request).await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if crate::client::retryable(&status) && failures < 60 => {
                failures += 1;
                eprintln!("watch: {} (reconnecting from {next})", status.message());
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        loop {
            let event = match stream.message().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(status) if crate::client::retryable(&status) => {
                    eprintln!("watch: {} (reconnecting from {next})", status.message());
                    break;
                }
                Err(status) => return Err(status.into()),
            };
            failures = 0;
            if anchor.as_ref().is_none_or(|a| a.note != event.checkpoint) {
                anchor = Some(reader.anchor(&mut client, &event.checkpoint).await?);
            }
            let Some(cp) = anchor.as_ref() else {
                continue;
            };
            if event.next > cp.checkpoint.size {
                return Err(Failure::verify(format!(
                    "the watch's cursor {} runs past its checkpoint of size {}",
                    event.next, cp.checkpoint.size
                )));
            }
            // Unfiltered, every entry is sent: the cursor moves one entry
            // at a time, never by a heartbeat.
            if unfiltered {
                let want = if event.entry.is_empty() {
                    next
                } else {
                    event.index.saturating_add(1)
                };
                if event.next != want {
                    return Err(Failure::verify(format!(
                        "the watch's cursor jumped to {} (expected {want}): entries were skipped",
                        event.next
                    )));
                }
            }
            if !event.entry.is_empty() {
                if event.index < next {
                    return Err(Failure::verify(format!(
                        "the registry sent entry {} again (the cursor is at {next})",
                        event.index
                    )));
                }
                if unfiltered && event.index != next {
                    return Err(Failure::verify(format!(
                        "the registry skipped log entries {next} to {} of an unfiltered watch",
                        event.index - 1
                    )));
                }
                let proved = cp.entry(
                    &pb::ProvedEntry {
                        index: event.index,
                        entry: event.entry.clone(),
                        proof: event.proof.clone(),
                    },
                    "watched entry",
                )?;
                if let Entry::Pin(p) = &proved.entry {
                    if let Some((seq, leaf)) = last_pins.get(&p.env)
                        && (p.seq != seq + 1 || p.prev_pin.as_deref() != Some(leaf.as_str()))
                    {
                        return Err(Failure::verify(format!(
                            "pin #{} of {} does not follow pin #{seq} shown before: the registry \
                             skipped a pin",
                            p.seq, p.env
                        )));
                    }
                    last_pins.insert(p.env.clone(), (p.seq, proved.leaf.hex()));
                }
                show(&proved.entry, event.index, cp.checkpoint.size, format)?;
                if let Some(cmd) = &args.exec {
                    exec(cmd, &proved.entry, event.index).await;
                }
                shown += 1;
            }
            next = next.max(event.next);
            if args.count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
        }
        tokio::time::sleep(backoff(1)).await;
    }
}

fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis(200 * u64::from(failures.min(25)))
}

fn show(entry: &Entry, index: u64, size: u64, format: Format) -> Outcome {
    let shown = Shown {
        log_index: index,
        kind: entry.kind(),
        checkpoint_size: size,
        entry: serde_json::to_value(entry).map_err(|e| Failure::new(crate::exit::FAILURE, e))?,
    };
    let line = match (format, entry) {
        (Format::Json, _) => serde_json::to_string(&shown).unwrap_or_default(),
        (_, Entry::Pin(p)) => format!(
            "{}  #{} {} {} live from {} by {}{} (log index {index}, verified)",
            p.env,
            p.seq,
            p.release_id,
            p.digest,
            p.activated_at,
            p.actor,
            p.db_position
                .as_ref()
                .map(|d| format!(", db {d}"))
                .unwrap_or_default()
        ),
        (_, Entry::Publish(p)) => format!(
            "publish {} {} ({} bytes, key {}) (log index {index}, verified)",
            p.release_id, p.digest, p.size, p.key_id
        ),
        (_, Entry::Key(k)) => format!(
            "key {:?} {} at {} by {} (log index {index}, verified)",
            k.action, k.key_id, k.at, k.actor
        ),
        (_, Entry::Snapshot(s)) => format!(
            "{} (log index {index}, verified)",
            super::evidence::snapshot_line(s)
        ),
        (_, Entry::Drill(d)) => format!(
            "{} (log index {index}, verified)",
            super::evidence::drill_line(d)
        ),
        (_, Entry::Promotion(p)) => format!(
            "promotion: epoch {} began here, on a standby, at {} by {} (log index {index}, \
             verified)",
            p.epoch,
            p.promoted_at,
            stackpin_core::error::shown(&p.actor)
        ),
    };
    println!("{line}");
    Ok(())
}

async fn exec(cmd: &str, entry: &Entry, index: u64) {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("STACKPIN_ENTRY_TYPE", entry.kind())
        .env("STACKPIN_LOG_INDEX", index.to_string());
    let live = match entry {
        Entry::Pin(p) => {
            command.env("STACKPIN_ACTIVATED_AT", p.activated_at.to_string());
            Some((&p.env, p.seq, &p.release_id, &p.digest))
        }
        Entry::Snapshot(s) => {
            command.env("STACKPIN_DB_TIME", s.db_time.to_string());
            Some((&s.env, s.live.seq, &s.live.release_id, &s.live.digest))
        }
        Entry::Drill(d) => {
            command.env("STACKPIN_DRILL_PASSED", d.passed.to_string());
            Some((&d.env, d.live.seq, &d.live.release_id, &d.live.digest))
        }
        Entry::Publish(_) | Entry::Key(_) | Entry::Promotion(_) => None,
    };
    if let Some((env, seq, release_id, digest)) = live {
        command
            .env("STACKPIN_ENV", env.to_string())
            .env("STACKPIN_RELEASE_ID", release_id.to_string())
            .env("STACKPIN_DIGEST", digest.to_string())
            .env("STACKPIN_SEQ", seq.to_string());
    }
    match command.status().await {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("watch: --exec for log index {index} failed ({s}); going on"),
        Err(e) => eprintln!("watch: --exec for log index {index} could not start: {e}; going on"),
    }
}
