//! A lying registry: a gRPC proxy over a real `stackpin-registry` that
//! forwards every call and rewrites the answers on the way back, as an
//! attacker who controls the network (or the registry) would.
//!
//! Each method has an optional hook ([`Hooks`]): a unary answer is handed
//! to a [`Rewrite`] before it is returned; each item of a stream is handed
//! to a [`Filter`], which may rewrite it or drop it. With no hook set the
//! proxy is transparent, which `tests/lying_registry.rs` checks first, so
//! a refusal seen with a hook is the hook's doing.
//!
//! The proxy runs on a runtime of its own (a background thread), so the
//! synchronous test harness can drive the real CLI against it.

#![allow(clippy::unwrap_used)] // a test fixture: failing loudly is the point

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt as _};
use stackpin_proto::v1 as pb;
use stackpin_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Rewrites a unary answer in place.
pub type Rewrite<T> = Arc<dyn Fn(&mut T) + Send + Sync>;
/// Rewrites a stream item, or drops it (`None`).
pub type Filter<T> = Arc<dyn Fn(T) -> Option<T> + Send + Sync>;

/// What the proxy does to each kind of answer; `None` forwards it as is.
#[derive(Clone, Default)]
pub struct Hooks {
    pub resolve: Option<Rewrite<pb::ResolveResponse>>,
    pub pin: Option<Rewrite<pb::PinResponse>>,
    pub history: Option<Rewrite<pb::HistoryResponse>>,
    pub list_environments: Option<Rewrite<pb::ListEnvironmentsResponse>>,
    pub list_evidence: Option<Rewrite<pb::ListEvidenceResponse>>,
    pub get_posture: Option<Rewrite<pb::GetPostureResponse>>,
    pub stat_artifact: Option<Rewrite<pb::Artifact>>,
    pub get_checkpoint: Option<Rewrite<pb::Checkpoint>>,
    pub list_entries: Option<Filter<pb::LogEntry>>,
    pub watch_log: Option<Filter<pb::WatchEvent>>,
}

/// A running proxy; stops when dropped.
pub struct Lying {
    addr: SocketAddr,
    hooks: Arc<Mutex<Hooks>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lying {
    /// Starts a proxy on 127.0.0.1:0 in front of the registry at
    /// `upstream` (a URL), forwarding everything unchanged.
    pub fn start(upstream: &str) -> Self {
        let hooks = Arc::new(Mutex::new(Hooks::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.to_owned();
        let shared = hooks.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let channel = Channel::from_shared(upstream).unwrap().connect_lazy();
                let proxy = Proxy {
                    upstream: RegistryClient::new(channel),
                    hooks: shared,
                };
                tonic::transport::Server::builder()
                    .add_service(pb::registry_server::RegistryServer::new(proxy))
                    .serve_with_incoming_shutdown(
                        futures::stream::unfold(listener, |listener| async move {
                            let connection = listener.accept().await.map(|(stream, _)| stream);
                            Some((connection, listener))
                        }),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().expect("the proxy binds");
        Self {
            addr,
            hooks,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The proxy's URL, for `--server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the hooks for the calls that follow.
    pub fn set(&self, change: impl FnOnce(&mut Hooks)) {
        change(&mut self.hooks.lock().unwrap());
    }

    /// Forwards everything unchanged from now on.
    pub fn honest(&self) {
        *self.hooks.lock().unwrap() = Hooks::default();
    }
}

impl Drop for Lying {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Proxy {
    upstream: RegistryClient<Channel>,
    hooks: Arc<Mutex<Hooks>>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The request as the client sent it (its metadata: request ids, tokens),
/// ready to send on.
fn onward<T>(request: Request<T>) -> Request<T> {
    let (metadata, _, message) = request.into_parts();
    Request::from_parts(metadata, Default::default(), message)
}

impl Proxy {
    fn client(&self) -> RegistryClient<Channel> {
        self.upstream.clone()
    }

    /// Applies the hook `pick` chooses to a unary answer.
    fn rewrite<T>(
        &self,
        answer: Response<T>,
        pick: impl FnOnce(&Hooks) -> Option<Rewrite<T>>,
    ) -> Result<Response<T>, Status> {
        let mut answer = answer.into_inner();
        if let Some(hook) = pick(&self.hooks.lock().unwrap()) {
            hook(&mut answer);
        }
        Ok(Response::new(answer))
    }

    /// Passes a stream through the filter `pick` chooses, item by item.
    fn filter<T: Send + 'static>(
        &self,
        stream: tonic::Streaming<T>,
        pick: impl FnOnce(&Hooks) -> Option<Filter<T>>,
    ) -> Result<Response<Streamed<T>>, Status> {
        let hook = pick(&self.hooks.lock().unwrap());
        let out = stream.filter_map(move |item| {
            let item = match (item, &hook) {
                (Ok(item), Some(hook)) => hook(item).map(Ok),
                (item, _) => Some(item),
            };
            std::future::ready(item)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for Proxy {
    async fn publish(
        &self,
        request: Request<tonic::Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let (metadata, _, parts) = request.into_parts();
        let parts = parts.filter_map(|p| std::future::ready(p.ok()));
        let request = Request::from_parts(metadata, Default::default(), parts);
        self.client().publish(request).await
    }

    type GetArtifactStream = Streamed<pb::GetArtifactResponse>;

    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        let stream = self.client().get_artifact(onward(request)).await?;
        self.filter(stream.into_inner(), |_| None)
    }

    async fn stat_artifact(
        &self,
        request: Request<pb::StatArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        let answer = self.client().stat_artifact(onward(request)).await?;
        self.rewrite(answer, |h| h.stat_artifact.clone())
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        self.client().list_artifacts(onward(request)).await
    }

    async fn pin(
        &self,
        request: Request<pb::PinRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        let answer = self.client().pin(onward(request)).await?;
        self.rewrite(answer, |h| h.pin.clone())
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let answer = self.client().resolve(onward(request)).await?;
        self.rewrite(answer, |h| h.resolve.clone())
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let answer = self.client().history(onward(request)).await?;
        self.rewrite(answer, |h| h.history.clone())
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        let answer = self.client().list_environments(onward(request)).await?;
        self.rewrite(answer, |h| h.list_environments.clone())
    }

    async fn record_snapshot(
        &self,
        request: Request<pb::RecordSnapshotRequest>,
    ) -> Result<Response<pb::RecordedEntry>, Status> {
        self.client().record_snapshot(onward(request)).await
    }

    async fn record_drill(
        &self,
        request: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::RecordedEntry>, Status> {
        self.client().record_drill(onward(request)).await
    }

    async fn list_evidence(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        let answer = self.client().list_evidence(onward(request)).await?;
        self.rewrite(answer, |h| h.list_evidence.clone())
    }

    async fn get_posture(
        &self,
        request: Request<pb::GetPostureRequest>,
    ) -> Result<Response<pb::GetPostureResponse>, Status> {
        let answer = self.client().get_posture(onward(request)).await?;
        self.rewrite(answer, |h| h.get_posture.clone())
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let answer = self.client().get_checkpoint(onward(request)).await?;
        self.rewrite(answer, |h| h.get_checkpoint.clone())
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::LogEntry>, Status> {
        self.client().get_entry(onward(request)).await
    }

    type ListEntriesStream = Streamed<pb::LogEntry>;

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<Self::ListEntriesStream>, Status> {
        let stream = self.client().list_entries(onward(request)).await?;
        self.filter(stream.into_inner(), |h| h.list_entries.clone())
    }

    type WatchLogStream = Streamed<pb::WatchEvent>;

    async fn watch_log(
        &self,
        request: Request<pb::WatchLogRequest>,
    ) -> Result<Response<Self::WatchLogStream>, Status> {
        let stream = self.client().watch_log(onward(request)).await?;
        self.filter(stream.into_inner(), |h| h.watch_log.clone())
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        self.client().get_inclusion_proof(onward(request)).await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        self.client().get_consistency_proof(onward(request)).await
    }

    async fn add_key(
        &self,
        request: Request<pb::AddKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        self.client().add_key(onward(request)).await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        self.client().revoke_key(onward(request)).await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.client().list_keys(onward(request)).await
    }
}
