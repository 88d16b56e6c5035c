//! The budget of artifact bytes in memory, shared by every publish and
//! download.
//!
//! Publishes stream to a staging file and downloads stream from storage, so
//! each stream holds only its buffers: a few chunks while bytes travel, a
//! storage part or a small artifact while it is stored. Each stream reserves
//! what it may hold before holding it and keeps the reservation as long as
//! the transport may still hold its bytes. When the budget is spent a new
//! stream waits a moment (back-pressure), then is refused with
//! RESOURCE_EXHAUSTED, so that no number of concurrent or stalled streams
//! takes the process past its budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Kind, Result};

/// How long a stream waits for room before it is refused.
const WAIT: Duration = Duration::from_secs(2);

/// The unit of reservation: permits are counted in KiB so that any budget
/// fits a semaphore.
const UNIT: u64 = 1024;

/// Bytes in flight, bounded.
#[derive(Clone, Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total: u64,
    /// What a refusal names: the setting, or the share of it this is.
    setting: &'static str,
    /// Whether reservations show in `stackpin_inflight_bytes` (a share of
    /// the budget, reserved beside it, does not count twice).
    metered: bool,
}

/// Room reserved in the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        metrics::gauge!("stackpin_inflight_bytes").decrement(self.bytes as f64);
    }
}

/// Bytes that keep their reservation: it is given back when the last
/// handle to them is dropped (the answer sent, or its connection cut), so
/// an answer waiting for a slow reader stays counted in the budget.
pub fn held<R: Send + 'static>(bytes: Vec<u8>, room: R) -> bytes::Bytes {
    bytes::Bytes::from_owner(Held { bytes, _room: room })
}

struct Held<R> {
    bytes: Vec<u8>,
    _room: R,
}

impl<R> AsRef<[u8]> for Held<R> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Self {
        let units = total.div_ceil(UNIT).min(Semaphore::MAX_PERMITS as u64);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            total,
            setting: "setting max_inflight_bytes",
            metered: true,
        }
    }

    /// A share of `total` bytes of a budget, reserved beside it by one
    /// kind of user; `what` names it in refusals.
    pub fn share(total: u64, what: &'static str) -> Self {
        Self {
            setting: what,
            metered: false,
            ..Self::new(total)
        }
    }

    /// Reserves `bytes` for `what` (e.g. "a publish"), waiting a moment for
    /// room.
    ///
    /// # Errors
    /// Busy (RESOURCE_EXHAUSTED) when no room frees up in time, or when
    /// `bytes` exceeds the whole budget.
    pub async fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation> {
        self.reserve_within(bytes, what, WAIT).await
    }

    /// [`Self::reserve`], waiting up to `wait` for room: for work a caller
    /// already waits on (storing bytes that have all arrived), where a
    /// queue is kinder than a refusal.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub async fn reserve_within(
        &self,
        bytes: u64,
        what: &str,
        wait: Duration,
    ) -> Result<Reservation> {
        let units = bytes.div_ceil(UNIT).max(1);
        let refused = || {
            metrics::counter!("stackpin_budget_refusals_total").increment(1);
            Error::new(
                Kind::Busy,
                format!(
                    "the registry is at its budget of {} MiB of artifact bytes in flight \
                     ({}); {what} needs {} KiB: retry shortly",
                    self.total / (1024 * 1024),
                    self.setting,
                    bytes.div_ceil(UNIT)
                ),
            )
        };
        let Ok(units32) = u32::try_from(units) else {
            return Err(refused());
        };
        if u64::from(units32) > self.total.div_ceil(UNIT) {
            return Err(refused());
        }
        let permit = match tokio::time::timeout(
            wait,
            self.permits.clone().acquire_many_owned(units32),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(Error::internal("the byte budget was closed")),
            Err(_) => return Err(refused()),
        };
        let bytes = if self.metered { units * UNIT } else { 0 };
        metrics::gauge!("stackpin_inflight_bytes").increment(bytes as f64);
        Ok(Reservation {
            _permit: permit,
            bytes,
        })
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes currently free (tests and metrics).
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reservations_wait_then_are_refused_and_return_on_drop() {
        let budget = Budget::new(10 * 1024);
        let a = budget.reserve(6 * 1024, "a download").await.unwrap();
        assert_eq!(budget.available(), 4 * 1024);
        // No room: waits, then refused with a message naming the setting.
        let e = budget.reserve(6 * 1024, "a publish").await.unwrap_err();
        assert_eq!(e.kind(), Kind::Busy);
        assert!(e.to_string().contains("max_inflight_bytes"), "{e}");
        // Room freed while waiting: admitted.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(6 * 1024, "a publish").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(a);
        waiting.await.unwrap().unwrap();
        assert_eq!(budget.available(), 10 * 1024);
        // More than the whole budget can never be admitted.
        budget.reserve(11 * 1024, "a publish").await.unwrap_err();
    }

    #[tokio::test]
    async fn held_bytes_keep_their_reservation_until_the_last_handle_goes() {
        let budget = Budget::new(10 * 1024);
        let room = budget.reserve(4 * 1024, "an answer").await.unwrap();
        let bytes = held(vec![7; 4096], room);
        let sent = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(budget.available(), 6 * 1024);
        assert_eq!(sent[0], 7);
        drop(sent);
        assert_eq!(budget.available(), 10 * 1024);
    }
}
