//! The HTTP listener (`http_listen`): the log as C2SP tlog-tiles
//! (<https://c2sp.org/tlog-tiles>), read-only, so that the ecosystem's
//! clients (monitors, mirrors, witnesses' feeders, `stackpin audit
//! --tiles`) read it with no stackpin code; and the web view
//! ([`crate::web`]) for people.
//!
//! ```text
//! GET /checkpoint                      the newest signed checkpoint
//! GET /tile/<L>/<N>[.p/<W>]            hash tiles of its tree
//! GET /tile/entries/<N>[.p/<W>]        entry bundles
//! GET /, /env/…, /artifact/…, /log …   the web view (when it is on)
//! GET|HEAD /v2/…                        the OCI Distribution pull API ([`crate::oci`])
//! ```
//!
//! Browsers send their token in a cookie (set by the web view's sign-in
//! page); other clients send `Authorization: Bearer`.
//!
//! The checkpoint changes with every commit, so it may be cached for a
//! second at most; a tile's bytes never change (a partial tile of width W
//! is the same in every tree that has it), so tiles are cached for a year.
//! The listener follows the gRPC listener's rules: the same certificate
//! and client CA when TLS is configured, and the same tokens (the `read`
//! role, or none with `anonymous_read`) when authentication is on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Action, Authorizer};
use crate::error::{Error, Kind};
use crate::registry::Registry;

/// How long a client may take to send the sign-in form.
const FORM_TIMEOUT: Duration = Duration::from_secs(10);

const CHECKPOINT_CACHE: &str = "public, max-age=1";
const TILE_CACHE: &str = "public, max-age=31536000, immutable";

/// What the listener needs besides the registry.
#[derive(Clone)]
pub struct Http {
    pub registry: Arc<Registry>,
    pub auth: Authorizer,
    pub tls: Option<crate::tls::Tls>,
    /// The web view; None when it is off.
    pub web: Option<crate::web::Site>,
    /// What each connection is held to before and while it is served.
    pub connections: crate::guard::ConnectionLimits,
    /// How long a connection lives before it is asked to close (and cut
    /// after as long again): the request deadline.
    pub max_age: Duration,
    /// The OCI Distribution pull API under `/v2/`.
    pub oci: crate::oci::Oci,
    /// Where gRPC is served, for a gRPC client that came here instead.
    pub grpc: Option<std::net::SocketAddr>,
}

/// The largest sign-in form read.
const MAX_FORM_BYTES: usize = 4096;

/// Serves on `listener` until `stop` turns true; connections already open
/// finish what they are sending.
///
/// Each connection is held to `http.connections` (see [`crate::guard`]),
/// and lives at most `http.max_age`: then it is asked to close (HTTP/1
/// after the answer in progress, HTTP/2 with GOAWAY), and cut after as
/// long again. So no client, reading or not, holds an answer and its share
/// of the byte budget for longer.
pub async fn serve(listener: TcpListener, http: Http, mut stop: watch::Receiver<bool>) {
    let scheme = if http.tls.is_some() { "https" } else { "http" };
    if let Ok(addr) = listener.local_addr() {
        let web = if http.web.is_some() {
            "and the web view"
        } else {
            "(the web view is off)"
        };
        tracing::info!("serving tlog-tiles on {addr} ({scheme}) {web}");
    }
    let acceptor = crate::guard::Acceptor::new(listener, http.connections);
    loop {
        let conn = tokio::select! {
            accepted = acceptor.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    continue;
                }
            },
            () = async { drop(stop.wait_for(|s| *s).await) } => return,
        };
        // The TLS settings in force now: a reload reaches every new
        // connection.
        let tls = http.tls.as_ref().map(crate::tls::Tls::http);
        let http = http.clone();
        tokio::spawn(async move {
            let started = conn.started();
            match tls {
                None => connection(TokioIo::new(conn), http, None, started).await,
                Some(tls) => {
                    // The guard's header deadline bounds the handshake too.
                    let Ok(tls) = tls.accept(conn).await else {
                        return; // a failed or stalled handshake
                    };
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::auth::common_name(c.as_ref()));
                    connection(TokioIo::new(tls), http, cn, started).await;
                }
            }
        });
    }
}

async fn connection<I>(io: I, http: Http, cn: Option<String>, started: crate::guard::Started)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let max_age = http.max_age;
    // For each request after the first (the first is bounded from accept
    // by the guard).
    let header_timeout = http.connections.header_timeout;
    let write_idle = http.connections.write_idle;
    let service = hyper::service::service_fn(move |req| {
        started.mark();
        let http = http.clone();
        let cn = cn.clone();
        async move { Ok::<_, Infallible>(handle(&http, cn.as_deref(), req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // HTTP/2 (prior knowledge, or ALPN h2 with TLS): a peer that stops
    // answering pings gives its slot back well before the connection's age.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(write_idle)
        .keep_alive_timeout(write_idle);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = tokio::time::sleep(max_age) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(max_age, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    metrics::counter!("stackpin_connections_cut_total", "reason" => "max_age")
                        .increment(1);
                    return;
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "an HTTP connection ended with an error");
    }
}

/// A gRPC client sent to this listener: a trailers-only gRPC answer
/// (UNIMPLEMENTED) that names the gRPC address, so the CLI says where to
/// go instead of failing on an HTTP page.
fn wrong_listener(grpc: Option<std::net::SocketAddr>) -> Response<Full<Bytes>> {
    let there = grpc.map_or_else(
        || "the registry's gRPC address (its listen setting)".to_owned(),
        |a| format!("port {} ({a})", a.port()),
    );
    let message = format!(
        "this is stackpin's HTTP listener (tiles, web view, OCI), not its gRPC endpoint: did you \
         mean {there}?"
    );
    let mut r = Response::new(Full::new(Bytes::new()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("12"));
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    r
}

async fn handle(http: &Http, cn: Option<&str>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let head = req.method() == Method::HEAD;
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return wrong_listener(http.grpc);
    }
    if crate::oci::is_oci(&path) {
        return http.oci.handle(&http.registry, &http.auth, cn, &req).await;
    }
    if let (Some(site), true) = (&http.web, req.method() == Method::POST && path == "/login") {
        return match read_form(req).await {
            Ok(form) => reply(crate::web::login(site, &http.auth, &form)),
            Err(e) => error(&e),
        };
    }
    if req.method() != Method::GET && !head {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let open = http.web.is_some() && crate::web::is_open(&path);
    if !open && let Err(e) = authorize(http, cn, &req) {
        return match &http.web {
            Some(site) if !is_tiles(&path) => reply(crate::web::refused(site, &e)),
            _ => error(&e),
        };
    }
    let mut response = if path == "/checkpoint" {
        match http.registry.checkpoint() {
            Ok(cp) => body(
                Bytes::from(cp.note.to_string()),
                "text/plain; charset=utf-8",
                CHECKPOINT_CACHE,
            ),
            Err(e) => error(&e),
        }
    } else if let Some(tile) = path.strip_prefix('/').filter(|p| p.starts_with("tile/")) {
        match http.registry.tile(tile).await {
            Ok(Some(bytes)) => body(bytes, "application/octet-stream", TILE_CACHE),
            Ok(None) => text(
                StatusCode::NOT_FOUND,
                "no such tile in the newest checkpoint's tree\n",
            ),
            Err(e) => error(&e),
        }
    } else {
        let page = match &http.web {
            Some(site) => crate::web::get(&http.registry, site, &path, &query).await,
            None => None,
        };
        match (page, &http.web) {
            (Some(page), _) => reply(page),
            (None, Some(_)) => text(
                StatusCode::NOT_FOUND,
                "not found: this listener serves the web view (/), /checkpoint and /tile/… \
                 (C2SP tlog-tiles)\n",
            ),
            (None, None) => text(
                StatusCode::NOT_FOUND,
                "not found: this listener serves /checkpoint and /tile/… (C2SP tlog-tiles); the \
                 web view is off (a non-loopback address without authentication: configure \
                 tokens, or set web_view = true)\n",
            ),
        }
    };
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn is_tiles(path: &str) -> bool {
    path == "/checkpoint" || path.starts_with("/tile/")
}

/// The body of a sign-in form, bounded.
async fn read_form(req: Request<Incoming>) -> crate::error::Result<Bytes> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_FORM_BYTES);
    match tokio::time::timeout(FORM_TIMEOUT, limited.collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(_)) => Err(Error::new(
            Kind::TooLarge,
            format!("the sign-in form is larger than {MAX_FORM_BYTES} bytes or was cut off"),
        )),
        Err(_) => Err(Error::new(
            Kind::Deadline,
            "the sign-in form did not arrive in time",
        )),
    }
}

/// A web view answer as an HTTP response.
fn reply(page: crate::web::Reply) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(page.body));
    *r.status_mut() = page.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(page.cache));
    // Nothing is loaded from elsewhere, and no other site may frame a page.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Some(to) = page.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, to);
    }
    if let Some(c) = page.set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    if page.status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn authorize(http: &Http, cn: Option<&str>, req: &Request<Incoming>) -> crate::error::Result<()> {
    if let Some(e) = http.registry.contradicted() {
        return Err(e);
    }
    let bearer = match req.headers().get(header::AUTHORIZATION) {
        None if http.web.is_some() => cookie_token(req),
        None => None,
        Some(v) => Some(crate::auth::bearer(v.to_str().ok())?),
    };
    http.auth.authorize(bearer, cn, Action::Read).map(|_| ())
}

/// The token a browser keeps in the web view's cookie.
fn cookie_token(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == crate::web::TOKEN_COOKIE)
        .map(|(_, v)| v)
}

fn body(bytes: Bytes, content_type: &'static str, cache: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(message.to_owned())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // What is missing now may exist after the next commit.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(e: &Error) -> Response<Full<Bytes>> {
    let mut r = text(
        crate::http_status::of(e.kind()),
        &format!("{}\n", e.message()),
    );
    if e.kind() == Kind::Unauthenticated {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}
