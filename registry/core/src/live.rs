//! When a pin is live, and how close an instant lies to a switch: the rule
//! the registry answers "what was live at T" by, and the rule the CLI
//! checks those answers with, written once.
//!
//! A pin is live from its `activated_at` (inclusive) until the next pin of
//! its environment. Near a switch the registry's and the database's clocks
//! may disagree, so an answer within a margin of a switch names both
//! candidates.

use std::time::Duration;

use crate::time::Timestamp;

/// Microseconds in `d`, saturating.
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Whether `at` is within `margin` of a pin's activation at `start` (only
/// then does the previous pin matter to [`near_switch`]).
pub fn near_start(at: Timestamp, start: Timestamp, margin: Duration) -> bool {
    at.as_micros() - start.as_micros() <= micros(margin)
}

/// A switch close to a queried instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// True for the switch that ends the live pin's interval (to the next
    /// pin); false for the one that started it (from the previous pin).
    pub to_next: bool,
    /// Queried instant minus the switch instant, in microseconds.
    pub offset_micros: i64,
}

/// The switch nearest `at` within `margin`, given the activations of the
/// live pin (`start`), the pin before it and the pin after it; the switch
/// that ended the interval wins a tie only when strictly nearer.
pub fn near_switch(
    at: Timestamp,
    prev: Option<Timestamp>,
    start: Timestamp,
    next: Option<Timestamp>,
    margin: Duration,
) -> Option<Switch> {
    let margin = micros(margin);
    let since_start = at.as_micros() - start.as_micros();
    let from_prev = prev.filter(|_| since_start <= margin).map(|_| since_start);
    let to_next = next
        .map(|n| n.as_micros() - at.as_micros())
        .filter(|d| *d <= margin);
    match (from_prev, to_next) {
        (Some(s), Some(e)) if e < s => Some(Switch {
            to_next: true,
            offset_micros: -e,
        }),
        (Some(s), _) => Some(Switch {
            to_next: false,
            offset_micros: s,
        }),
        (None, Some(e)) => Some(Switch {
            to_next: true,
            offset_micros: -e,
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000).unwrap()
    }

    #[test]
    fn the_nearest_switch_within_the_margin_is_named() {
        let m = Duration::from_secs(2);
        assert_eq!(
            near_switch(t(105), Some(t(0)), t(100), Some(t(200)), m),
            None
        );
        let s = near_switch(t(101), Some(t(0)), t(100), Some(t(200)), m).unwrap();
        assert_eq!((s.to_next, s.offset_micros), (false, 1_000_000));
        let e = near_switch(t(199), Some(t(0)), t(100), Some(t(200)), m).unwrap();
        assert_eq!((e.to_next, e.offset_micros), (true, -1_000_000));
        // No previous pin: the first pin's start is no switch.
        assert_eq!(near_switch(t(101), None, t(100), None, m), None);
        // Both within the margin: the nearer wins, the start on a tie.
        let both = near_switch(t(101), Some(t(0)), t(100), Some(t(102)), m).unwrap();
        assert!(!both.to_next);
        let end = near_switch(t(101), Some(t(0)), t(99), Some(t(102)), m).unwrap();
        assert!(end.to_next);
    }
}
