//! What a settings reload changes in a running registry: the publisher
//! keys trusted by configuration and the witnesses submitted to.
//!
//! Both are replaced whole, after the caller has loaded and checked every
//! reloadable setting (a reload is all or nothing: see `crate::reload`).

use std::sync::Arc;

use stackpin_core::state::Rules;

use super::Registry;
use crate::error::{Error, Result};
use crate::registry::WitnessTarget;
use crate::signing::TrustedKeys;

impl Registry {
    /// Checks that `keys` may replace the configured publisher keys: every
    /// key configured now must still be there. A configured key signed
    /// publishes the log holds, and a rebuild replays them under the
    /// configured keys; a key is retired by revoking it in the log
    /// (`stackpin key revoke`), which keeps those publishes valid.
    ///
    /// # Errors
    /// Invalid, naming the first key missing.
    pub fn check_trusted(&self, keys: &TrustedKeys) -> Result<()> {
        let rules = self.shared.rules();
        if let Some(gone) = rules
            .configured
            .keys()
            .iter()
            .find(|k| !keys.keys().iter().any(|n| n.id() == k.id()))
        {
            return Err(Error::invalid(format!(
                "setting trusted_keys: publisher key {} is trusted now and missing from the new \
                 keys; a configured key is retired with `stackpin key revoke` (its logged \
                 publishes stay valid), not by removing it",
                gone.id()
            )));
        }
        Ok(())
    }

    /// Makes `keys` the configured publisher keys (after
    /// [`Self::check_trusted`]); returns how many were added.
    pub fn replace_trusted(&self, keys: TrustedKeys) -> usize {
        let mut held = self
            .shared
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let added = keys
            .keys()
            .iter()
            .filter(|k| !held.configured.keys().iter().any(|o| o.id() == k.id()))
            .count();
        *held = Arc::new(Rules {
            configured: keys,
            ..Rules::clone(&held)
        });
        added
    }

    /// Makes `witnesses` the ones checkpoints go to; returns the names
    /// started and stopped.
    pub fn replace_witnesses(&self, witnesses: Vec<WitnessTarget>) -> (Vec<String>, Vec<String>) {
        super::witnesses::replace(&self.shared, witnesses)
    }
}
