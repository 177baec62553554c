//! The protobuf codec of every jobq RPC: prost's, except that a message that
//! does not decode (invalid UTF-8 in a string, a truncated field, nesting
//! past the recursion limit) is the client's error, INVALID_ARGUMENT, not
//! INTERNAL as tonic-prost reports it. The message names the field prost
//! stopped at, e.g. `jobq.v1.JobSpec.type`.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost encoding, with decode failures reported as INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct JobqCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Codec for JobqCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = JobqDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        JobqDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// Decodes `U`, mapping failures to INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct JobqDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default> Decoder for JobqDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        self.inner.decode(buf).map_err(|status| {
            if status.code() == tonic::Code::Internal {
                Status::invalid_argument(format!("request does not decode: {}", status.message()))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
