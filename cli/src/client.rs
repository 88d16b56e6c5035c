//! Connecting to the registry.

use stackpin_proto::v1::registry_client::RegistryClient;
use tonic::transport::{Channel, Endpoint};

use crate::exit::{Failure, INVALID, Outcome, UNAVAILABLE};

/// Largest message the client accepts (artifacts arrive in 1 MiB chunks).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Connects to `server` (an http:// URL).
pub async fn connect(server: &str) -> Outcome<RegistryClient<Channel>> {
    if !server.starts_with("http://") && !server.starts_with("https://") {
        return Err(Failure::new(
            INVALID,
            anyhow::anyhow!("server {server:?} must be a URL such as http://127.0.0.1:7070"),
        ));
    }
    let endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| {
        Failure::new(
            INVALID,
            anyhow::anyhow!("server {server:?} is not a valid URL: {e}"),
        )
    })?;
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            Failure::new(
                UNAVAILABLE,
                anyhow::anyhow!("cannot reach the registry at {server}: {e}"),
            )
        })?;
    Ok(RegistryClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}
