//! Generated types for the `stackpin.v1` gRPC contract (`stackpin/v1/*.proto`).
//!
//! Only the registry's `service` module and the CLI's client use these; the
//! rest of the registry works on domain types.

pub mod codec;
pub mod convert;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("stackpin.v1");
    include!(concat!(env!("OUT_DIR"), "/client/stackpin.v1.rs"));

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("stackpin_descriptor");
}
