//! What the CLI prints: wire records turned into plain, serializable views,
//! rendered as text for people or JSON for scripts.

use serde::Serialize;
use stackpin_core::entry::PinEntry;
use stackpin_proto::v1 as pb;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// Prints `value` as JSON, or the text lines `text` makes.
    pub fn emit<T: Serialize>(self, value: &T, text: impl FnOnce() -> String) {
        match self {
            Format::Json => match serde_json::to_string_pretty(value) {
                Ok(json) => stdout_line(&json),
                Err(e) => eprintln!("error: printing JSON: {e}"),
            },
            Format::Text => stdout_line(text().trim_end()),
        }
    }
}

/// Writes a line to standard output. A reader that went away (`| head -1`,
/// `| grep -q`) ends the command quietly with success, as what it asked
/// for was done; any other write error (a full disk behind `>file`) is
/// reported and exits 1. Everything a command writes to files is in place
/// before it prints.
pub fn stdout_line(text: &str) {
    stdout_bytes(format!("{text}\n").as_bytes());
}

/// Writes `bytes` to stdout, as [`stdout_line`] does.
pub fn stdout_bytes(bytes: &[u8]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            std::process::exit(i32::from(crate::exit::FAILURE));
        }
    }
}

/// RFC 3339 text of a wire timestamp ("" when unset or invalid).
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| stackpin_proto::convert::instant(t).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A wire timestamp from a domain one.
pub use stackpin_proto::convert::timestamp as wire_time;

#[derive(Serialize)]
pub struct ArtifactView {
    pub release_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub recorded_at: String,
    pub log_index: u64,
    pub key_id: String,
}

impl From<&pb::Artifact> for ArtifactView {
    fn from(a: &pb::Artifact) -> Self {
        Self {
            release_id: a.release_id.clone(),
            digest: a.digest.clone(),
            size: a.size,
            media_type: a.media_type.clone(),
            recorded_at: time(a.recorded_at.as_ref()),
            log_index: a.log_index,
            key_id: a.key_id.clone(),
        }
    }
}

impl ArtifactView {
    /// The view of the publish entry at log index `index`.
    pub fn of(index: u64, p: &stackpin_core::entry::PublishEntry) -> Self {
        Self {
            release_id: p.release_id.to_string(),
            digest: p.digest.to_string(),
            size: p.size,
            media_type: p.media_type.clone(),
            recorded_at: p.recorded_at.to_string(),
            log_index: index,
            key_id: p.key_id.to_string(),
        }
    }

    pub fn text(&self) -> String {
        format!(
            "release    {}\ndigest     {}\nsize       {} bytes\nmedia type {}\nrecorded   {}\nlog index  {}\nsigned by  {}\n",
            self.release_id,
            self.digest,
            self.size,
            self.media_type,
            self.recorded_at,
            self.log_index,
            self.key_id
        )
    }
}

#[derive(Serialize)]
pub struct PinView {
    pub env: String,
    pub seq: u64,
    pub release_id: String,
    pub digest: String,
    pub activated_at: String,
    pub recorded_at: String,
    pub actor: String,
    pub reason: String,
    pub log_index: u64,
    pub entry_hash: String,
    /// The previous pin's entry hash, as the pin entry names it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prev_pin: String,
    /// The database position recorded at activation, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_position: Option<String>,
    /// The id of the request that recorded the pin.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The ObjectOS image recorded with the pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_image: Option<String>,
}

impl PinView {
    /// The view of a pin entry at log index `index` whose leaf hash is
    /// `leaf`: what the log says, field by field.
    pub fn of(index: u64, leaf: &stackpin_core::merkle::Hash, p: &PinEntry) -> Self {
        Self {
            env: p.env.to_string(),
            seq: p.seq,
            release_id: p.release_id.to_string(),
            digest: p.digest.to_string(),
            activated_at: p.activated_at.to_string(),
            recorded_at: p.recorded_at.to_string(),
            actor: p.actor.clone(),
            reason: p.reason.clone(),
            log_index: index,
            entry_hash: leaf.hex(),
            prev_pin: p.prev_pin.clone().unwrap_or_default(),
            request_id: p.request_id.clone().unwrap_or_default(),
            db_position: p.db_position.as_ref().map(ToString::to_string),
            runtime_image: p.runtime_image.as_ref().map(ToString::to_string),
        }
    }

    /// The view of a proved pin entry.
    ///
    /// # Errors
    /// Verification failed when the entry is not a pin.
    pub fn proved(p: &crate::reader::Proved, what: &str) -> crate::exit::Outcome<Self> {
        Ok(Self::of(p.index(), &p.leaf, p.pin(what)?))
    }
}

impl PinView {
    /// One line: `#seq  activated_at  release  digest  reason`.
    pub fn line(&self) -> String {
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            format!("  ({})", self.reason)
        };
        format!(
            "#{:<5} {}  {}  {}{}",
            self.seq, self.activated_at, self.release_id, self.digest, reason
        )
    }
}

/// The answer to resolve, as printed by `resolve` and `restore`.
#[derive(Serialize)]
pub struct ResolveView {
    pub env: String,
    pub at: String,
    pub pin: PinView,
    pub live_from: String,
    /// Empty while the pin is still live.
    pub live_until: Option<String>,
    pub next: Option<PinView>,
    pub near_switch: Option<BoundaryView>,
    /// For a query by position: why the answer may be uncertain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertain: Option<String>,
}

#[derive(Serialize)]
pub struct BoundaryView {
    pub before: PinView,
    pub after: PinView,
    /// Queried instant minus the switch instant, in seconds.
    pub offset_seconds: f64,
}

impl ResolveView {
    pub fn text(&self) -> String {
        let until = self.live_until.as_deref().unwrap_or("(still live)");
        let mut out = format!(
            "env        {}\nat         {}\nrelease    {}\ndigest     {}\npin        #{} (log index {})\nlive       [{}, {})\n",
            self.env,
            self.at,
            self.pin.release_id,
            self.pin.digest,
            self.pin.seq,
            self.pin.log_index,
            self.live_from,
            until
        );
        if let Some(image) = &self.pin.runtime_image {
            out.push_str(&format!("runtime    {image}\n"));
        }
        if let Some(p) = &self.pin.db_position {
            out.push_str(&format!("recorded   {p} at activation\n"));
        }
        if let Some(b) = &self.near_switch {
            out.push_str(&self.warning(b));
        }
        if let Some(u) = &self.uncertain {
            out.push_str(&format!("uncertain  {u}\n"));
        }
        out
    }

    fn warning(&self, b: &BoundaryView) -> String {
        format!(
            "warning    {} is {:.6}s {} the switch from {} (#{}) to {} (#{}) at {}; the database \
             and registry clocks may disagree this close to a switch, so check which of the two \
             the database matches\n",
            self.at,
            b.offset_seconds.abs(),
            if b.offset_seconds < 0.0 {
                "before"
            } else {
                "after"
            },
            b.before.release_id,
            b.before.seq,
            b.after.release_id,
            b.after.seq,
            b.after.activated_at
        )
    }
}
