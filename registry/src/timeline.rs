//! The rules of the pin timeline, as pure functions over times.
//!
//! A pin is live from its `activated_at` (inclusive) until the next pin of its
//! environment. Per environment, activations never go back in time and may
//! not lie further in the future than the allowed clock skew. Near a switch
//! the registry's and the database's clocks may disagree, so an answer within
//! a margin of a switch names both candidates.

use std::time::Duration;

use crate::records::PinRecord;
use crate::time::Timestamp;
use stackpin_core::state::EnvHead;

pub use stackpin_core::live::micros;

/// Chooses the activation instant of a new pin: the requested one, or
/// "now" but never before the environment's latest pin (a clock that
/// stepped back must not make a default pin fail). Whether the instant is
/// allowed (order, skew) is for the log's rules to decide
/// ([`stackpin_core::state::apply`]).
pub fn activation(
    head: Option<&EnvHead>,
    requested: Option<Timestamp>,
    now: Timestamp,
) -> Timestamp {
    requested.unwrap_or_else(|| head.map_or(now, |h| h.activated_at.max(now)))
}

/// A switch between two pins close to a queried instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Boundary {
    /// The pin live before the switch.
    pub before: PinRecord,
    /// The pin live from the switch.
    pub after: PinRecord,
    /// Queried instant minus the switch instant, in microseconds.
    pub offset_micros: i64,
}

/// The answer to "which pin was live in E at T".
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The live pin.
    pub pin: PinRecord,
    /// The pin that ended its interval, if any (`pin.activated_at` to
    /// `next.activated_at` is the live interval).
    pub next: Option<PinRecord>,
    /// Set when the instant is within the margin of a switch.
    pub near_switch: Option<Boundary>,
    /// For a query by database position: why the answer may be uncertain
    /// (later pins that recorded no position could have been live).
    pub uncertain: Option<String>,
}

/// Whether `at` is within `margin` of the start of `pin`'s interval (only
/// then does [`near_switch`] look at the previous pin).
pub fn near_start(at: Timestamp, pin: &PinRecord, margin: Duration) -> bool {
    stackpin_core::live::near_start(at, pin.entry.activated_at, margin)
}

/// The switch nearest `at` within `margin`, given the live pin and its
/// neighbours (the rule is [`stackpin_core::live::near_switch`]).
pub fn near_switch(
    at: Timestamp,
    prev: Option<&PinRecord>,
    pin: &PinRecord,
    next: Option<&PinRecord>,
    margin: Duration,
) -> Option<Boundary> {
    let switch = stackpin_core::live::near_switch(
        at,
        prev.map(|p| p.entry.activated_at),
        pin.entry.activated_at,
        next.map(|n| n.entry.activated_at),
        margin,
    )?;
    let (before, after) = if switch.to_next {
        (pin, next?)
    } else {
        (prev?, pin)
    };
    Some(Boundary {
        before: before.clone(),
        after: after.clone(),
        offset_micros: switch.offset_micros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000).unwrap()
    }

    fn pin(seq: u64, at: Timestamp) -> PinRecord {
        PinRecord {
            entry: stackpin_core::entry::PinEntry {
                env: "prod".parse().unwrap(),
                seq,
                release_id: format!("r{seq}").parse().unwrap(),
                digest: crate::digest::Digest::of(&seq.to_be_bytes()),
                activated_at: at,
                recorded_at: at,
                actor: "anonymous".into(),
                reason: String::new(),
                prev_pin: None,
                db_position: None,
                request_id: None,
                runtime_image: None,
            },
            log_index: seq,
            entry_hash: crate::merkle::Hash::from_bytes([0; 32]),
        }
    }

    fn head(seq: u64, at: Timestamp) -> EnvHead {
        EnvHead {
            seq,
            activated_at: at,
            entry_hash: crate::merkle::Hash::from_bytes([0; 32]),
            last_lsn: None,
            last_txid: None,
            last_oplog: None,
            positioned: 0,
        }
    }

    #[test]
    fn default_activation_is_now_but_never_before_the_head() {
        assert_eq!(activation(None, None, t(100)), t(100));
        assert_eq!(activation(Some(&head(1, t(90))), None, t(100)), t(100));
        // The clock stepped back below the head: the head's instant is used.
        assert_eq!(activation(Some(&head(1, t(120))), None, t(100)), t(120));
        // A requested instant is taken as asked; the log's rules judge it.
        assert_eq!(
            activation(Some(&head(1, t(120))), Some(t(99)), t(100)),
            t(99)
        );
    }

    #[test]
    fn near_switch_names_the_nearest_switch_within_the_margin() {
        let (a, b, c) = (pin(1, t(100)), pin(2, t(200)), pin(3, t(300)));
        let m = Duration::from_secs(2);
        // Just after b's start: the a->b switch.
        let s = near_switch(t(201), Some(&a), &b, Some(&c), m).unwrap();
        assert_eq!(
            (s.before.entry.seq, s.after.entry.seq, s.offset_micros),
            (1, 2, 1_000_000)
        );
        // Just before c's start: the b->c switch, negative offset.
        let s = near_switch(t(299), Some(&a), &b, Some(&c), m).unwrap();
        assert_eq!(
            (s.before.entry.seq, s.after.entry.seq, s.offset_micros),
            (2, 3, -1_000_000)
        );
        // Middle of the interval, and the first pin's start (no switch there).
        assert!(near_switch(t(250), Some(&a), &b, Some(&c), m).is_none());
        assert!(near_switch(t(100), None, &a, Some(&b), m).is_none());
        // Exactly on the switch counts.
        assert!(near_switch(t(200), Some(&a), &b, Some(&c), m).is_some());
    }
}
