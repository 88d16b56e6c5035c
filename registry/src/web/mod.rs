//! The read-only web view, served on the HTTP listener (`http_listen`)
//! beside the tlog-tiles: what a person looks at, with no CLI.
//!
//! ```text
//! GET /                          every environment, what is live now
//! GET /env/<E>                   its timeline (zoomable with script; a
//!                                paged table without) and "what was live at…"
//! GET /env/<E>/at?t=T            the answer for an instant, as `resolve` gives it
//! GET /env/<E>/pin/<seq>         one pin: when it was live, DB position, proof
//! GET /artifact/<digest>         one artifact: signer, where and when it was live
//! GET /artifact/<digest>/json    its bytes
//! GET /diff?from=D&to=D          what changed from one artifact to another
//! GET /log                       size, checkpoint, cosignatures and their age
//! GET /env/<E>/pins.json, /env/<E>/at.json   what the timeline script reads
//! GET /login, POST /login        a token into a cookie, when tokens are on
//! ```
//!
//! Pages are rendered on the server (maud escapes every value), work with
//! JavaScript off except for the zoomable timeline, and use only the
//! assets compiled into the binary: nothing is fetched from elsewhere.
//! Every answer is the registry's own (the same calls as the gRPC
//! handlers), so a page and `stackpin resolve` cannot disagree.

mod pages;

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;

use crate::error::{Error, Kind, Result};
use crate::registry::Registry;

/// The cookie a browser sends its token in.
pub const TOKEN_COOKIE: &str = "stackpin_token";

/// What the site knows besides the registry.
#[derive(Clone, Debug)]
pub struct Site {
    /// Whether tokens or client certificates are required.
    pub auth_on: bool,
    /// Whether the listener is HTTPS (the token cookie is then `Secure`).
    pub https: bool,
    /// The webhooks' delivery log.
    pub webhooks: std::sync::Arc<crate::webhooks::Deliveries>,
    /// The newest settings reload and its outcome.
    pub reload: std::sync::Arc<crate::reload::Status>,
    /// The web view's share of the byte budget: its answers and diffs
    /// reserve here as well as in the registry's budget, so that people
    /// reading pages (or clients that never read them) hold at most this
    /// much, and publishes and downloads keep the rest.
    pub share: crate::budget::Budget,
}

/// The web view's share of `max_inflight_bytes`: a quarter.
pub fn share_of(max_inflight_bytes: u64) -> crate::budget::Budget {
    crate::budget::Budget::share(
        max_inflight_bytes / 4,
        "the web view's share: a quarter of max_inflight_bytes",
    )
}

impl Default for Site {
    fn default() -> Self {
        Self {
            auth_on: false,
            https: false,
            webhooks: std::sync::Arc::default(),
            reload: std::sync::Arc::default(),
            share: share_of(crate::defaults::MAX_INFLIGHT_BYTES),
        }
    }
}

/// An answer of the web view.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub cache: &'static str,
    pub body: Bytes,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
}

impl Reply {
    fn html(status: StatusCode, markup: maud::Markup) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            cache: "no-store",
            body: Bytes::from(markup.into_string()),
            location: None,
            set_cookie: None,
        }
    }

    fn json(value: &serde_json::Value) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            cache: "no-store",
            body: Bytes::from(value.to_string()),
            location: None,
            set_cookie: None,
        }
    }

    fn asset(content_type: &'static str, body: &'static str) -> Self {
        Self {
            status: StatusCode::OK,
            content_type,
            cache: "public, max-age=300",
            body: Bytes::from_static(body.as_bytes()),
            location: None,
            set_cookie: None,
        }
    }

    fn redirect(to: String) -> Self {
        Self {
            status: StatusCode::SEE_OTHER,
            content_type: "text/plain; charset=utf-8",
            cache: "no-store",
            body: Bytes::new(),
            location: Some(to),
            set_cookie: None,
        }
    }
}

/// Whether `path` needs no token (the login page and the assets it uses).
pub fn is_open(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

/// The page for a GET of `path?query`, or None when `path` is not one of
/// the web view's.
///
/// Pages read the index (sled, and pread of its files): they are rendered
/// on the blocking pool, so a slow read never stalls the runtime threads
/// that serve every other request.
pub async fn get(registry: &Arc<Registry>, site: &Site, path: &str, query: &str) -> Option<Reply> {
    let q = Query::parse(query);
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let result = match parts.as_slice() {
        [""] => off(registry, move |r| pages::overview(r, &q)).await,
        ["assets", "style.css"] => Ok(Reply::asset(
            "text/css; charset=utf-8",
            include_str!("assets/style.css"),
        )),
        ["assets", "timeline.js"] => Ok(Reply::asset(
            "text/javascript; charset=utf-8",
            include_str!("assets/timeline.js"),
        )),
        ["login"] => Ok(pages::login(site, None)),
        ["log"] => {
            let site = site.clone();
            off(registry, move |r| pages::log(r, &site)).await
        }
        ["env", env] => {
            let env = (*env).to_owned();
            off(registry, move |r| pages::environment(r, &env, &q)).await
        }
        ["env", env, "at"] => {
            let env = (*env).to_owned();
            off(registry, move |r| pages::at(r, &env, &q)).await
        }
        ["env", env, "at.json"] => {
            let env = (*env).to_owned();
            off(registry, move |r| pages::at_json(r, &env, &q)).await
        }
        ["env", env, "pins.json"] => {
            let env = (*env).to_owned();
            off(registry, move |r| pages::pins_json(r, &env, &q)).await
        }
        ["env", env, "pin", seq] => pages::pin(registry, env, seq).await,
        ["artifact", digest] => {
            let digest = (*digest).to_owned();
            off(registry, move |r| pages::artifact(r, &digest)).await
        }
        ["artifact", digest, "json"] => pages::artifact_json(registry, site, digest).await,
        ["diff"] => pages::diff(registry, site, &q).await,
        _ => return None,
    };
    Some(result.unwrap_or_else(|e| {
        if path.ends_with(".json") {
            let mut r = Reply::json(&serde_json::json!({ "error": e.message() }));
            r.status = crate::http_status::of(e.kind());
            r
        } else {
            pages::error(&e)
        }
    }))
}

/// `page` rendered on the blocking pool.
pub(super) async fn off<T: Send + 'static>(
    registry: &Arc<Registry>,
    page: impl FnOnce(&Registry) -> Result<T> + Send + 'static,
) -> Result<T> {
    let registry = registry.clone();
    crate::blocking::run(move || page(&registry)).await
}

/// The answer to `POST /login` with a form body `token=…`: the token is
/// checked, then kept in an HttpOnly, SameSite=Strict cookie.
pub fn login(site: &Site, auth: &crate::auth::Authorizer, form: &[u8]) -> Reply {
    let token = form_urlencoded::parse(form)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    match auth.authorize(Some(&token), None, crate::auth::Action::Read) {
        Ok(_) => {
            let mut r = Reply::redirect("/".to_owned());
            r.set_cookie = Some(format!(
                "{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
                if site.https { "; Secure" } else { "" }
            ));
            r
        }
        Err(e) => {
            let mut r = pages::login(site, Some(e.message()));
            r.status = crate::http_status::of(e.kind());
            r
        }
    }
}

/// The page a browser gets when it is not let in.
pub fn refused(site: &Site, e: &Error) -> Reply {
    let mut r = match e.kind() {
        Kind::Unauthenticated => pages::login(site, Some(e.message())),
        _ => pages::error(e),
    };
    r.status = crate::http_status::of(e.kind());
    r
}

/// A request's query string.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Error::invalid(format!("{key}: {v:?} is not a number")))
            })
            .transpose()
    }
}
