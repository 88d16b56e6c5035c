//! `stackpin key add | revoke | list`: the publisher key lifecycle, each
//! change a log entry.

use std::path::PathBuf;

use serde::Serialize;
use stackpin_core::ids::Reason;
use stackpin_core::signing::{KeyId, PublicKey};
use stackpin_core::time::Timestamp;
use stackpin_proto::v1 as pb;

use crate::exit::{Failure, Outcome};
use crate::view::{Format, time, wire_time};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Trust a publisher key (SPKI PEM) for publishes logged from now, or
    /// from --valid-from.
    Add {
        /// The public key file (`openssl pkey -pubout`, or KEY.pub.pem from keygen).
        public_key: PathBuf,
        /// Publishes logged from this instant on may use it [default: now].
        #[arg(long, value_parser = crate::parse_time)]
        valid_from: Option<Timestamp>,
        /// Why (recorded in the log).
        #[arg(long, default_value = "", value_parser = crate::parse::<Reason>)]
        reason: Reason,
    },
    /// Stop trusting a publisher key for publishes logged from --at (default
    /// now); publishes logged before keep verifying.
    Revoke {
        /// The key id, or the public key file.
        key: String,
        /// Publishes logged from this instant on are refused [default:
        /// now]; the instant a key leaked, to flag what was signed after.
        #[arg(long, value_parser = crate::parse_time)]
        at: Option<Timestamp>,
        /// Why (recorded in the log).
        #[arg(long, default_value = "", value_parser = crate::parse::<Reason>)]
        reason: Reason,
    },
    /// List publisher keys and their validity.
    List,
}

#[derive(Serialize)]
struct KeyView {
    key_id: String,
    source: String,
    valid_from: Option<String>,
    revoked_at: Option<String>,
}

impl From<&pb::PublisherKey> for KeyView {
    fn from(k: &pb::PublisherKey) -> Self {
        Self {
            key_id: k.key_id.clone(),
            source: k.source.clone(),
            valid_from: k.valid_from.as_ref().map(|t| time(Some(t))),
            revoked_at: k.revoked_at.as_ref().map(|t| time(Some(t))),
        }
    }
}

impl KeyView {
    fn line(&self) -> String {
        format!(
            "{}  {:<6}  valid from {}  {}",
            self.key_id,
            self.source,
            self.valid_from.as_deref().unwrap_or("always"),
            self.revoked_at
                .as_deref()
                .map_or_else(|| "not revoked".to_owned(), |r| format!("revoked at {r}"))
        )
    }
}

fn read_public_key(path: &std::path::Path) -> Outcome<PublicKey> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("reading {}: {e}", path.display())))?;
    PublicKey::from_pem(&pem).map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))
}

pub async fn run(command: &Command, server: &crate::client::Connection, format: Format) -> Outcome {
    let mut client = crate::client::connect(server).await?;
    let id = server.request_id()?;
    let key = match command {
        Command::Add {
            public_key,
            valid_from,
            reason,
        } => {
            let key = read_public_key(public_key)?;
            let message = pb::AddKeyRequest {
                public_key_pem: key.to_pem()?,
                valid_from: valid_from.map(wire_time),
                reason: reason.as_str().to_owned(),
                request_id: id.clone(),
            };
            server
                .retrying("key add", || {
                    let mut client = client.clone();
                    let request = crate::client::Connection::request(&id, message.clone());
                    async move { client.add_key(request).await }
                })
                .await?
                .into_inner()
        }
        Command::Revoke { key, at, reason } => {
            let key_id = match KeyId::parse(key) {
                Ok(id) => id,
                Err(_) if std::path::Path::new(key).is_file() => {
                    read_public_key(std::path::Path::new(key))?.id().clone()
                }
                Err(e) => {
                    return Err(Failure::invalid(format!(
                        "{e} (or pass the public key file)"
                    )));
                }
            };
            let message = pb::RevokeKeyRequest {
                key_id: key_id.to_string(),
                revoked_at: at.map(wire_time),
                reason: reason.as_str().to_owned(),
                request_id: id.clone(),
            };
            server
                .retrying("key revoke", || {
                    let mut client = client.clone();
                    let request = crate::client::Connection::request(&id, message.clone());
                    async move { client.revoke_key(request).await }
                })
                .await?
                .into_inner()
        }
        Command::List => {
            let keys = client.list_keys(pb::ListKeysRequest {}).await?.into_inner();
            let views: Vec<KeyView> = keys.keys.iter().map(KeyView::from).collect();
            format.emit(&serde_json::json!({ "keys": &views }), || {
                if views.is_empty() {
                    "no publisher keys".to_owned()
                } else {
                    views
                        .iter()
                        .map(KeyView::line)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            });
            return Ok(());
        }
    };
    let view = KeyView::from(&key);
    #[derive(Serialize)]
    struct Changed<'a> {
        #[serde(flatten)]
        key: &'a KeyView,
        /// The registry says this request id had recorded the change
        /// already.
        replayed: bool,
    }
    let out = Changed {
        key: &view,
        replayed: key.replayed,
    };
    format.emit(&out, || {
        if key.replayed {
            format!("{} (already recorded by this request id)", view.line())
        } else {
            view.line()
        }
    });
    Ok(())
}
