//! How fresh a checkpoint is: the newest cosignature of a policy's
//! witnesses is the only clock a checkpoint carries, and `--max-age`
//! bounds it.

use stackpin_core::witness::Policy;

use crate::exit::{Failure, Outcome};

/// How fresh a checkpoint is, by the cosignatures of a policy's witnesses.
#[derive(Debug, Default, serde::Serialize)]
pub struct Freshness {
    /// Seconds since the newest cosignature of the policy's witnesses.
    #[serde(
        rename = "checkpoint_age_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub age_seconds: Option<u64>,
    /// The policy's witnesses that cosigned the checkpoint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cosigned_by: Vec<String>,
}

impl Freshness {
    /// The text line saying how fresh the checkpoint is.
    pub fn text(&self) -> String {
        match self.age_seconds {
            Some(age) => format!(
                "fresh      checkpoint cosigned {age}s ago (by {})\n",
                self.cosigned_by.join(", ")
            ),
            None => "fresh      the checkpoint's age is unknown: no cosignature of a policy's \
                     witness (see --policy)\n"
                .to_owned(),
        }
    }
}

/// How fresh `note` is by `policy`, refused when older than `max_age`
/// (which needs a policy).
///
/// # Errors
/// Invalid for `max_age` without a policy; verification failed (exit 5)
/// for a checkpoint older than `max_age` or with no cosignature to date it.
pub fn freshness(
    policy: Option<&Policy>,
    note: &str,
    max_age: Option<std::time::Duration>,
) -> Outcome<Freshness> {
    let Some(policy) = policy else {
        if max_age.is_some() {
            return Err(Failure::invalid(
                "--max-age needs --policy: a checkpoint is dated only by the cosignatures of the \
                 witnesses a policy names",
            ));
        }
        return Ok(Freshness::default());
    };
    let age = checkpoint_age(policy, note);
    if let Some(max) = max_age {
        match age {
            Some(age) if age <= max => {}
            Some(age) => {
                return Err(Failure::verify(format!(
                    "the checkpoint's newest cosignature is {}s old, older than --max-age {}s: \
                     the registry may be stale or withholding newer entries",
                    age.as_secs(),
                    max.as_secs()
                )));
            }
            None => {
                return Err(Failure::verify(
                    "the checkpoint carries no cosignature of the policy's witnesses, so its \
                     age is unknown (--max-age)",
                ));
            }
        }
    }
    Ok(Freshness {
        age_seconds: age.map(|a| a.as_secs()),
        cosigned_by: policy.cosigned(note).into_keys().collect(),
    })
}

/// How old the newest cosignature on `note` is, by the witnesses of
/// `policy` (the only clock a checkpoint carries): `None` without one.
pub fn checkpoint_age(policy: &Policy, note: &str) -> Option<std::time::Duration> {
    let newest = policy.cosigned(note).into_values().max()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(std::time::Duration::from_secs(now.saturating_sub(newest)))
}
