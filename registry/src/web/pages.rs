//! The pages of the web view. Each reads the registry through the same
//! calls as the gRPC handlers and renders HTML on the server.
//!
//! Long because each page is its reads and its maud template side by side,
//! and the pages share small helpers (links, instants, positions); split
//! by page, every file would repeat them.

use hyper::StatusCode;
use maud::{DOCTYPE, Markup, html};
use serde_json::json;

use stackpin_core::diff::{self, Change};
use std::sync::Arc;

use super::{Query, Reply, Site, off};
use crate::error::{Error, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::merkle;
use crate::records::{ArtifactRecord, PinRecord};
use crate::registry::{ArtifactRef, HistoryQuery, Registry};
use crate::time::Timestamp;
use crate::timeline::Resolution;
use stackpin_core::digest::Digest;

/// Rows of a table page.
const PAGE: usize = 50;
/// Pins one timeline request returns at most.
const TIMELINE_PAGE: usize = 500;
/// Artifacts larger than this are not served here.
const MAX_WEB_ARTIFACT: u64 = 16 << 20;
/// Artifacts larger than this are not diffed (413): both are parsed whole,
/// and a parsed document takes many times its bytes (see
/// [`diff::parsed_bytes`]).
pub(crate) const MAX_DIFF_ARTIFACT: u64 = 4 << 20;
/// Changes a diff page lists at most.
const MAX_CHANGES: usize = 2000;
/// Pins of one artifact the artifact page lists at most.
const MAX_ARTIFACT_PINS: usize = 5_000;

fn layout(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · stackpin" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                header {
                    nav aria-label="Main" {
                        a.brand href="/" { "stackpin" }
                        a href="/" { "Environments" }
                        a href="/log" { "Log" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
                footer {
                    p { "Read-only. Every answer here is the registry's own; the stackpin CLI \
                        checks the same answers against the signed log (" code { "stackpin resolve" }
                        ", " code { "stackpin audit" } ")." }
                }
            }
        }
    }
}

fn page(title: &str, body: &Markup) -> Reply {
    Reply::html(StatusCode::OK, layout(title, body))
}

/// A page saying what went wrong.
pub fn error(e: &Error) -> Reply {
    let status = crate::http_status::of(e.kind());
    Reply::html(
        status,
        layout(
            if status == StatusCode::NOT_FOUND {
                "Not found"
            } else {
                "Cannot show this"
            },
            &html! { p.error role="alert" { (e.message()) } p { a href="/" { "All environments" } } },
        ),
    )
}

fn env_name(text: &str) -> Result<EnvName> {
    Ok(text.parse::<EnvName>()?)
}

fn digest(text: &str) -> Result<Digest> {
    text.parse::<Digest>()
        .map_err(|e| Error::invalid(format!("{text:?} is not a digest: {e}")))
}

/// An instant as a person types it: RFC 3339, or without an offset (UTC),
/// to the minute or the second.
pub(super) fn instant(text: &str) -> Result<Timestamp> {
    let text = text.trim();
    let tries = [
        text.to_owned(),
        format!("{text}Z"),
        format!("{text}:00Z"),
        format!("{}Z", text.replace(' ', "T")),
        format!("{}:00Z", text.replace(' ', "T")),
    ];
    tries
        .iter()
        .find_map(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{text:?} is not an instant: write it as RFC 3339 (2026-03-01T14:00:00Z), or \
                 2026-03-01T14:00 for UTC"
            ))
        })
}

fn micros_time(micros: i64) -> Result<Timestamp> {
    Timestamp::from_micros(micros).map_err(|e| Error::invalid(e.to_string()))
}

/// "3d 4h", "12m 5s": how long `micros` is, roughly.
fn span(micros: i64) -> String {
    let s = micros.max(0) / 1_000_000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn ago(t: Timestamp) -> String {
    let delta = Timestamp::now().as_micros() - t.as_micros();
    if delta < 0 {
        format!("in {}", span(-delta))
    } else {
        format!("{} ago", span(delta))
    }
}

fn short(d: &Digest) -> String {
    let s = d.to_string();
    s.chars().take(7 + 12).collect::<String>() + "…"
}

fn pin_href(p: &PinRecord) -> String {
    format!("/env/{}/pin/{}", p.entry.env, p.entry.seq)
}

fn artifact_href(d: &Digest) -> String {
    format!("/artifact/{d}")
}

fn diff_href(from: &Digest, to: &Digest) -> String {
    format!("/diff?from={from}&to={to}")
}

fn position(p: &PinRecord) -> String {
    p.entry
        .db_position
        .as_ref()
        .map_or_else(|| "not recorded".to_owned(), ToString::to_string)
}

/// `GET /`: every environment, what is live now.
pub fn overview(registry: &Registry, q: &Query) -> Result<Reply> {
    let after = q.get("after").map(env_name).transpose()?;
    let (pins, next) = registry.environments(after.as_ref(), PAGE)?;
    let cp = registry.checkpoint()?;
    let mut postures = Vec::with_capacity(pins.len());
    for p in &pins {
        postures.push(registry.posture(Some(&p.entry.env), None)?.pop());
    }
    let body = html! {
        p { "The log holds " (cp.size) " entries. " a href="/log" { "The log and its checkpoint" } "." }
        @if pins.is_empty() && after.is_none() {
            p { "No environments yet: the first " code { "stackpin pin" } " creates one." }
        } @else {
            table {
                caption { "Every environment and the artifact live in it now" }
                thead { tr {
                    th scope="col" { "Environment" } th scope="col" { "Live release" }
                    th scope="col" { "Digest" } th scope="col" { "Live since" }
                    th scope="col" { "Pinned by" } th scope="col" { "DB position" }
                    th scope="col" { "Pins" } th scope="col" { "Last pin" }
                    th scope="col" { "Recovery posture" }
                } }
                tbody {
                    @for (p, posture) in pins.iter().zip(&postures) {
                        tr {
                            th scope="row" { a href={ "/env/" (p.entry.env) } { (p.entry.env) } }
                            td { a href=(pin_href(p)) { (p.entry.release_id) } }
                            td { a href=(artifact_href(&p.entry.digest)) title=(p.entry.digest) { code { (short(&p.entry.digest)) } } }
                            td { time datetime=(p.entry.activated_at) { (p.entry.activated_at) } }
                            td { (p.entry.actor) }
                            td { (position(p)) }
                            td.num { (p.entry.seq) }
                            td { (ago(p.entry.recorded_at)) }
                            td { (posture_cell(posture.as_ref())) }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p { a href={ "/?after=" (next) } rel="next" { "More environments" } }
            }
        }
    };
    Ok(page("Environments", &body))
}

/// An environment's recovery posture, as `stackpin posture` judges it:
/// its class and either "in policy" or each target missed.
fn posture_cell(p: Option<&stackpin_core::posture::Posture>) -> Markup {
    let Some(p) = p else {
        return html! {};
    };
    html! {
        @if p.in_policy() {
            (p.targets.class) ": in policy"
        } @else {
            strong { (p.targets.class) ": out of policy" }
            ul { @for f in &p.findings { li { (f.message) } } }
        }
    }
}

/// `GET /env/<E>`: the timeline, the question, and the pins as a table.
pub fn environment(registry: &Registry, env: &str, q: &Query) -> Result<Reply> {
    let env = env_name(env)?;
    let newest = registry.history(
        &env,
        &HistoryQuery {
            limit: 1,
            ..HistoryQuery::default()
        },
    )?;
    let live = newest.pins.first().ok_or_else(|| {
        let near = registry.near_envs(&env).unwrap_or_default();
        Error::not_found(format!("environment {env} has no pins{near}"))
    })?;
    let first = registry.history(
        &env,
        &HistoryQuery {
            limit: 1,
            from_seq: Some(1),
            ..HistoryQuery::default()
        },
    )?;
    let first_at = first
        .pins
        .first()
        .map_or(live.entry.activated_at, |p| p.entry.activated_at);
    let from_seq = q
        .number("from_seq")?
        .map(|n| u64::try_from(n).map_err(|_| Error::invalid("from_seq: must be positive")))
        .transpose()?;
    let table = registry.history(
        &env,
        &HistoryQuery {
            limit: PAGE + 1,
            from_seq,
            ..HistoryQuery::default()
        },
    )?;
    let now = Timestamp::now();
    let body = html! {
        p.lead {
            "Live now: " a href=(pin_href(live)) { strong { (live.entry.release_id) } }
            " (pin #" (live.entry.seq) ", since " time datetime=(live.entry.activated_at) { (live.entry.activated_at) }
            ", " (ago(live.entry.activated_at)) ")."
        }
        (ask_form(&env, None))
        section aria-labelledby="timeline-h" {
            h2 #timeline-h { "Timeline" }
            p #timeline-help {
                "Each band is the interval a release was live. Click (or press Enter on the \
                 marker) to ask what was live at that instant. Keys: ← and → move the marker, \
                 + and − zoom, Page Up and Page Down scroll, Home shows the whole history."
            }
            div.controls #timeline-controls hidden {
                button type="button" data-action="in" { "Zoom in" }
                button type="button" data-action="out" { "Zoom out" }
                button type="button" data-action="earlier" { "Earlier" }
                button type="button" data-action="later" { "Later" }
                button type="button" data-action="all" { "Whole history" }
            }
            div #timeline tabindex="0" role="group" aria-roledescription="timeline"
                aria-label={ "Pins of " (env) " over time" } aria-describedby="timeline-help"
                data-env=(env) data-first=(first_at.as_micros()) data-now=(now.as_micros()) {
                noscript { p { "The zoomable timeline needs JavaScript. The table below lists the \
                    same pins, and the form above answers for any instant." } }
            }
            div #answer role="status" aria-live="polite" {}
        }
        section aria-labelledby="pins-h" {
            h2 #pins-h { "Pins, newest first" }
            (pins_table(&table.pins[..table.pins.len().min(PAGE)], table.pins.get(PAGE)))
            @if table.pins.len() > PAGE {
                p { a rel="next" href={ "/env/" (env) "?from_seq=" (table.pins[PAGE].entry.seq) } { "Older pins" } }
            }
        }
        script src="/assets/timeline.js" {}
    };
    Ok(page(&format!("Environment {env}"), &body))
}

fn ask_form(env: &EnvName, value: Option<&str>) -> Markup {
    html! {
        form.ask method="get" action={ "/env/" (env) "/at" } {
            label for="t" { "What was live in " (env) " at (UTC, RFC 3339)" }
            input #t type="text" name="t" required placeholder="2026-03-01T14:00:00Z"
                value=[value] autocomplete="off";
            button type="submit" { "Ask" }
        }
    }
}

/// `pins` newest first; `older` is the pin just before the last one, when
/// there is one, so the last row can link its diff.
fn pins_table(pins: &[PinRecord], older: Option<&PinRecord>) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Release" } th scope="col" { "Live from" }
                th scope="col" { "Live until" } th scope="col" { "By" } th scope="col" { "Reason" }
                th scope="col" { "DB position" } th scope="col" { "Change" }
            } }
            tbody {
                @for (i, p) in pins.iter().enumerate() {
                    @let until = i.checked_sub(1).map(|j| pins[j].entry.activated_at);
                    @let prev = pins.get(i + 1).or(if i + 1 == pins.len() { older } else { None });
                    tr {
                        td.num { a href=(pin_href(p)) { (p.entry.seq) } }
                        td { a href=(artifact_href(&p.entry.digest)) { (p.entry.release_id) } }
                        td { time datetime=(p.entry.activated_at) { (p.entry.activated_at) } }
                        td { @match until { Some(u) => time datetime=(u) { (u) }, None => "still live" } }
                        td { (p.entry.actor) }
                        td { (p.entry.reason) }
                        td { (position(p)) }
                        td { @if let Some(prev) = prev.filter(|pp| pp.entry.seq + 1 == p.entry.seq) {
                            a href=(diff_href(&prev.entry.digest, &p.entry.digest)) {
                                "diff from " (prev.entry.release_id) }
                        } @else if p.entry.seq == 1 { "first pin" } }
                    }
                }
            }
        }
    }
}

/// The answer for an instant, as `stackpin resolve` gives it.
fn answer(env: &EnvName, at: Timestamp, r: &Resolution) -> Markup {
    let p = &r.pin;
    html! {
        div.answer data-release=(p.entry.release_id) data-at=(at) {
            p {
                "At " time datetime=(at) { (at) } ", " strong { (p.entry.release_id) }
                " was live in " (env) ": " a href=(pin_href(p)) { "pin #" (p.entry.seq) }
                ", live from " (p.entry.activated_at) " "
                @match &r.next { Some(n) => { "until " (n.entry.activated_at) }, None => "and still live" }
                "."
            }
            p { "Digest " a href=(artifact_href(&p.entry.digest)) { code { (p.entry.digest) } }
                "; DB position at activation: " (position(p)) "; log index " (p.log_index) "."
                @if let Some(i) = &p.entry.runtime_image { " Runtime image: " code { (i) } "." } }
            @if let Some(b) = &r.near_switch {
                @let offset = b.offset_micros.unsigned_abs();
                p.warning role="note" {
                    strong { "Near a switch: " }
                    (at) " is " (format!("{:.6}", offset as f64 / 1e6)) "s "
                    (if b.offset_micros < 0 { "before" } else { "after" })
                    " the switch from " (b.before.entry.release_id) " (#" (b.before.entry.seq) ") to "
                    (b.after.entry.release_id) " (#" (b.after.entry.seq) ") at " (b.after.entry.activated_at)
                    ". The database and registry clocks may disagree this close to a switch: both are \
                     candidates, so check which of the two the database matches. "
                    a href=(diff_href(&b.before.entry.digest, &b.after.entry.digest)) { "What changed at this switch" }
                }
            }
            @if let Some(n) = &r.next {
                p { a href=(diff_href(&p.entry.digest, &n.entry.digest)) {
                    "What changed at the next switch (" (p.entry.release_id) " → " (n.entry.release_id) ", " (n.entry.activated_at) ")" } }
            }
            p.cli { "The same question on the command line: "
                code { "stackpin resolve --env " (env) " --at " (at) } }
        }
    }
}

/// `GET /env/<E>/at?t=T`.
pub fn at(registry: &Registry, env: &str, q: &Query) -> Result<Reply> {
    let env = env_name(env)?;
    let text = q
        .get("t")
        .ok_or_else(|| Error::invalid("t: which instant? (for example 2026-03-01T14:00:00Z)"))?;
    let t = instant(text)?;
    let body = match registry.resolve(&env, t, None) {
        Ok(r) => html! { (answer(&env, t, &r)) (ask_form(&env, Some(text))) },
        Err(e) if e.kind() == crate::error::Kind::NotFound => html! {
            p.error role="alert" { (e.message()) }
            (ask_form(&env, Some(text)))
        },
        Err(e) => return Err(e),
    };
    let body = html! { (body) p { a href={ "/env/" (env) } { "The timeline of " (env) } } };
    Ok(page(&format!("{env} at {t}"), &body))
}

/// `GET /env/<E>/at.json?t=MICROS`: the answer's HTML, for the timeline.
pub fn at_json(registry: &Registry, env: &str, q: &Query) -> Result<Reply> {
    let env = env_name(env)?;
    let t = match q.number("t")? {
        Some(m) => micros_time(m)?,
        None => return Err(Error::invalid("t: the instant, in microseconds")),
    };
    let value = match registry.resolve(&env, t, None) {
        Ok(r) => json!({
            "at": t.to_string(),
            "release_id": r.pin.entry.release_id.to_string(),
            "near_switch": r.near_switch.is_some(),
            "html": answer(&env, t, &r).into_string(),
        }),
        Err(e) if e.kind() == crate::error::Kind::NotFound => json!({
            "at": t.to_string(),
            "html": html! { p { (e.message()) } }.into_string(),
        }),
        Err(e) => return Err(e),
    };
    Ok(Reply::json(&value))
}

/// `GET /env/<E>/pins.json?since=MICROS&before=MICROS[&from_seq=N]`: the
/// pins activated in the window (newest first, a page at a time) and the
/// one live at its start.
pub fn pins_json(registry: &Registry, env: &str, q: &Query) -> Result<Reply> {
    let env = env_name(env)?;
    let since = q.number("since")?.map(micros_time).transpose()?;
    let before = q.number("before")?.map(micros_time).transpose()?;
    let from_seq = q
        .number("from_seq")?
        .map(|n| u64::try_from(n).map_err(|_| Error::invalid("from_seq: must be positive")))
        .transpose()?;
    let page = registry.history(
        &env,
        &HistoryQuery {
            since,
            before,
            limit: TIMELINE_PAGE,
            from_seq,
            ..HistoryQuery::default()
        },
    )?;
    let live_at_start = match (since, from_seq) {
        (Some(s), None) => match registry.resolve(&env, s, Some(std::time::Duration::ZERO)) {
            Ok(r) => Some(pin_json(&r.pin)),
            Err(e) if e.kind() == crate::error::Kind::NotFound => None,
            Err(e) => return Err(e),
        },
        _ => None,
    };
    Ok(Reply::json(&json!({
        "pins": page.pins.iter().map(pin_json).collect::<Vec<_>>(),
        "next_from_seq": page.next,
        "live_at_start": live_at_start,
    })))
}

fn pin_json(p: &PinRecord) -> serde_json::Value {
    json!({
        "seq": p.entry.seq,
        "release_id": p.entry.release_id.to_string(),
        "digest": p.entry.digest.to_string(),
        "from": p.entry.activated_at.as_micros(),
        "from_text": p.entry.activated_at.to_string(),
    })
}

/// One pin of `env` by its sequence number, with its neighbours.
fn pin_and_neighbours(
    registry: &Registry,
    env: &EnvName,
    seq: u64,
) -> Result<(PinRecord, Option<PinRecord>, Option<PinRecord>)> {
    let page = registry.history(
        env,
        &HistoryQuery {
            limit: 2,
            from_seq: Some(seq),
            ..HistoryQuery::default()
        },
    )?;
    let mut pins = page.pins.into_iter();
    let pin = pins
        .next()
        .filter(|p| p.entry.seq == seq)
        .ok_or_else(|| Error::not_found(format!("{env} has no pin #{seq}")))?;
    let prev = pins.next();
    let next = registry
        .history(
            env,
            &HistoryQuery {
                limit: 1,
                from_seq: Some(seq + 1),
                ..HistoryQuery::default()
            },
        )?
        .pins
        .into_iter()
        .next()
        .filter(|p| p.entry.seq == seq + 1);
    Ok((pin, prev, next))
}

/// What the registry can say of an entry's proof: its inclusion in the
/// newest signed checkpoint, checked here.
async fn proof_status(registry: &Registry, index: u64) -> Result<Markup> {
    let cp = registry.checkpoint()?;
    let bytes = registry.entry(index).await?;
    let proof = registry.inclusion_proof(index, cp.size)?;
    let checked =
        merkle::verify_inclusion(&merkle::leaf_hash(&bytes), index, cp.size, &proof, &cp.root);
    let cosigs = stackpin_core::note::split(&cp.note)
        .map(|(_, sigs)| sigs.len().saturating_sub(1))
        .unwrap_or(0);
    Ok(html! {
        @match checked {
            Ok(()) => p.ok { "Included: log index " (index) " is in the signed checkpoint of size "
                (cp.size) " (root " code { (cp.root) } "), by an inclusion proof of " (proof.len())
                " hashes checked here; " (cosigs) " witness cosignature(s) on that checkpoint. "
                code { "stackpin restore" } " and " code { "stackpin verify" } " check it again on your side." },
            Err(e) => p.error role="alert" { "The inclusion proof of log index " (index)
                " does not check against the checkpoint: " (e.to_string()) },
        }
    })
}

/// `GET /env/<E>/pin/<seq>`.
pub async fn pin(registry: &Arc<Registry>, env: &str, seq: &str) -> Result<Reply> {
    let env = env_name(env)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| Error::invalid(format!("{seq:?} is not a pin number")))?;
    let e = env.clone();
    let (p, prev, next, key) = off(registry, move |r| {
        let (p, prev, next) = pin_and_neighbours(r, &e, seq)?;
        let key = r
            .artifact(&ArtifactRef::Digest(p.entry.digest))
            .map(|a| a.key_id.to_string())
            .unwrap_or_default();
        Ok((p, prev, next, key))
    })
    .await?;
    let proof = proof_status(registry, p.log_index).await?;
    let body = html! {
        dl {
            dt { "Environment" } dd { a href={ "/env/" (env) } { (env) } }
            dt { "Release" } dd { (p.entry.release_id) }
            dt { "Digest" } dd { a href=(artifact_href(&p.entry.digest)) { code { (p.entry.digest) } } }
            dt { "Signed by publisher key" } dd { code { (key) } }
            dt { "Live from" } dd { time datetime=(p.entry.activated_at) { (p.entry.activated_at) } }
            dt { "Live until" } dd { @match &next {
                Some(n) => { time datetime=(n.entry.activated_at) { (n.entry.activated_at) } " (" a href=(pin_href(n)) { "#" (n.entry.seq) " " (n.entry.release_id) } ")" },
                None => "still live",
            } }
            dt { "DB position at activation" } dd { (position(&p)) }
            dt { "Runtime image" } dd { @match &p.entry.runtime_image {
                Some(i) => code { (i) },
                None => "not recorded",
            } }
            dt { "Pinned by" } dd { (p.entry.actor) }
            dt { "Reason" } dd { (p.entry.reason) }
            dt { "Recorded at" } dd { (p.entry.recorded_at) }
            dt { "Log index" } dd { (p.log_index) }
            dt { "Entry hash" } dd { code { (p.entry_hash) } }
        }
        h2 { "Proof" }
        (proof)
        h2 { "Changes" }
        ul {
            @if let Some(prev) = &prev {
                li { a href=(diff_href(&prev.entry.digest, &p.entry.digest)) {
                    "What changed at this switch (" (prev.entry.release_id) " → " (p.entry.release_id) ")" } }
            } @else { li { "The first pin of " (env) "." } }
            @if let Some(n) = &next {
                li { a href=(diff_href(&p.entry.digest, &n.entry.digest)) {
                    "What changed at the next switch (" (p.entry.release_id) " → " (n.entry.release_id) ")" } }
            }
        }
    };
    Ok(page(
        &format!("{env} pin #{seq}: {}", p.entry.release_id),
        &body,
    ))
}

fn artifact_record(registry: &Registry, text: &str) -> Result<ArtifactRecord> {
    let what = if text.starts_with("sha256:") {
        ArtifactRef::Digest(digest(text)?)
    } else {
        ArtifactRef::Release(text.parse::<ReleaseId>().map_err(Error::from)?)
    };
    registry.artifact(&what)
}

/// `GET /artifact/<digest>`.
pub fn artifact(registry: &Registry, text: &str) -> Result<Reply> {
    let a = artifact_record(registry, text)?;
    let key = registry.keys()?.into_iter().find(|k| k.key_id == a.key_id);
    let (live, truncated) = registry.pins_of_artifact(&a.digest, MAX_ARTIFACT_PINS)?;
    let body = html! {
        dl {
            dt { "Release" } dd { (a.release_id) }
            dt { "Digest" } dd { code { (a.digest) } }
            dt { "Size" } dd { (a.size) " bytes (" (a.media_type) ")" }
            dt { "Signed by publisher key" } dd { code { (a.key_id) }
                @if let Some(k) = &key { @if let Some(r) = k.revoked_at { " (revoked at " (r) ")" } @else { " (trusted)" } } }
            dt { "Published at" } dd { (a.recorded_at) }
            dt { "Log index of the publish" } dd { (a.log_index) }
        }
        p { a href={ (artifact_href(&a.digest)) "/json" } download={ (a.release_id) ".json" } { "The artifact (objectstack.json)" } }
        h2 { "Where and when it was live" }
        @if live.is_empty() {
            p { "Never pinned." }
        } @else {
            table {
                thead { tr { th scope="col" { "Environment" } th scope="col" { "Pin" } th scope="col" { "Live from" }
                    th scope="col" { "Live until" } th scope="col" { "DB position" } th scope="col" { "Log index" } } }
                tbody { @for (p, until) in &live { tr {
                    td { a href={ "/env/" (p.entry.env) } { (p.entry.env) } }
                    td { a href=(pin_href(p)) { "#" (p.entry.seq) } }
                    td { (p.entry.activated_at) }
                    td { @match until { Some(u) => (u), None => "still live" } }
                    td { (position(p)) }
                    td.num { (p.log_index) }
                } } }
            }
            @if truncated { p.warning { "Only " (MAX_ARTIFACT_PINS) " of its pins are listed." } }
        }
    };
    Ok(page(&format!("Artifact {}", a.release_id), &body))
}

/// The bytes of `a`, counted in the byte budget until they are dropped
/// (the answer sent, or its connection cut).
async fn artifact_bytes(
    registry: &Registry,
    site: &Site,
    a: &ArtifactRecord,
) -> Result<bytes::Bytes> {
    use futures::TryStreamExt as _;
    if a.size > MAX_WEB_ARTIFACT {
        return Err(Error::new(
            crate::error::Kind::TooLarge,
            format!(
                "{} is {} bytes, more than the web view shows ({MAX_WEB_ARTIFACT}); use \
                 `stackpin fetch --release-id {} --out FILE`",
                a.release_id, a.size, a.release_id
            ),
        ));
    }
    let room = (
        site.share.reserve(a.size, "a web view answer").await?,
        registry
            .budget()
            .reserve(a.size, "a web view answer")
            .await?,
    );
    let mut bytes = Vec::with_capacity(usize::try_from(a.size).unwrap_or(0));
    let mut stream = registry.artifact_stream(a, 1 << 20).await?;
    while let Some(chunk) = stream.try_next().await? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(crate::budget::held(bytes, room))
}

/// `GET /artifact/<digest>/json`.
pub async fn artifact_json(registry: &Arc<Registry>, site: &Site, text: &str) -> Result<Reply> {
    let text = text.to_owned();
    let a = off(registry, move |r| artifact_record(r, &text)).await?;
    let bytes = artifact_bytes(registry, site, &a).await?;
    let mut r = Reply::json(&serde_json::Value::Null);
    r.body = bytes;
    r.cache = "private, max-age=31536000, immutable";
    Ok(r)
}

fn value_text(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 300 {
        s.chars().take(300).collect::<String>() + "…"
    } else {
        s
    }
}

/// `GET /diff?from=D&to=D` (digests or release ids).
pub async fn diff(registry: &Arc<Registry>, site: &Site, q: &Query) -> Result<Reply> {
    let (Some(from), Some(to)) = (q.get("from"), q.get("to")) else {
        return Err(Error::invalid(
            "from and to: the two artifacts to compare, by digest or release id",
        ));
    };
    let (from, to) = (from.to_owned(), to.to_owned());
    let (a, b) = off(registry, move |r| {
        Ok((artifact_record(r, &from)?, artifact_record(r, &to)?))
    })
    .await?;
    for x in [&a, &b] {
        if x.size > MAX_DIFF_ARTIFACT {
            return Err(Error::new(
                crate::error::Kind::TooLarge,
                format!(
                    "{} is {} bytes, more than the web view diffs ({MAX_DIFF_ARTIFACT}); fetch \
                     both with `stackpin fetch` and compare them locally",
                    x.release_id, x.size
                ),
            ));
        }
    }
    let (bytes_a, bytes_b) = (
        artifact_bytes(registry, site, &a).await?,
        artifact_bytes(registry, site, &b).await?,
    );
    // The parsed documents are held while the diff runs: counted in the
    // budget, from what their bytes say they will take.
    let need = diff::parsed_bytes(&bytes_a) + diff::parsed_bytes(&bytes_b);
    let share = site.share.total();
    if need > share {
        return Err(Error::new(
            crate::error::Kind::TooLarge,
            format!(
                "comparing {} and {} would take about {} MiB once parsed, more than the web \
                 view's share of the byte budget ({} MiB, a quarter of max_inflight_bytes); \
                 fetch both with `stackpin fetch` and compare them locally",
                a.release_id,
                b.release_id,
                need >> 20,
                share >> 20
            ),
        ));
    }
    let room = (
        site.share.reserve(need, "a diff").await?,
        registry.budget().reserve(need, "a diff").await?,
    );
    let (ra, rb) = (a.release_id.clone(), b.release_id.clone());
    let (changes, more) = crate::blocking::on_diff_thread(move || {
        let _room = room;
        let parse = |bytes: &[u8], release: &ReleaseId| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .map_err(|e| Error::internal(format!("{release} does not parse as JSON: {e}")))
        };
        let va = parse(&bytes_a, &ra)?;
        let vb = parse(&bytes_b, &rb)?;
        drop((bytes_a, bytes_b));
        Ok(diff::diff(&va, &vb, MAX_CHANGES))
    })
    .await?;
    let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
    let body = html! {
        p { "From " a href=(artifact_href(&a.digest)) { (a.release_id) } " (" code { (short(&a.digest)) } ") to "
            a href=(artifact_href(&b.digest)) { (b.release_id) } " (" code { (short(&b.digest)) } ")." }
        @if changes.is_empty() {
            p.ok { "No differences: the two documents are the same JSON." }
        } @else {
            p #diff-summary {
                (changes.len()) @if more { "+" } " change(s): "
                (count(|c| matches!(c, Change::Changed { .. }))) " changed, "
                (count(|c| matches!(c, Change::Added { .. }))) " added, "
                (count(|c| matches!(c, Change::Removed { .. }))) " removed."
            }
            table.diff {
                caption { "Changes by path" }
                thead { tr { th scope="col" { "Path" } th scope="col" { "Change" }
                    th scope="col" { "Before (" (a.release_id) ")" } th scope="col" { "After (" (b.release_id) ")" } } }
                tbody { @for c in &changes { tr {
                    @match c {
                        Change::Changed { path, before, after } => {
                            th scope="row" { code { (path) } } td { "changed" }
                            td.before { code { (value_text(before)) } } td.after { code { (value_text(after)) } }
                        }
                        Change::Added { path, after } => {
                            th scope="row" { code { (path) } } td { "added" }
                            td { } td.after { code { (value_text(after)) } }
                        }
                        Change::Removed { path, before } => {
                            th scope="row" { code { (path) } } td { "removed" }
                            td.before { code { (value_text(before)) } } td { }
                        }
                    }
                } } }
            }
            @if more { p.warning { "Only the first " (MAX_CHANGES) " changes are listed." } }
        }
    };
    Ok(page(
        &format!("What changed from {} to {}", a.release_id, b.release_id),
        &body,
    ))
}

/// `GET /log`: its size, the checkpoint, its signatures and their age.
pub fn log(registry: &Registry, site: &Site) -> Result<Reply> {
    let cp = registry.checkpoint()?;
    let log_key = stackpin_core::note::NoteVerifier::parse(&registry.log_vkey())?;
    let (_, sigs) = stackpin_core::note::split(&cp.note)?;
    let witnesses = registry.witness_status();
    let (sending, hooks) = site.webhooks.snapshot();
    let body = html! {
        dl {
            dt { "Entries" } dd { (cp.size) }
            dt { "Root hash" } dd { code { (cp.root) } }
            dt { "Origin" } dd { code { (log_key.name()) } }
            dt { "Log key (vkey)" } dd { code { (log_key.vkey()) } }
        }
        h2 { "The newest checkpoint" }
        pre.note { (cp.note) }
        table {
            caption { "Its signatures" }
            thead { tr { th scope="col" { "Signer" } th scope="col" { "Key id" } th scope="col" { "Kind" } th scope="col" { "Signed" } } }
            tbody { @for s in &sigs {
                @let cosigned_at = (s.signature.len() == 72).then(|| {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&s.signature[..8]);
                    u64::from_be_bytes(t)
                });
                tr {
                    td { (s.name) }
                    td { code { (format!("{:08x}", s.id)) } }
                    td { @if s.name == log_key.name() && s.id == log_key.id() { "the log's signature" }
                         @else if cosigned_at.is_some() { "witness cosignature (cosignature/v1)" }
                         @else { "other" } }
                    td { @match cosigned_at.and_then(|t| i64::try_from(t).ok()).and_then(|t| Timestamp::from_parts(t, 0).ok()) {
                        Some(t) => { (t) " (" (ago(t)) ")" },
                        None => "—",
                    } }
                }
            } }
        }
        h2 { "Witnesses" }
        @if witnesses.is_empty() {
            p { "No witnesses are configured: the checkpoint carries the log's signature alone." }
        } @else {
            table {
                thead { tr { th scope="col" { "Witness" } th scope="col" { "Key" } th scope="col" { "Newest cosigned size" } } }
                tbody { @for w in &witnesses { tr {
                    td { (w.label) } td { code { (w.vkey) } }
                    td { @match w.cosigned {
                        Some(n) if n == cp.size => { (n) " (the newest checkpoint)" },
                        Some(n) => { (n) " (" (cp.size.saturating_sub(n)) " entries behind)" },
                        None => "none collected since the registry started",
                    } }
                } } }
            }
        }
        h2 { "Webhooks" }
        @if hooks.is_empty() {
            p { "No webhooks are configured here, or none has been looked at yet." }
        } @else {
            p { @if sending { "This replica holds the webhook lease and sends the events." }
                @else { "Another replica on this storage holds the webhook lease and sends the events; the cursors below are as this replica last saw them." } }
            table {
                thead { tr { th scope="col" { "Endpoint" } th scope="col" { "Next log index" } th scope="col" { "Behind" }
                    th scope="col" { "Delivered since start" } th scope="col" { "Failures in a row" }
                    th scope="col" { "Last answer" } th scope="col" { "Last delivered" } } }
                tbody { @for (name, h) in &hooks { tr {
                    td { (name) } td.num { (h.cursor) } td.num { (cp.size.saturating_sub(h.cursor)) }
                    td.num { (h.delivered) } td.num { (h.failures) }
                    td { (h.last_answer.as_deref().unwrap_or("—")) }
                    td { @match h.last_delivered_at { Some(t) => { (t) " (" (ago(t)) ")" }, None => "—" } }
                } } }
            }
        }
        h2 { "Settings" }
        @match site.reload.last() {
            None => p { "As loaded at start: no reload since (SIGHUP, or a change of the settings, TLS or trusted-key files, reloads them)." },
            Some(r) => @match &r.result {
                Ok(what) => p { "Reloaded at " (r.at) " (" (ago(r.at)) ", " (r.trigger) "): " (what) "." },
                Err(why) => p.error role="alert" { "The reload at " (r.at) " (" (ago(r.at)) ", " (r.trigger)
                    ") was refused, and the configuration in force before it still is: " (why) },
            },
        }
        h2 { "Audit" }
        @match registry.start_check() {
            Some(c) => p { "At start (" (c.at) ", " (ago(c.at)) "), the registry checked the "
                (c.entries) " entries of the log against the signed checkpoints stored with it"
                @if let Some(n) = c.checkpoint_size { " (the newest covering " (n) ")" }
                ": they agree. Entries written since were applied by the same rules." },
            None => p { "No start-up check is recorded." },
        }
        p { "The registry records no other audit. " code { "stackpin audit" }
            " re-checks every entry, signature and blob on your side; " code { "stackpin audit --tiles URL" }
            " does it from this listener's tiles, as any outside reader would." }
        p { "Tiles: " a href="/checkpoint" { "/checkpoint" } ", " code { "/tile/…" } " (C2SP tlog-tiles)." }
    };
    Ok(page("The log", &body))
}

/// The login page: a token into a cookie.
pub fn login(site: &Site, problem: Option<&str>) -> Reply {
    let body = html! {
        @if !site.auth_on {
            p { "Authentication is off on this registry: no token is needed. " a href="/" { "All environments" } }
        } @else {
            @if let Some(p) = problem { p.error role="alert" { (p) } }
            form method="post" action="/login" {
                label for="token" { "Token (with the read role)" }
                input #token type="password" name="token" required autocomplete="current-password";
                button type="submit" { "Sign in" }
            }
            p { "The token is kept in a cookie for this site only (HttpOnly, SameSite=Strict)." }
        }
    };
    Reply::html(StatusCode::OK, layout("Sign in", &body))
}
