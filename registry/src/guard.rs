//! What both listeners (gRPC and HTTP) bound for every connection, before
//! any request is served:
//!
//! - how many are open at once (`max_connections` per listener): more wait
//!   in the kernel's listen queue;
//! - how long one may take from accept to its first complete request head
//!   (`header_timeout`), TLS handshake included: a connection that sends
//!   nothing, or too little, is closed, so idle sockets cannot hold every
//!   slot;
//! - how long a write may stall (`stream_idle_timeout`): a client that stops
//!   reading its answer is cut, which drops the answer and the share of the
//!   byte budget it holds.
//!
//! WatchLog streams have bounds of their own ([`WatchLimits`]): in all on
//! the listener and per principal. They hold no artifact bytes, so they
//! take nothing from the budget publishes and downloads need.
//!
//! A request marks its connection as started: the HTTP listener directly,
//! the gRPC listener through [`Open::mark`] by the peer address tonic puts
//! on every request. After the first request the protocol's own bounds
//! take over (HTTP/1's header timeout for each next request, the
//! connection age for HTTP/2).

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The bounds a listener holds its connections to.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From accept to the first complete request head.
    pub header_timeout: Duration,
    /// How long a write may wait for the client to read.
    pub write_idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: crate::defaults::MAX_CONNECTIONS,
            header_timeout: crate::defaults::HEADER_TIMEOUT,
            write_idle: crate::defaults::STREAM_IDLE_TIMEOUT,
        }
    }
}

/// Whether a connection has sent a complete request head.
#[derive(Clone, Debug, Default)]
pub struct Started(Arc<AtomicBool>);

impl Started {
    /// A request arrived on the connection.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The connections open on a listener, by peer address, for requests that
/// know only their peer address (tonic's).
#[derive(Debug, Default)]
pub struct Open(Mutex<HashMap<SocketAddr, Started>>);

impl Open {
    /// Marks the connection from `peer` as started.
    pub fn mark(&self, peer: SocketAddr) {
        if let Some(s) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
        {
            s.mark();
        }
    }
}

/// A listener that hands out [`Guarded`] connections.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    open: Arc<Open>,
}

impl Acceptor {
    /// Accepts on `listener` within `limits`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            open: Arc::default(),
        }
    }

    /// The open connections, for marking them started.
    pub fn open(&self) -> Arc<Open> {
        self.open.clone()
    }

    /// The next connection, once a slot is free.
    ///
    /// # Errors
    /// What accepting fails with (after a short pause, so a loop over
    /// `accept` does not spin when the process is out of descriptors).
    pub async fn accept(&self) -> io::Result<Guarded> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("the listener is closed"))?;
        let (tcp, peer) = match self.listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(e);
            }
        };
        // Small answers (a resolve, a pin) must not wait for Nagle's
        // algorithm and the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let started = Started::default();
        self.open
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, started.clone());
        Ok(Guarded {
            tcp,
            _slot: slot,
            started,
            head_by: Some(Box::pin(tokio::time::sleep(self.limits.header_timeout))),
            write_idle: self.limits.write_idle,
            stalled: None,
            open: self.open.clone(),
            peer,
        })
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<Guarded>> + Send {
        futures::stream::unfold(self, |a| async move {
            let next = a.accept().await;
            Some((next, a))
        })
    }
}

/// A connection held to its listener's limits; gives its slot back when
/// dropped.
#[derive(Debug)]
pub struct Guarded {
    tcp: TcpStream,
    _slot: OwnedSemaphorePermit,
    started: Started,
    /// The header deadline, until the first request head arrives.
    head_by: Option<Pin<Box<Sleep>>>,
    write_idle: Duration,
    /// Since when writes wait for the client.
    stalled: Option<Pin<Box<Sleep>>>,
    open: Arc<Open>,
    peer: SocketAddr,
}

impl Guarded {
    /// Whether a request has arrived, for the HTTP listener's service.
    pub fn started(&self) -> Started {
        self.started.clone()
    }

    /// The header deadline passed with no request head.
    fn head_late(&mut self, cx: &mut Context<'_>) -> bool {
        if self.started.is_set() {
            self.head_by = None;
            return false;
        }
        let late = self
            .head_by
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready());
        if late {
            metrics::counter!("stackpin_connections_cut_total", "reason" => "header_timeout")
                .increment(1);
        }
        late
    }

    /// Tracks a write that waits: an error once it has waited too long.
    fn stall(&mut self, cx: &mut Context<'_>, pending: bool) -> io::Result<()> {
        if !pending {
            self.stalled = None;
            return Ok(());
        }
        let idle = self.write_idle;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if stalled.as_mut().poll(cx).is_ready() {
            metrics::counter!("stackpin_connections_cut_total", "reason" => "client_not_reading")
                .increment(1);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for stream_idle_timeout",
            ));
        }
        Ok(())
    }
}

fn header_timeout() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no complete request within header_timeout of accepting the connection",
    )
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A new connection from the same address (a reused port) may have
        // taken the entry already: leave its own alone.
        if open
            .get(&self.peer)
            .is_some_and(|s| Arc::ptr_eq(&s.0, &self.started.0))
        {
            open.remove(&self.peer);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_late(cx) {
            return Poll::Ready(Err(header_timeout()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, data);
        this.stall(cx, r.is_pending())?;
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.stall(cx, r.is_pending())?;
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_flush(cx);
        this.stall(cx, r.is_pending())?;
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.tcp.local_addr().ok(),
            remote_addr: Some(self.peer),
        }
    }
}

/// How many WatchLog streams may be open at once.
#[derive(Clone, Copy, Debug)]
pub struct WatchLimits {
    /// On the listener, in all.
    pub total: usize,
    /// Per principal (all anonymous readers are one).
    pub per_principal: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            total: crate::defaults::MAX_WATCH_STREAMS,
            per_principal: crate::defaults::MAX_WATCH_STREAMS_PER_PRINCIPAL,
        }
    }
}

/// The watch streams open now, by principal.
#[derive(Debug, Default)]
pub struct Watches {
    limits: WatchLimits,
    open: Mutex<HashMap<String, usize>>,
}

/// One open watch stream; its place is given back when dropped.
#[derive(Debug)]
pub struct WatchSlot {
    watches: Arc<Watches>,
    principal: String,
}

impl Watches {
    /// Watches bounded by `limits`.
    pub fn new(limits: WatchLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    /// A place for one more watch stream of `principal`.
    ///
    /// # Errors
    /// Busy (RESOURCE_EXHAUSTED) when the listener or the principal has
    /// as many open as it may.
    pub fn open(self: &Arc<Self>, principal: &str) -> crate::error::Result<WatchSlot> {
        use crate::error::{Error, Kind};
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let mine = open.get(principal).copied().unwrap_or(0);
        let refused = |what: String| {
            metrics::counter!("stackpin_watch_refusals_total").increment(1);
            Err(Error::new(Kind::Busy, what))
        };
        if total >= self.limits.total {
            return refused(format!(
                "the registry has {total} watch streams open, as many as it serves (setting                  max_watch_streams): retry shortly"
            ));
        }
        if mine >= self.limits.per_principal {
            return refused(format!(
                "{principal} has {mine} watch streams open, as many as one principal may                  (setting max_watch_streams_per_principal): close one first"
            ));
        }
        open.insert(principal.to_owned(), mine + 1);
        metrics::gauge!("stackpin_watch_streams").set((total + 1) as f64);
        Ok(WatchSlot {
            watches: self.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .watches
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
        metrics::gauge!("stackpin_watch_streams").set(open.values().sum::<usize>() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn pair(limits: ConnectionLimits) -> (Acceptor, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (Acceptor::new(listener, limits), addr)
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_at_the_header_deadline_and_a_started_one_is_not() {
        let limits = ConnectionLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(200),
            write_idle: Duration::from_secs(5),
        };
        let (acceptor, addr) = pair(limits).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = acceptor.accept().await.unwrap();
        let mut buf = [0u8; 8];
        let e = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut conn = acceptor.accept().await.unwrap();
        acceptor.open().mark(talker.local_addr().unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        talker.write_all(b"hi").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);
    }

    #[test]
    fn watches_are_bounded_in_all_and_per_principal() {
        let w = Watches::new(WatchLimits {
            total: 3,
            per_principal: 2,
        });
        let a1 = w.open("a").unwrap();
        let _a2 = w.open("a").unwrap();
        let e = w.open("a").unwrap_err();
        assert!(
            e.message().contains("max_watch_streams_per_principal"),
            "{e}"
        );
        let _b1 = w.open("b").unwrap();
        let e = w.open("c").unwrap_err();
        assert!(e.message().contains("max_watch_streams"), "{e}");
        drop(a1);
        w.open("c").unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(5),
            write_idle: Duration::from_secs(5),
        };
        let (acceptor, addr) = pair(limits).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = acceptor.accept().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(200), acceptor.accept()).await;
        assert!(
            second.is_err(),
            "a second connection was served beyond the cap"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), acceptor.accept())
            .await
            .unwrap()
            .unwrap();
    }
}
