//! SIP-MBA wire contracts: the `sipmba.v1` protobuf package compiled for tonic and prost.
//!
//! The generated code lives in `OUT_DIR`; [`FILE_DESCRIPTOR_SET`] carries the encoded descriptors
//! for gRPC reflection.

pub mod codec;
pub mod enrollment;

/// Package `sipmba.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("sipmba.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `sipmba.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sipmba_descriptor.bin"));
