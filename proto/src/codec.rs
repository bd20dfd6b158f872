//! The protobuf codec of every generated client and server: prost's, with smaller buffers.
//!
//! tonic gives each stream an encode buffer and a decode buffer of 8 KiB to start with; a device
//! session holds one of each for as long as it is open, mostly idle, so 10,000 sessions held
//! 160 MiB in buffers that a heartbeat-sized frame never fills. They start at 1 KiB here and
//! grow (as before) to the largest message a stream carries.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// What a stream's buffers start at.
pub const BUFFER_BYTES: usize = 1024;

/// How much encoded data a server stream gathers before it yields to send it: tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with [`BUFFER_BYTES`] buffers; the generated code names it for every method.
#[derive(Debug, Clone, Copy)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
