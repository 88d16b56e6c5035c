//! `stackpin rollback`: puts back the release that was live before the
//! current one, as one command during an incident.
//!
//! The target is found in the environment's history as proved (each page
//! in a signed checkpoint, each pin following the next, the newest one
//! proved still live), never in what the registry says about it. What
//! changes is shown from the artifacts' own bytes, checked against the
//! digests the proved pins name, with the structural diff the web view
//! computes. The rollback is then an ordinary pin whose reason says what
//! it rolls back; the database is not touched, and the command says so.
//!
//! A retried rollback (the same `--request-id`) finds the pin the first
//! attempt recorded and reports it, instead of rolling back once more.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use serde::Serialize;
use stackpin_core::diff::{self, Change};
use stackpin_core::digest::Digest;
use stackpin_core::ids::{EnvName, Reason, ReleaseId};
use stackpin_proto::v1 as pb;

use crate::cmd::history::{Query, follows, page};
use crate::cmd::pins::{ArtifactArg, PositionArgs, Record, record};
use crate::exit::{Failure, NOT_FOUND, Outcome};
use crate::reader::{HOW_TO_TRUST, Proved, Reader};
use crate::view::{Format, PinView};

/// Pins read per page while looking for the target.
const PAGE: u32 = 100;
/// Changes counted at most (beyond: "and more").
const COUNTED_CHANGES: usize = 10_000;
/// Changes the summary lists by path.
const SHOWN_CHANGES: usize = 20;

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The environment to roll back.
    #[arg(long, value_parser = crate::parse::<EnvName>)]
    env: EnvName,
    /// Roll back to this release, which must have been live in the
    /// environment before [default: the newest earlier pin of another
    /// release than the live one].
    #[arg(long, value_parser = crate::parse::<ReleaseId>, conflicts_with = "steps")]
    to: Option<ReleaseId>,
    /// Roll back to the pin this many pins before the live one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    steps: Option<u64>,
    /// Why, recorded after "rollback of <live> to <target>".
    #[arg(long, default_value = "")]
    reason: String,
    /// Roll back without asking (scripts; required when standard input
    /// is not a terminal).
    #[arg(long)]
    yes: bool,
    /// Show what would change and record nothing.
    #[arg(long, conflicts_with = "yes")]
    dry_run: bool,
    /// The database position now, recorded with the rollback pin.
    #[command(flatten)]
    position: PositionArgs,
    #[command(flatten)]
    log_key: crate::trust::LogKey,
}

/// The release rolled back to, and when it was live before.
#[derive(Serialize)]
struct TargetView {
    release_id: String,
    digest: String,
    /// The pin that made it live before.
    seq: u64,
    live_from: String,
    live_until: String,
}

/// What changes from the live artifact to the target, by JSON path.
#[derive(Serialize)]
struct ChangesView {
    changed: usize,
    added: usize,
    removed: usize,
    /// More changes than were counted.
    more: bool,
    /// The first changes, by path.
    paths: Vec<String>,
}

#[derive(Serialize)]
struct DatabaseView {
    /// Always false: a rollback moves the artifact pointer only.
    rolled_back: bool,
    /// The position recorded when the live release went live.
    #[serde(skip_serializing_if = "Option::is_none")]
    at_live_release: Option<String>,
    /// The position recorded with the rollback pin (`--db-lsn`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded: Option<String>,
}

#[derive(Serialize)]
struct RollbackView {
    env: String,
    /// The pin live before the rollback.
    from: PinView,
    to: TargetView,
    changes: ChangesView,
    database: DatabaseView,
    /// The rollback pin; absent with --dry-run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pin: Option<PinView>,
    /// The pin was recorded by an earlier attempt with this request id.
    replayed: bool,
}

pub async fn rollback(
    args: &RollbackArgs,
    server: &crate::client::Connection,
    state: Option<&std::path::Path>,
    format: Format,
) -> Outcome {
    let extra = args
        .reason
        .parse::<Reason>()
        .map_err(|e| Failure::invalid(format!("--reason: {e}")))?;
    let reader = Reader::new(&args.log_key, server, state, None)?;
    if !reader.verifies() {
        return Err(Failure::verify(format!(
            "a rollback reads the environment's history as proved, so it needs the log's key: \
             {HOW_TO_TRUST}"
        )));
    }
    let mut client = crate::client::connect(server).await?;
    if let Some(done) = recorded_before(&reader, server, &mut client, &args.env).await? {
        return show_recorded(&done, format);
    }
    let pins = history_until(&reader, &mut client, args).await?;
    let (live, target_at) = choose(args, &pins)?;
    let target = &pins[target_at];
    let target_pin = target.pin("pin")?;
    let live_pin = live.pin("pin")?;
    let successor = pins[target_at - 1].pin("pin")?;
    let changes = changes(
        &mut client,
        &live_pin.digest,
        &target_pin.digest,
        server.max_download,
    )
    .await?;
    let reason = rollback_reason(&live_pin.release_id, target_pin, &extra)?;
    let mut view = RollbackView {
        env: args.env.to_string(),
        from: PinView::proved(live, "pin")?,
        to: TargetView {
            release_id: target_pin.release_id.to_string(),
            digest: target_pin.digest.to_string(),
            seq: target_pin.seq,
            live_from: target_pin.activated_at.to_string(),
            live_until: successor.activated_at.to_string(),
        },
        changes,
        database: DatabaseView {
            rolled_back: false,
            at_live_release: live_pin.db_position.as_ref().map(ToString::to_string),
            recorded: args.position.position().map(ToString::to_string),
        },
        pin: None,
        replayed: false,
    };
    if args.dry_run {
        format.emit(&view, || plan_text(&view) + "dry run: nothing recorded");
        return Ok(());
    }
    if !args.yes {
        eprintln!("{}", plan_text(&view));
        confirm(&args.env, &view)?;
    }
    let artifact = ArtifactArg {
        release_id: None,
        digest: Some(target_pin.digest),
    };
    let (proved, replayed) = record(
        &reader,
        server,
        &mut client,
        &Record {
            command: "rollback",
            new_env: false,
            // The release goes back with the runtime it ran with.
            runtime_image: target_pin.runtime_image.as_ref(),
            env: &args.env,
            artifact: &artifact,
            activated_at: None,
            reason: &reason,
            position: args.position.position(),
        },
    )
    .await?;
    view.pin = Some(PinView::proved(&proved, "rollback pin")?);
    view.replayed = replayed;
    format.emit(&view, || {
        let mut out = if args.yes {
            plan_text(&view)
        } else {
            String::new()
        };
        if let Some(p) = &view.pin {
            out.push_str(&format!(
                "rolled back {} to {} as pin #{} from {} (log index {})\n",
                view.env, p.release_id, p.seq, p.activated_at, p.log_index
            ));
        }
        out
    });
    Ok(())
}

/// The rollback pin an earlier attempt with this run's `--request-id`
/// recorded, proved; `None` when there is none (or no id was given).
async fn recorded_before(
    reader: &Reader,
    server: &crate::client::Connection,
    client: &mut crate::client::Client,
    env: &EnvName,
) -> Outcome<Option<Proved>> {
    if server.request_id.is_none() {
        return Ok(None);
    }
    let id = server.request_id_for("rollback", env.as_str())?;
    let found = page(
        reader,
        client,
        &Query {
            env,
            before: None,
            since: None,
            limit: 1,
            page_token: "",
            request_id: &id,
        },
    )
    .await?;
    Ok(found.pins.into_iter().next())
}

fn show_recorded(done: &Proved, format: Format) -> Outcome {
    let pin = PinView::proved(done, "pin")?;
    #[derive(Serialize)]
    struct Recorded<'a> {
        env: &'a str,
        pin: &'a PinView,
        replayed: bool,
    }
    format.emit(
        &Recorded {
            env: &pin.env,
            pin: &pin,
            replayed: true,
        },
        || {
            format!(
                "already recorded by this request id: pin #{} of {} ({}), from {} ({})",
                pin.seq, pin.env, pin.release_id, pin.activated_at, pin.reason
            )
        },
    );
    Ok(())
}

/// The environment's pins, newest first, proved page by page and each
/// page proved to follow the one before, until the target is among them
/// (or the history ends).
async fn history_until(
    reader: &Reader,
    client: &mut crate::client::Client,
    args: &RollbackArgs,
) -> Outcome<Vec<Proved>> {
    let mut pins: Vec<Proved> = Vec::new();
    let mut token = String::new();
    loop {
        let page = page(
            reader,
            client,
            &Query {
                env: &args.env,
                before: None,
                since: None,
                limit: PAGE,
                page_token: &token,
                request_id: "",
            },
        )
        .await?;
        if let (Some(newer), Some(older)) = (pins.last(), page.pins.first()) {
            let (n, o) = (newer.pin("pins")?, older.pin("pins")?);
            if !follows(n, o, older) {
                return Err(Failure::verify(format!(
                    "the next page of {}'s history starts at pin #{}, which does not come right \
                     before pin #{}: pins were left out",
                    args.env, o.seq, n.seq
                )));
            }
        }
        pins.extend(page.pins);
        if page.next_page_token.is_empty() || found(args, &pins)? {
            return Ok(pins);
        }
        token = page.next_page_token;
    }
}

/// Whether `pins` (newest first) already hold the target.
fn found(args: &RollbackArgs, pins: &[Proved]) -> Outcome<bool> {
    let Some(live) = pins.first() else {
        return Ok(true);
    };
    let live = &live.pin("pins")?.release_id;
    let mut older = pins.iter().skip(1).map(|p| p.pin("pins"));
    Ok(match (&args.to, args.steps) {
        (_, Some(n)) => pins.len() as u64 > n,
        (Some(to), None) => older.any(|p| p.is_ok_and(|p| p.release_id == *to)),
        (None, None) => older.any(|p| p.is_ok_and(|p| p.release_id != *live)),
    })
}

/// The live pin and the index in `pins` of the one to roll back to.
fn choose<'a>(args: &RollbackArgs, pins: &'a [Proved]) -> Outcome<(&'a Proved, usize)> {
    let env = &args.env;
    let Some(live) = pins.first() else {
        return Err(Failure::new(
            NOT_FOUND,
            anyhow::anyhow!("{env} has no pins: there is nothing to roll back"),
        ));
    };
    let current = &live.pin("pins")?.release_id;
    let older = |i: &usize| pins[*i].pin("pins").map(|p| p.release_id.clone());
    let index = match (&args.to, args.steps) {
        (_, Some(n)) => {
            let i = usize::try_from(n).unwrap_or(usize::MAX);
            if i >= pins.len() {
                return Err(Failure::new(
                    NOT_FOUND,
                    anyhow::anyhow!(
                        "{env} has {} pin(s): there is no pin {n} before the live one",
                        pins.len()
                    ),
                ));
            }
            let release = older(&i)?;
            if release == *current {
                return Err(Failure::invalid(format!(
                    "the pin {n} before the live one in {env} is release {release}, which is \
                     the live release: nothing would change"
                )));
            }
            i
        }
        (Some(to), None) => {
            if to == current {
                return Err(Failure::invalid(format!(
                    "release {to} is the live release in {env}: nothing would change"
                )));
            }
            (1..pins.len())
                .find(|i| older(i).is_ok_and(|r| r == *to))
                .ok_or_else(|| {
                    Failure::new(
                        NOT_FOUND,
                        anyhow::anyhow!(
                            "release {to} was never live in {env} (all {} pins read, proved): a \
                             rollback goes back only to a release the environment ran; use \
                             `stackpin pin` to pin another",
                            pins.len()
                        ),
                    )
                })?
        }
        (None, None) => (1..pins.len())
            .find(|i| older(i).is_ok_and(|r| r != *current))
            .ok_or_else(|| {
                Failure::new(
                    NOT_FOUND,
                    anyhow::anyhow!(
                        "nothing to roll back to: {env} has never run another release than \
                         {current} ({} pin(s))",
                        pins.len()
                    ),
                )
            })?,
    };
    Ok((live, index))
}

/// "rollback of R3 to R2 (pin #2)", then the operator's words.
fn rollback_reason(
    live: &ReleaseId,
    target: &stackpin_core::entry::PinEntry,
    extra: &Reason,
) -> Outcome<Reason> {
    let mut text = format!(
        "rollback of {live} to {} (pin #{})",
        target.release_id, target.seq
    );
    if !extra.as_str().is_empty() {
        text.push_str(": ");
        text.push_str(extra.as_str());
    }
    text.parse::<Reason>()
        .map_err(|e| Failure::invalid(format!("--reason: {e}")))
}

/// Downloads both artifacts (each checked against the digest its proved
/// pin names) and summarizes their structural diff.
async fn changes(
    client: &mut crate::client::Client,
    live: &Digest,
    target: &Digest,
    max: u64,
) -> Outcome<ChangesView> {
    let mut parsed = Vec::with_capacity(2);
    for digest in [live, target] {
        let what = pb::ArtifactRef {
            r#ref: Some(pb::artifact_ref::Ref::Digest(digest.to_string())),
        };
        let (record, bytes) = crate::download::download(client, what, max).await?;
        if record.digest != digest.to_string() {
            return Err(Failure::verify(format!(
                "asked for {digest}, the registry sent {}",
                record.digest
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::verify(format!("artifact {digest} is not JSON: {e}")))?;
        parsed.push(value);
    }
    let (changes, more) = diff::diff(&parsed[0], &parsed[1], COUNTED_CHANGES);
    let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
    Ok(ChangesView {
        changed: count(|c| matches!(c, Change::Changed { .. })),
        added: count(|c| matches!(c, Change::Added { .. })),
        removed: count(|c| matches!(c, Change::Removed { .. })),
        more,
        paths: changes.iter().take(SHOWN_CHANGES).map(describe).collect(),
    })
}

fn describe(c: &Change) -> String {
    match c {
        Change::Added { path, .. } => format!("+ {path}"),
        Change::Removed { path, .. } => format!("- {path}"),
        Change::Changed {
            path,
            before,
            after,
        } => format!("~ {path}: {before} → {after}"),
    }
}

fn plan_text(v: &RollbackView) -> String {
    let c = &v.changes;
    let mut out = format!(
        "rollback of {env}\n  live now   {} ({}) since {}, pin #{}\n  back to    {} ({}), \
         live from {} until {} as pin #{}\n  changes    {} changed, {} added, {} removed{}\n",
        v.from.release_id,
        v.from.digest,
        v.from.activated_at,
        v.from.seq,
        v.to.release_id,
        v.to.digest,
        v.to.live_from,
        v.to.live_until,
        v.to.seq,
        c.changed,
        c.added,
        c.removed,
        if c.more { " (and more)" } else { "" },
        env = v.env,
    );
    for p in &c.paths {
        out.push_str(&format!("    {p}\n"));
    }
    let total = c.changed + c.added + c.removed;
    if total > c.paths.len() {
        out.push_str(&format!("    … {} more\n", total - c.paths.len()));
    }
    out.push_str(&format!(
        "  database   NOT rolled back: rows written since {} stay; {}; this pin records {}\n",
        v.from.activated_at,
        v.database.at_live_release.as_deref().map_or_else(
            || "the live release recorded no database position when it went live".to_owned(),
            |p| format!("the live release went live at database position {p}")
        ),
        v.database.recorded.as_deref().map_or_else(
            || "no position (pass --db-lsn, --db-restore-point or --litestream-txid)".to_owned(),
            |p| format!("database position {p}")
        ),
    ));
    out
}

/// Asks on the terminal; refuses when there is none.
fn confirm(env: &EnvName, v: &RollbackView) -> Outcome {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::invalid(
            "a rollback asks for confirmation on a terminal; pass --yes to roll back from a \
             script (or --dry-run to see what would change)",
        ));
    }
    eprint!(
        "roll back {env} from {} to {}? [y/N] ",
        v.from.release_id, v.to.release_id
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::invalid(format!("reading the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure::invalid("not confirmed: nothing recorded"))
    }
}
