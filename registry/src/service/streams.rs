//! Deadlines for streams in both directions, and the transport's own
//! failures in the registry's words.
//!
//! A request stream (publish) must send its next message within the idle
//! timeout; the request deadline bounds the whole call (see `observed`). A
//! response stream (download) is fed by a task of its own through a
//! one-slot channel: a client that takes nothing for the idle timeout, or a
//! stream still running at the deadline, is cut with DEADLINE_EXCEEDED and
//! its storage read dropped. The stream's budget reservation is dropped
//! with the stream itself, once the transport can hold none of its bytes.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use crate::error::{Error, Kind, Result};

/// The next message of a request stream, within `idle`.
///
/// # Errors
/// Deadline when nothing arrives in time; Invalid for bytes that are not a
/// message; TooLarge for a message over `max_message_bytes`.
pub async fn next<T>(
    stream: &mut Streaming<T>,
    idle: Duration,
    max_message_bytes: usize,
) -> std::result::Result<Option<T>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(status)) => Err(transport_status(status, max_message_bytes)),
        Err(_) => Err(Error::new(
            Kind::Deadline,
            format!(
                "the stream sent nothing for {}s (setting stream_idle_timeout); nothing was stored",
                idle.as_secs_f64()
            ),
        )
        .into()),
    }
}

/// A status tonic made while reading a request stream, in the registry's
/// kinds: an oversized message is a limit (RESOURCE_EXHAUSTED). Undecodable
/// bytes are INVALID_ARGUMENT already (`stackpin_proto::codec`).
pub fn transport_status(status: Status, max_message_bytes: usize) -> Status {
    let message = status.message();
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted if message.contains("too large") => Error::new(
            Kind::TooLarge,
            format!(
                "a message is larger than the registry's limit of {max_message_bytes} bytes \
                     (setting max_message_bytes): send artifacts in chunks of 1 MiB"
            ),
        )
        .into(),
        _ => status,
    }
}

/// `source` fed to the client through a one-slot channel by a task of its
/// own, cut at `idle` silence (the client taking nothing, or storage
/// giving nothing) or at `deadline` in all; `room` (a budget reservation,
/// a watch's place) is held until the returned stream is dropped.
pub fn fed<T: Send + 'static>(
    source: impl Stream<Item = Result<T>> + Send + 'static,
    idle: Duration,
    deadline: Duration,
    room: impl Send + 'static,
) -> impl Stream<Item = std::result::Result<T, Status>> + Send + 'static {
    let (tx, rx) = mpsc::channel(1);
    let (cut_tx, cut_rx) = oneshot::channel::<Status>();
    let end = Instant::now() + deadline;
    tokio::spawn(async move {
        let mut source = std::pin::pin!(source);
        loop {
            let by = (Instant::now() + idle).min(end);
            let item = match tokio::time::timeout_at(by, source.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(_) => {
                    let _ = cut_tx.send(cut(idle, end, "storage gave nothing"));
                    return;
                }
            };
            let failed = item.is_err();
            let by = (Instant::now() + idle).min(end);
            match tokio::time::timeout_at(by, tx.send(item.map_err(Status::from))).await {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return, // the error went out, or the client left
                Err(_) => {
                    let _ = cut_tx.send(cut(idle, end, "the client took nothing"));
                    return;
                }
            }
        }
    });
    let trailer = futures::stream::once(cut_rx).filter_map(|cut| async move { cut.ok().map(Err) });
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .chain(trailer)
        .map(move |item| {
            let _held = &room;
            item
        })
}

/// `source` until `stopping` turns true, then an UNAVAILABLE error that
/// ends it (a client resumes from its cursor); `source` as is without a
/// `stopping`, or once its sender is gone without turning true.
pub fn until_stopping<T: Send + 'static>(
    source: impl Stream<Item = Result<T>> + Send + 'static,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
) -> impl Stream<Item = Result<T>> + Send + 'static {
    let stop = futures::stream::once(async move {
        let stopped = match stopping {
            Some(mut rx) => rx.wait_for(|s| *s).await.is_ok(),
            None => false,
        };
        if !stopped {
            futures::future::pending::<()>().await;
        }
        Err(Error::new(
            Kind::Unavailable,
            "the registry is stopping; resume from your cursor",
        ))
    });
    futures::stream::select(source, stop)
}

fn cut(idle: Duration, end: Instant, what: &str) -> Status {
    let message = if Instant::now() >= end {
        "the stream ran past the registry's request_timeout and was cut".to_owned()
    } else {
        format!(
            "{what} for {}s (setting stream_idle_timeout); the stream was cut",
            idle.as_secs_f64()
        )
    };
    metrics::counter!("stackpin_streams_cut_total").increment(1);
    Error::new(Kind::Deadline, message).into()
}
