//! The authorization matrix: every RPC × every role, plus no token and an
//! unknown token, with pin scoped to an environment. The server is the real
//! `server::run` on 127.0.0.1:0, called through the generated gRPC client.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use futures::StreamExt as _;
use stackpin_core::digest::Digest;
use stackpin_core::note::{DEFAULT_ORIGIN, NoteSigner};
use stackpin_core::signing::{self, PublicKey, TrustedKeys};
use stackpin_proto::v1 as pb;
use stackpin_proto::v1::registry_client::RegistryClient;
use stackpin_registry::auth::{Authorizer, Role, create_token};
use stackpin_registry::index::Index;
use stackpin_registry::registry::{Limits, Options};
use stackpin_registry::{Registry, server, storage};
use tonic::Code;
use tonic::transport::Channel;

type Client = RegistryClient<Channel>;

fn req<T>(body: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn publish_stream(
    release: &str,
    token: Option<&str>,
) -> tonic::Request<futures::stream::Iter<std::vec::IntoIter<pb::PublishRequest>>> {
    let body = format!("{{\"r\":\"{release}\"}}");
    let env = signing::sign_envelope(
        &signing::publish_statement(&release.parse().unwrap(), &Digest::of(body.as_bytes())),
        &SigningKey::from_bytes(&[3; 32]),
    );
    let msgs = vec![
        pb::PublishRequest {
            part: Some(pb::publish_request::Part::Header(pb::PublishHeader {
                release_id: release.into(),
                media_type: String::new(),
                envelope: env.into(),
                size: body.len() as u64,
                request_id: String::new(),
            })),
        },
        pb::PublishRequest {
            part: Some(pb::publish_request::Part::Chunk(body.into_bytes().into())),
        },
    ];
    req(futures::stream::iter(msgs), token)
}

fn by_release(r: &str) -> Option<pb::ArtifactRef> {
    Some(pb::ArtifactRef {
        r#ref: Some(pb::artifact_ref::Ref::ReleaseId(r.into())),
    })
}

/// Calls one RPC and returns its status code (Ok for success).
async fn call(client: &mut Client, rpc: &str, token: Option<&str>, n: usize) -> Code {
    let now = prost_now();
    let result: Result<(), tonic::Status> = match rpc {
        "Publish" => client
            .publish(publish_stream(&format!("m{n}"), token))
            .await
            .map(drop),
        "GetArtifact" => match client
            .get_artifact(req(
                pb::GetArtifactRequest {
                    artifact: by_release("base"),
                },
                token,
            ))
            .await
        {
            Ok(r) => r.into_inner().message().await.map(drop),
            Err(e) => Err(e),
        },
        "StatArtifact" => client
            .stat_artifact(req(
                pb::StatArtifactRequest {
                    artifact: by_release("base"),
                },
                token,
            ))
            .await
            .map(drop),
        "ListArtifacts" => client
            .list_artifacts(req(pb::ListArtifactsRequest::default(), token))
            .await
            .map(drop),
        "Pin staging" | "Pin prod" | "Pin ../bad" => {
            let env = if rpc.ends_with("staging") {
                "staging"
            } else if rpc.ends_with("bad") {
                "../bad"
            } else {
                "prod"
            };
            client
                .pin(req(
                    pb::PinRequest {
                        env: env.into(),
                        artifact: by_release("base"),
                        activated_at: None,
                        reason: String::new(),
                        db_position: None,
                        request_id: String::new(),
                        runtime_image: String::new(),
                        known_env_only: false,
                    },
                    token,
                ))
                .await
                .map(drop)
        }
        "Resolve" => client
            .resolve(req(
                pb::ResolveRequest {
                    env: "base-env".into(),
                    at: Some(now),
                    margin: None,
                    fresh: false,
                    position: None,
                },
                token,
            ))
            .await
            .map(drop),
        "ListEnvironments" => client
            .list_environments(req(pb::ListEnvironmentsRequest::default(), token))
            .await
            .map(drop),
        "History" => client
            .history(req(
                pb::HistoryRequest {
                    env: "base-env".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "GetCheckpoint" => client
            .get_checkpoint(req(pb::GetCheckpointRequest {}, token))
            .await
            .map(drop),
        "GetEntry" => client
            .get_entry(req(pb::GetEntryRequest { index: 0 }, token))
            .await
            .map(drop),
        "ListEntries" => match client
            .list_entries(req(pb::ListEntriesRequest { start: 0, end: 0 }, token))
            .await
        {
            Ok(r) => r.into_inner().message().await.map(drop),
            Err(e) => Err(e),
        },
        "WatchLog" => match client
            .watch_log(req(
                pb::WatchLogRequest {
                    from: 0,
                    env: String::new(),
                    types: vec![],
                },
                token,
            ))
            .await
        {
            Ok(r) => r.into_inner().message().await.map(drop),
            Err(e) => Err(e),
        },
        "GetInclusionProof" => client
            .get_inclusion_proof(req(
                pb::GetInclusionProofRequest {
                    index: 0,
                    tree_size: 0,
                },
                token,
            ))
            .await
            .map(drop),
        "GetConsistencyProof" => client
            .get_consistency_proof(req(
                pb::GetConsistencyProofRequest {
                    old_size: 1,
                    new_size: 0,
                },
                token,
            ))
            .await
            .map(drop),
        "AddKey" => {
            let key = SigningKey::from_bytes(&[u8::try_from(50 + n % 150).unwrap(); 32]);
            let pem = PublicKey::new(key.verifying_key()).to_pem().unwrap();
            client
                .add_key(req(
                    pb::AddKeyRequest {
                        public_key_pem: pem,
                        valid_from: None,
                        reason: String::new(),
                        request_id: String::new(),
                    },
                    token,
                ))
                .await
                .map(drop)
        }
        "RevokeKey" => client
            .revoke_key(req(
                pb::RevokeKeyRequest {
                    key_id: "0".repeat(64),
                    revoked_at: None,
                    reason: String::new(),
                    request_id: String::new(),
                },
                token,
            ))
            .await
            .map(drop),
        "ListKeys" => client
            .list_keys(req(pb::ListKeysRequest {}, token))
            .await
            .map(drop),
        other => panic!("unknown rpc {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn prost_now() -> prost_types::Timestamp {
    let (seconds, nanos) = stackpin_core::time::Timestamp::now().to_parts();
    prost_types::Timestamp { seconds, nanos }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_every_role() {
    let publisher = SigningKey::from_bytes(&[3; 32]);
    let trusted = TrustedKeys::new([PublicKey::new(publisher.verifying_key())]);
    let signer = NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[4; 32])).unwrap();
    let store = storage::open(&storage::StorageUrl::Memory, &Default::default()).unwrap();
    let registry = Registry::open(
        Index::temporary().unwrap(),
        Options {
            trusted,
            ..Options::new(store, signer)
        },
    )
    .await
    .unwrap();
    // Something to read: an artifact and a pin in base-env.
    let body = b"{\"r\":\"base\"}";
    let env = signing::sign_envelope(
        &signing::publish_statement(&"base".parse().unwrap(), &Digest::of(body)),
        &publisher,
    );
    let mut p = registry
        .begin_publish("base", "", &env, body.len() as u64)
        .await
        .unwrap();
    p.push(bytes::Bytes::copy_from_slice(body)).await.unwrap();
    registry.finish_publish(p).await.unwrap();
    let what = stackpin_registry::registry::ArtifactRef::Release("base".parse().unwrap());
    registry
        .pin(
            &"base-env".parse().unwrap(),
            &what,
            None,
            None,
            &Default::default(),
            "setup",
        )
        .await
        .unwrap();

    let mut tokens = Vec::new();
    let mut configs = Vec::new();
    for (name, roles, envs) in [
        ("publisher", vec![Role::Publish], vec![]),
        ("pinner", vec![Role::Pin], vec!["staging".to_owned()]),
        ("reader", vec![Role::Read], vec![]),
        ("admin", vec![Role::Admin], vec![]),
    ] {
        let (token, cfg) = create_token(name, &roles, &envs, None).unwrap();
        tokens.push((name, token));
        configs.push(cfg);
    }
    let options = server::Options {
        auth: Authorizer::new(&configs, &[], false).unwrap(),
        ..server::Options::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(listener, Arc::new(registry), options, async {
        let _ = stop_rx.await;
    }));
    let mut client = RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let rpcs: [(&str, &str); 18] = [
        ("Publish", "publisher"),
        ("GetArtifact", "reader"),
        ("StatArtifact", "reader"),
        ("ListArtifacts", "reader"),
        ("Pin staging", "pinner"),
        ("Pin prod", "nobody"), // the pinner is scoped to staging
        ("Resolve", "reader"),
        ("History", "reader"),
        ("ListEnvironments", "reader"),
        ("GetCheckpoint", "reader"),
        ("GetEntry", "reader"),
        ("ListEntries", "reader"),
        ("WatchLog", "reader"),
        ("GetInclusionProof", "reader"),
        ("GetConsistencyProof", "reader"),
        ("AddKey", "admin"),
        ("RevokeKey", "admin"),
        ("ListKeys", "reader"),
    ];
    let mut n = 0;
    let mut checked = 0;
    for (rpc, allowed) in rpcs {
        for (name, token) in &tokens {
            n += 1;
            let code = call(&mut client, rpc, Some(token), n).await;
            // An admin also reads.
            if *name == allowed || (allowed == "reader" && *name == "admin") {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{rpc} as {name}: refused ({code:?}) but should be allowed"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{rpc} as {name}");
            }
            checked += 1;
        }
        n += 1;
        assert_eq!(
            call(&mut client, rpc, None, n).await,
            Code::Unauthenticated,
            "{rpc} with no token"
        );
        n += 1;
        assert_eq!(
            call(&mut client, rpc, Some("sp_not_a_token"), n).await,
            Code::Unauthenticated,
            "{rpc} with a bad token"
        );
        checked += 2;
    }
    assert_eq!(checked, 18 * 6);
    // Who asks is checked before what is asked: an invalid environment is
    // INVALID_ARGUMENT only for a caller who may pin.
    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("sp_not_a_token"), Code::Unauthenticated),
        (Some(tokens[2].1.as_str()), Code::PermissionDenied),
        (Some(tokens[1].1.as_str()), Code::InvalidArgument),
    ] {
        n += 1;
        assert_eq!(
            call(&mut client, "Pin ../bad", token, n).await,
            code,
            "{token:?}"
        );
    }
    let _ = stop_tx.send(());
    serving.await.unwrap().unwrap();
}

/// Starts `server::run` in-process over memory storage with `options`.
async fn serve(
    options: server::Options,
) -> (
    Client,
    tokio::sync::oneshot::Sender<()>,
    Arc<Registry>,
    std::net::SocketAddr,
) {
    let publisher = SigningKey::from_bytes(&[3; 32]);
    let trusted = TrustedKeys::new([PublicKey::new(publisher.verifying_key())]);
    let signer = NoteSigner::new(DEFAULT_ORIGIN, SigningKey::from_bytes(&[4; 32])).unwrap();
    let store = storage::open(&storage::StorageUrl::Memory, &Default::default()).unwrap();
    let limits = Limits {
        max_artifact_bytes: 64 * 1024,
        request_timeout: std::time::Duration::from_secs(2),
        stream_idle_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let registry = Arc::new(
        Registry::open(
            Index::temporary().unwrap(),
            Options {
                trusted,
                limits,
                ..Options::new(store, signer)
            },
        )
        .await
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(listener, registry.clone(), options, async {
        let _ = stop_rx.await;
    }));
    let client = RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, stop_tx, registry, addr)
}

/// A gRPC client for sending undecoded messages to `addr`, ready.
async fn raw_client(addr: std::net::SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

/// Sends `bytes` as the one message of a Publish, undecoded.
async fn raw_publish(addr: std::net::SocketAddr, bytes: &[u8]) -> tonic::Status {
    let mut grpc = raw_client(addr).await;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/stackpin.v1.Registry/Publish");
    let messages = futures::stream::iter(vec![bytes.to_vec()]);
    grpc.client_streaming(tonic::Request::new(messages), path, RawCodec)
        .await
        .map(|_: tonic::Response<Vec<u8>>| ())
        .unwrap_err()
}

/// Sends `bytes` as the request of the unary `method`, undecoded.
async fn raw_unary(addr: std::net::SocketAddr, method: &str, bytes: &[u8]) -> tonic::Status {
    let mut grpc = raw_client(addr).await;
    let path: tonic::codegen::http::uri::PathAndQuery =
        format!("/stackpin.v1.Registry/{method}").parse().unwrap();
    grpc.unary(tonic::Request::new(bytes.to_vec()), path, RawCodec)
        .await
        .map(|_: tonic::Response<Vec<u8>>| ())
        .unwrap_err()
}

/// A codec that sends and receives message bytes as they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeded_limits_get_their_codes_and_leave_nothing_behind() {
    let options = server::Options {
        max_message_bytes: 2 * 1024 * 1024,
        ..server::Options::default()
    };
    let (mut client, _stop, registry, addr) = serve(options).await;
    let size_before = registry.latest_checkpoint().await.unwrap().size;

    // A message over max_message_bytes.
    let huge = pb::PublishRequest {
        part: Some(pb::publish_request::Part::Chunk(
            vec![b' '; 3 * 1024 * 1024].into(),
        )),
    };
    let mut msgs: Vec<pb::PublishRequest> =
        publish_stream("huge", None).into_inner().collect().await;
    msgs.insert(1, huge);
    let err = client
        .publish(futures::stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_message_bytes"), "{err:?}");

    // An artifact over max_artifact_bytes, announced honestly or not.
    let body = format!("[{}0]", "0,".repeat(40_000));
    let env = signing::sign_envelope(
        &signing::publish_statement(&"big".parse().unwrap(), &Digest::of(body.as_bytes())),
        &SigningKey::from_bytes(&[3; 32]),
    );
    for announced in [body.len() as u64, 10] {
        let msgs = vec![
            pb::PublishRequest {
                part: Some(pb::publish_request::Part::Header(pb::PublishHeader {
                    release_id: "big".into(),
                    media_type: String::new(),
                    envelope: env.clone().into(),
                    size: announced,
                    request_id: String::new(),
                })),
            },
            pb::PublishRequest {
                part: Some(pb::publish_request::Part::Chunk(
                    body.clone().into_bytes().into(),
                )),
            },
        ];
        let err = client
            .publish(futures::stream::iter(msgs))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("limit"), "{err:?}");
        // The reason says it is the request's size, not a full disk.
        let info = tonic_types::StatusExt::get_details_error_info(&err).unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("MESSAGE_TOO_LARGE", "stackpin.v1")
        );
    }

    // A publish that stalls: cut at the idle timeout.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut msgs: Vec<pb::PublishRequest> =
        publish_stream("slow", None).into_inner().collect().await;
    tx.send(msgs.remove(0)).await.unwrap();
    let stalled = tokio_stream_from(rx);
    let err = client.publish(stalled).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("stream_idle_timeout"), "{err:?}");
    drop(tx);

    // A publish that trickles (never idle long) past the request deadline.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut msgs: Vec<pb::PublishRequest> =
        publish_stream("trickle", None).into_inner().collect().await;
    tx.send(msgs.remove(0)).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let chunk = pb::PublishRequest {
                part: Some(pb::publish_request::Part::Chunk(vec![b' '; 1].into())),
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let err = client.publish(tokio_stream_from(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("request_timeout"), "{err:?}");
    trickle.abort();

    // Bytes that are not a protobuf message at all: INVALID_ARGUMENT.
    let err = raw_publish(addr, b"\xff\xff\xff\xff\xff").await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The same for unary calls, which tonic decodes before any handler.
    for method in ["Pin", "Resolve", "GetCheckpoint"] {
        let err = raw_unary(addr, method, b"\xff\xff\xff\xff\xff").await;
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err:?}");
        assert!(err.message().contains("not valid protobuf"), "{err:?}");
    }
    // No budget or staging file outlives the refused streams.
    assert_eq!(
        registry.budget().available(),
        registry.limits().max_inflight_bytes
    );

    assert_eq!(
        registry.latest_checkpoint().await.unwrap().size,
        size_before,
        "a refused request wrote an entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_and_returns_its_budget() {
    let (client, _stop, registry, addr) = serve(server::Options::default()).await;
    // Enough entries to fill the transport's flow-control windows (each
    // publish entry carries its envelope, near a kilobyte), for a reader
    // with gRPC's usual 64 KiB windows (tonic's own are megabytes).
    let publisher = client.clone();
    let mut publishes = futures::stream::iter(0..1500)
        .map(|i| {
            let mut client = publisher.clone();
            async move { client.publish(publish_stream(&format!("r{i}"), None)).await }
        })
        .buffer_unordered(16);
    while let Some(done) = publishes.next().await {
        done.unwrap();
    }
    drop(publishes);
    let size = registry.latest_checkpoint().await.unwrap().size;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut entries = RegistryClient::new(channel)
        .list_entries(pb::ListEntriesRequest { start: 0, end: 0 })
        .await
        .unwrap()
        .into_inner();
    entries.message().await.unwrap().unwrap();
    assert!(
        registry.budget().available() < registry.limits().max_inflight_bytes,
        "the stream holds no budget"
    );
    // Stop reading past stream_idle_timeout (1 s) and request_timeout (2 s).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut read = 1;
    let cut = loop {
        match entries.message().await {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("all {read} of {size} entries arrived: the stream was not cut"),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    assert!(read < size, "{read} of {size}");
    drop(entries);
    let full = registry.limits().max_inflight_bytes;
    for _ in 0..50 {
        if registry.budget().available() == full {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(registry.budget().available(), full);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<pb::PublishRequest>,
) -> impl futures::Stream<Item = pb::PublishRequest> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
