//! What the index says a tag or a stored manifest names, and the tag
//! list: the OCI API's reads of the log's rule state (blocking; run off
//! the runtime).

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header;

use super::answer::{Oops, body, insert};
use super::model::{self, Tag};
use super::request::form_urlencoded;
use super::{Answer, MAX_TAGS_PAGE};
use crate::auth::Principal;
use crate::error::{Error, Kind, Result};
use crate::ids::{EnvName, ReleaseId};
use crate::records::{ArtifactRecord, PinRecord};
use crate::registry::{ArtifactRef, Registry};

/// An artifact, and the pin that made it live when there is one.
pub(super) type Found = (ArtifactRecord, Option<PinRecord>);

/// The artifact `tag` names, and the pin when it names one.
pub(super) fn find_tag(registry: &Registry, tag: &str) -> Result<Found> {
    let mut found = Vec::new();
    for reading in model::readings(tag) {
        let exists = match &reading {
            Tag::Release(r) => exists(registry.artifact(&ArtifactRef::Release(r.clone())))?,
            Tag::Env(e) | Tag::At(e, _) => exists(registry.live_now(e))?,
        };
        if exists {
            found.push(reading);
        }
    }
    let pin = match found.as_slice() {
        [] => {
            return Err(Error::not_found(format!(
                "no release or environment {tag}, and {tag} is not <env>.at.<YYYYMMDDTHHMMSSZ> of \
                 an environment"
            )));
        }
        [Tag::Release(r)] => {
            return Ok((registry.artifact(&ArtifactRef::Release(r.clone()))?, None));
        }
        [Tag::Env(e)] => registry.live_now(e)?,
        [Tag::At(e, at)] => registry.resolve(e, *at, None)?.pin,
        _ => {
            return Err(Error::not_found(format!(
                "tag {tag} is ambiguous: it names both a release and an environment; pull by \
                 digest"
            )));
        }
    };
    let artifact = registry.artifact(&ArtifactRef::Release(pin.entry.release_id.clone()))?;
    Ok((artifact, Some(pin)))
}

fn exists<T>(found: Result<T>) -> Result<bool> {
    match found {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == Kind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The artifact of `release`, and pin `seq` of `env` when a stored
/// manifest claims that pin made it live.
pub(super) fn find_claimed(
    registry: &Registry,
    release: &ReleaseId,
    pin: Option<&(EnvName, u64)>,
) -> Result<Found> {
    let artifact = registry.artifact(&ArtifactRef::Release(release.clone()))?;
    let pin = match pin {
        Some((env, seq)) => {
            let p = registry.pin_record(env, *seq)?;
            if p.entry.release_id != *release {
                return Err(Error::not_found(format!(
                    "pin #{seq} of {env} is not of release {release}"
                )));
            }
            Some(p)
        }
        None => None,
    };
    Ok((artifact, pin))
}

/// `GET /v2/<name>/tags/list?n=&last=`: release ids and environments in
/// lexical order, each once.
pub(super) async fn tags(
    registry: &Arc<Registry>,
    who: &Principal,
    name: &str,
    query: &str,
) -> std::result::Result<Answer, Oops> {
    let mut n = MAX_TAGS_PAGE;
    let mut last: Option<String> = None;
    for (k, v) in form_urlencoded(query) {
        match k.as_str() {
            "n" => {
                n = v.parse::<usize>().map_err(|_| {
                    Oops::new(
                        StatusCode::BAD_REQUEST,
                        "PAGINATION_NUMBER_INVALID",
                        format!("n={} is not a number", stackpin_core::error::shown(&v)),
                    )
                })?;
                n = n.min(MAX_TAGS_PAGE);
            }
            "last" => last = Some(v),
            _ => {}
        }
    }
    let (r, scope) = (registry.clone(), who.scope().map(<[EnvName]>::to_vec));
    let (page, more) =
        crate::blocking::run(move || tag_page(&r, scope.as_deref(), last.as_deref(), n)).await?;
    let value = serde_json::json!({ "name": name, "tags": page });
    let mut answer = body(
        StatusCode::OK,
        Bytes::from(value.to_string()),
        "application/json",
    );
    if more && let Some(l) = page.last() {
        insert(
            &mut answer,
            header::LINK,
            &format!("</v2/{name}/tags/list?n={n}&last={l}>; rel=\"next\""),
        );
    }
    Ok(answer)
}

/// Up to `n` tags after `last`, and whether more follow; of the
/// environments, only those of `scope` when the caller is scoped.
fn tag_page(
    registry: &Registry,
    scope: Option<&[EnvName]>,
    last: Option<&str>,
    n: usize,
) -> Result<(Vec<String>, bool)> {
    if n == 0 {
        return Ok((Vec::new(), false));
    }
    // Each list is sorted; a name past `last` that is not a valid id is
    // simply where the list starts.
    let after_release: Option<ReleaseId> = last.and_then(|l| l.parse().ok());
    let after_env: Option<EnvName> = last.and_then(|l| l.parse().ok());
    let (releases, _) = registry.list_artifacts(after_release.as_ref(), n + 1)?;
    let envs: Vec<EnvName> = match scope {
        None => {
            let (live, _) = registry.environments(after_env.as_ref(), n + 1)?;
            live.into_iter().map(|p| p.entry.env).collect()
        }
        Some(scope) => {
            let mut pinned = Vec::new();
            for env in scope {
                if exists(registry.live_now(env))? {
                    pinned.push(env.clone());
                }
            }
            pinned
        }
    };
    let mut all: Vec<String> = releases
        .into_iter()
        .map(|a| a.release_id.to_string())
        .chain(envs.iter().map(ToString::to_string))
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    all.sort_unstable();
    // A name both a release and an environment is ambiguous as a tag:
    // listed once, as is.
    all.dedup();
    let more = all.len() > n;
    all.truncate(n);
    Ok((all, more))
}
