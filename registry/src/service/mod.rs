//! The gRPC service: unwraps requests, converts them to domain types, calls
//! the registry, converts the answer back. The only module that sees proto
//! types.
//!
//! Long because it holds every RPC's thin handler and the trait impl that
//! wraps each with metrics and a log line; conversions, streams, evidence
//! and watches are already in their own files.

mod convert;
mod evidence;
mod status;
mod streams;
mod watch;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use stackpin_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Action, Authorizer, Principal};
use crate::error::{Error, Kind};
use crate::ids::{EnvName, Reason};
use crate::observe;
use crate::registry::{HistoryQuery, Query, Registry};
use crate::signing::KeyId;

/// Most entries one ListEntries call streams.
const MAX_LIST_ENTRIES: u64 = 100_000;

/// The generated tonic server type of the registry service.
pub type Server = pb::registry_server::RegistryServer<RegistryService>;

/// Size of the chunks artifacts are streamed in.
pub const CHUNK_BYTES: usize = crate::defaults::CHUNK_BYTES;

/// The `stackpin.v1.Registry` service.
#[derive(Clone)]
pub struct RegistryService {
    registry: Arc<Registry>,
    auth: Authorizer,
    /// The largest message a client may send (a publish chunk included).
    max_message_bytes: usize,
    /// The watch streams open, bounded apart from the byte budget.
    watches: Arc<crate::guard::Watches>,
    /// Becomes true when the registry starts stopping: watch streams end
    /// at once then (their clients resume from their cursor elsewhere or
    /// after the restart) instead of holding the stop for its grace period.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl RegistryService {
    /// Serves `registry`, letting through what `auth` allows.
    pub fn new(registry: Arc<Registry>, auth: Authorizer) -> Self {
        Self {
            registry,
            auth,
            max_message_bytes: crate::defaults::MAX_MESSAGE_BYTES,
            watches: crate::guard::Watches::new(crate::guard::WatchLimits::default()),
            stopping: None,
        }
    }

    /// Ends watch streams when `stopping` becomes true.
    #[must_use]
    pub fn with_stopping(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Bounds the watch streams open at once by `limits`.
    #[must_use]
    pub fn with_watch_limits(mut self, limits: crate::guard::WatchLimits) -> Self {
        self.watches = crate::guard::Watches::new(limits);
        self
    }

    /// The tonic server wrapper, with a message limit (artifacts travel in
    /// 1 MiB chunks, so the limit bounds memory, not artifact size).
    pub fn into_server(
        mut self,
        max_message_bytes: usize,
    ) -> pb::registry_server::RegistryServer<Self> {
        self.max_message_bytes = max_message_bytes;
        pb::registry_server::RegistryServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes.max(CHUNK_BYTES * 2))
    }

    /// `work`, a read of the index (sled, pread of its files), run on the
    /// blocking pool so that a slow read never stalls the runtime threads.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Registry) -> crate::error::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let registry = self.registry.clone();
        Ok(crate::blocking::run(move || work(&registry)).await?)
    }

    /// Who the request is and whether it may do `action`.
    fn authorize<T>(&self, request: &Request<T>, action: Action<'_>) -> Result<Principal, Status> {
        if let Some(e) = self.registry.contradicted() {
            return Err(e.into());
        }
        if !matches!(action, Action::Read)
            && let Some(e) = self.registry.refuses_writes()
        {
            return Err(e.into());
        }
        let bearer = match request.metadata().get("authorization") {
            None => None,
            Some(value) => Some(crate::auth::bearer(value.to_str().ok())?),
        };
        let cn = request.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|c| crate::auth::common_name(c.as_ref()))
        });
        Ok(self.auth.authorize(bearer, cn.as_deref(), action)?)
    }
}

fn env(text: &str) -> Result<EnvName, Status> {
    Ok(text.parse::<EnvName>().map_err(Error::from)?)
}

type ArtifactStream = Pin<Box<dyn Stream<Item = Result<pb::GetArtifactResponse, Status>> + Send>>;
type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// The handlers; the trait impl below wraps each with metrics and a log line.
impl RegistryService {
    async fn publish_inner(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.authorize(&request, Action::Publish)?;
        let limits = self.registry.limits();
        let idle = limits.stream_idle_timeout;
        let mut stream = request.into_inner();
        let header = match streams::next(&mut stream, idle, self.max_message_bytes).await? {
            Some(pb::PublishRequest {
                part: Some(pb::publish_request::Part::Header(h)),
            }) => h,
            _ => return Err(Error::invalid("a publish must start with its header").into()),
        };
        // What the transport may hold for this stream while bytes arrive:
        // the message being decoded and the chunk in hand.
        let room = self
            .registry
            .budget()
            .reserve(2 * self.max_message_bytes as u64, "a publish")
            .await?;
        let mut pending = self
            .registry
            .begin_publish_once(
                &header.release_id,
                &header.media_type,
                &header.envelope,
                header.size,
                Some(&header.request_id),
            )
            .await?;
        while let Some(message) = streams::next(&mut stream, idle, self.max_message_bytes).await? {
            match message.part {
                Some(pb::publish_request::Part::Chunk(chunk)) => pending.push(chunk).await?,
                _ => return Err(Error::invalid("a publish has exactly one header").into()),
            }
        }
        drop(room);
        let published = self.registry.finish_publish(pending).await?;
        Ok(Response::new(pb::PublishResponse {
            artifact: Some(convert::artifact(&published.artifact)),
            created: published.created,
        }))
    }

    async fn get_artifact_inner(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<ArtifactStream>, Status> {
        self.authorize(&request, Action::Read)?;
        let what = convert::artifact_ref(request.into_inner().artifact)?;
        let record = self.read(move |r| r.artifact(&what)).await?;
        // Held while the stream lives: a chunk in the channel, one being
        // encoded and one in the transport's send buffer.
        let room = self
            .registry
            .budget()
            .reserve(3 * CHUNK_BYTES as u64, "a download")
            .await?;
        let chunks = self.registry.artifact_stream(&record, CHUNK_BYTES).await?;
        let head = pb::GetArtifactResponse {
            part: Some(pb::get_artifact_response::Part::Artifact(
                convert::artifact(&record),
            )),
        };
        use futures::StreamExt as _;
        let chunks = chunks.map(|item| {
            item.map(|chunk| pb::GetArtifactResponse {
                part: Some(pb::get_artifact_response::Part::Chunk(chunk)),
            })
        });
        let limits = self.registry.limits();
        let stream = streams::fed(
            futures::stream::once(async { Ok(head) }).chain(chunks),
            limits.stream_idle_timeout,
            limits.request_timeout,
            room,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stat_artifact_inner(
        &self,
        request: Request<pb::StatArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        self.authorize(&request, Action::Read)?;
        let what = convert::artifact_ref(request.into_inner().artifact)?;
        let record = self.read(move |r| r.artifact(&what)).await?;
        Ok(Response::new(convert::artifact(&record)))
    }

    async fn list_artifacts_inner(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let after = convert::page_token(&req.page_token)?;
        let size = req.page_size as usize;
        let (page, next) = self
            .read(move |r| r.list_artifacts(after.as_ref(), size))
            .await?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: page.iter().map(convert::artifact).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn pin_inner(
        &self,
        request: Request<pb::PinRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        // Who asks comes before what is asked: a caller without the pin role
        // is told that, not what is wrong with its input.
        self.authorize(&request, Action::PinAnywhere)?;
        let env = env(&request.get_ref().env)?;
        let who = self.authorize(&request, Action::Pin(&env))?;
        let req = request.into_inner();
        let what = convert::artifact_ref(req.artifact)?;
        let activated_at = convert::optional_time("activated_at", req.activated_at)?;
        let reason: Reason = req.reason.parse().map_err(Error::from)?;
        let position = convert::db_position(req.db_position)?;
        let runtime_image = match req.runtime_image.as_str() {
            "" => None,
            image => Some(image.parse().map_err(Error::from)?),
        };
        let pin = crate::registry::PinRequest {
            env,
            artifact: what,
            activated_at,
            db_position: position,
            reason,
            runtime_image,
            known_env_only: req.known_env_only,
        };
        let pin = self
            .registry
            .pin_said(&pin, &who.name, Some(&req.request_id))
            .await?;
        let (pin, replayed) = pin;
        let (checkpoint, mut entries) = self.registry.prove_all(&[pin.log_index]).await?;
        Ok(Response::new(pb::PinResponse {
            pin: Some(convert::pin(&pin)),
            entry: entries.pop().as_ref().map(convert::proved_entry),
            checkpoint: checkpoint.note.to_string(),
            replayed,
        }))
    }

    async fn resolve_inner(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let env = env(&req.env)?;
        let query = match convert::db_position(req.position)? {
            Some(p) => match p.ordered().map_err(Error::from)? {
                Some(target) => Query::Position(target),
                None => {
                    return Err(Error::invalid(
                        "resolve by position needs an LSN or a Litestream TXID; restore points \
                         are not ordered",
                    )
                    .into());
                }
            },
            None => Query::At {
                at: convert::required_time("at", req.at)?,
                margin: convert::margin(req.margin)?,
            },
        };
        if req.fresh {
            self.registry.sync().await?;
        }
        let proved = self
            .registry
            .resolve_proved(&env, &query, req.fresh)
            .await?;
        Ok(Response::new(convert::resolution(&proved)))
    }

    async fn history_inner(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let env = env(&req.env)?;
        let query = HistoryQuery {
            before: convert::optional_time("before", req.before)?,
            since: convert::optional_time("since", req.since)?,
            limit: req.limit as usize,
            from_seq: convert::page_token(&req.page_token)?,
            request_id: Some(req.request_id).filter(|id| !id.is_empty()),
        };
        let page = self.read(move |r| r.history(&env, &query)).await?;
        let indexes: Vec<u64> = page.pins.iter().map(|p| p.log_index).collect();
        let (checkpoint, entries) = self.registry.prove_all(&indexes).await?;
        Ok(Response::new(pb::HistoryResponse {
            pins: page.pins.iter().map(convert::pin).collect(),
            next_page_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
            entries: entries.iter().map(convert::proved_entry).collect(),
            checkpoint: checkpoint.note.to_string(),
        }))
    }

    async fn list_environments_inner(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(env(token).map_err(|_| {
                Status::invalid_argument(format!("page_token {token:?} is not one this RPC gave"))
            })?),
        };
        let limit = req.limit as usize;
        let (pins, next) = self
            .read(move |r| r.environments(after.as_ref(), limit))
            .await?;
        let indexes: Vec<u64> = pins.iter().map(|p| p.log_index).collect();
        let (checkpoint, entries) = self.registry.prove_all(&indexes).await?;
        Ok(Response::new(pb::ListEnvironmentsResponse {
            entries: entries.iter().map(convert::proved_entry).collect(),
            checkpoint: checkpoint.note.to_string(),
            environments: pins
                .iter()
                .map(|p| pb::Environment {
                    env: p.entry.env.to_string(),
                    latest: Some(convert::pin(p)),
                })
                .collect(),
            next_page_token: next.map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_checkpoint_inner(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        self.authorize(&request, Action::Read)?;
        let cp = self.registry.latest_checkpoint().await?;
        Ok(Response::new(convert::checkpoint(&cp)))
    }

    async fn get_entry_inner(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::LogEntry>, Status> {
        self.authorize(&request, Action::Read)?;
        let index = request.into_inner().index;
        let entry = self.registry.entry(index).await?;
        Ok(Response::new(pb::LogEntry { index, entry }))
    }

    async fn list_entries_inner(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let size = self.registry.checkpoint()?.size;
        let end = if req.end == 0 {
            size
        } else {
            req.end.min(size)
        };
        if req.start > end {
            return Err(
                Error::invalid(format!("start {} is past the end {end}", req.start)).into(),
            );
        }
        let end = end.min(req.start.saturating_add(MAX_LIST_ENTRIES));
        // Like a download: an entry in the channel, one being encoded, one
        // in the send buffer; cut when the client stops reading.
        let room = self
            .registry
            .budget()
            .reserve(3 * CHUNK_BYTES as u64, "a list of entries")
            .await?;
        use futures::StreamExt as _;
        let entries = self
            .registry
            .entries(req.start, end)
            .map(|(index, item)| item.map(|entry| pb::LogEntry { index, entry }));
        let limits = self.registry.limits();
        let stream = streams::fed(
            entries,
            limits.stream_idle_timeout,
            limits.request_timeout,
            room,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_log_inner(
        &self,
        request: Request<pb::WatchLogRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let who = self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let filter = watch::Filter::new(&req.env, req.types)?;
        let size = self.registry.checkpoint()?.size;
        if req.from > size {
            return Err(Error::invalid(format!(
                "from {} is past the end of the log ({size} entries)",
                req.from
            ))
            .into());
        }
        // A watch carries entries and proofs, never artifact bytes: it takes
        // a place among the watches, not a share of the byte budget.
        let place = self.watches.open(&who.name)?;
        let limits = self.registry.limits();
        // Heartbeats well inside the idle timeout; the request deadline
        // still ends the stream, and the watcher resumes from its cursor.
        let events = watch::events(
            self.registry.clone(),
            req.from,
            filter,
            limits.stream_idle_timeout / 3,
        );
        let events = streams::until_stopping(events, self.stopping.clone());
        let stream = streams::fed(
            events,
            limits.stream_idle_timeout,
            limits.request_timeout,
            place,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_inclusion_proof_inner(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let size = match req.tree_size {
            0 => self.registry.latest_checkpoint().await?.size,
            n => n,
        };
        let index = req.index;
        let proof = self.read(move |r| r.inclusion_proof(index, size)).await?;
        Ok(Response::new(pb::InclusionProof {
            index: req.index,
            tree_size: size,
            hashes: convert::hashes(&proof),
        }))
    }

    async fn get_consistency_proof_inner(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        self.authorize(&request, Action::Read)?;
        let req = request.into_inner();
        let new = match req.new_size {
            0 => self.registry.latest_checkpoint().await?.size,
            n => n,
        };
        let old = req.old_size;
        let proof = self.read(move |r| r.consistency_proof(old, new)).await?;
        Ok(Response::new(pb::ConsistencyProof {
            old_size: req.old_size,
            new_size: new,
            hashes: convert::hashes(&proof),
        }))
    }

    async fn add_key_inner(
        &self,
        request: Request<pb::AddKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        let who = self.authorize(&request, Action::Admin)?;
        let req = request.into_inner();
        let valid_from = convert::optional_time("valid_from", req.valid_from)?;
        let reason: Reason = req.reason.parse().map_err(Error::from)?;
        let key = self
            .registry
            .add_key_once(
                &req.public_key_pem,
                valid_from,
                &reason,
                &who.name,
                Some(&req.request_id),
            )
            .await?;
        let (key, replayed) = key;
        Ok(Response::new(pb::PublisherKey {
            replayed,
            ..convert::publisher_key(&key)
        }))
    }

    async fn revoke_key_inner(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        let who = self.authorize(&request, Action::Admin)?;
        let req = request.into_inner();
        let key_id = KeyId::parse(&req.key_id).map_err(Error::from)?;
        let at = convert::optional_time("revoked_at", req.revoked_at)?;
        let reason: Reason = req.reason.parse().map_err(Error::from)?;
        let key = self
            .registry
            .revoke_key_once(&key_id, at, &reason, &who.name, Some(&req.request_id))
            .await?;
        let (key, replayed) = key;
        Ok(Response::new(pb::PublisherKey {
            replayed,
            ..convert::publisher_key(&key)
        }))
    }

    async fn list_keys_inner(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.authorize(&request, Action::Read)?;
        let keys = self.read(Registry::keys).await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(convert::publisher_key).collect(),
        }))
    }
}

impl RegistryService {
    /// Runs `handler` with what every RPC gets: a request id, one log
    /// line, the request metrics (see [`observe`]) and the request deadline
    /// (`request_timeout`; a response stream's own deadline is in
    /// [`streams::fed`]). Passing it answers DEADLINE_EXCEEDED, as gRPC
    /// says a deadline is reported.
    async fn observed<T, R, F>(
        &self,
        rpc: &'static str,
        request: Request<T>,
        handler: impl FnOnce(Request<T>) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        use tracing::Instrument as _;
        let observed = observe::Observed::begin(rpc, &request);
        let deadline = self.registry.limits().request_timeout;
        // Every line logged while serving carries the request's id.
        let span = tracing::info_span!("request", request_id = %observed.request_id());
        let served = tokio::time::timeout(deadline, handler(request)).instrument(span);
        let result = match served.await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                Kind::Deadline,
                format!(
                    "the request ran past the registry's request_timeout of {}s; a write may \
                     or may not have been recorded: retry it with the same request id",
                    deadline.as_secs_f64()
                ),
            )
            .into()),
        };
        // A failure the caller cannot fix names the id its details are
        // logged under.
        let result = result.map_err(|status| {
            if matches!(
                status.code(),
                tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::DataLoss
            ) {
                let message = format!(
                    "{} [request id {}]",
                    status.message(),
                    observed.request_id()
                );
                Status::with_details(status.code(), message, status.details().to_vec().into())
            } else {
                status
            }
        });
        observed.finish(&result);
        result
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    type GetArtifactStream = ArtifactStream;
    type ListEntriesStream = EntryStream;
    type WatchLogStream = WatchStream;

    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.observed("Publish", request, |r| self.publish_inner(r))
            .await
    }

    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        self.observed("GetArtifact", request, |r| self.get_artifact_inner(r))
            .await
    }

    async fn stat_artifact(
        &self,
        request: Request<pb::StatArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        self.observed("StatArtifact", request, |r| self.stat_artifact_inner(r))
            .await
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        self.observed("ListArtifacts", request, |r| self.list_artifacts_inner(r))
            .await
    }

    async fn pin(
        &self,
        request: Request<pb::PinRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        self.observed("Pin", request, |r| self.pin_inner(r)).await
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.observed("Resolve", request, |r| self.resolve_inner(r))
            .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.observed("History", request, |r| self.history_inner(r))
            .await
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        self.observed("ListEnvironments", request, |r| {
            self.list_environments_inner(r)
        })
        .await
    }

    async fn record_snapshot(
        &self,
        request: Request<pb::RecordSnapshotRequest>,
    ) -> Result<Response<pb::RecordedEntry>, Status> {
        self.observed("RecordSnapshot", request, |r| self.record_snapshot_inner(r))
            .await
    }

    async fn record_drill(
        &self,
        request: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::RecordedEntry>, Status> {
        self.observed("RecordDrill", request, |r| self.record_drill_inner(r))
            .await
    }

    async fn list_evidence(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        self.observed("ListEvidence", request, |r| self.list_evidence_inner(r))
            .await
    }

    async fn get_posture(
        &self,
        request: Request<pb::GetPostureRequest>,
    ) -> Result<Response<pb::GetPostureResponse>, Status> {
        self.observed("GetPosture", request, |r| self.get_posture_inner(r))
            .await
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        self.observed("GetCheckpoint", request, |r| self.get_checkpoint_inner(r))
            .await
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::LogEntry>, Status> {
        self.observed("GetEntry", request, |r| self.get_entry_inner(r))
            .await
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<Self::ListEntriesStream>, Status> {
        self.observed("ListEntries", request, |r| self.list_entries_inner(r))
            .await
    }

    async fn watch_log(
        &self,
        request: Request<pb::WatchLogRequest>,
    ) -> Result<Response<Self::WatchLogStream>, Status> {
        self.observed("WatchLog", request, |r| self.watch_log_inner(r))
            .await
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        self.observed("GetInclusionProof", request, |r| {
            self.get_inclusion_proof_inner(r)
        })
        .await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        self.observed("GetConsistencyProof", request, |r| {
            self.get_consistency_proof_inner(r)
        })
        .await
    }

    async fn add_key(
        &self,
        request: Request<pb::AddKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        self.observed("AddKey", request, |r| self.add_key_inner(r))
            .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        self.observed("RevokeKey", request, |r| self.revoke_key_inner(r))
            .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.observed("ListKeys", request, |r| self.list_keys_inner(r))
            .await
    }
}
