//! The codec of the registry's side of the wire.
//!
//! tonic's prost codec turns bytes that are not valid protobuf into
//! INTERNAL, as gRPC's status table suggests for a peer's broken encoder.
//! For a server that strangers can reach, undecodable requests are the
//! caller's error and must not page the operator: this codec says
//! INVALID_ARGUMENT. Only the generated *server* uses it; the client keeps
//! tonic's codec, so a response the CLI cannot decode is still INTERNAL.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// A prost codec whose decode errors are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// Decodes as `inner` does; what it cannot decode is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RequestDecoder<D> {
    inner: D,
}

impl<D: Decoder<Error = Status>> Decoder for RequestDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.inner.decode(src).map_err(|status| {
            Status::invalid_argument(format!(
                "the request is not valid protobuf for this call: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
