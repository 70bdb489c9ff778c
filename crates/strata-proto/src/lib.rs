//! Strata's public gRPC API (`proto/strata/v1`), generated with tonic/prost.
//!
//! This crate owns nothing but the generated types, services and the encoded
//! file descriptor set (for gRPC server reflection).

/// Version 1 of the API: `strata.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("strata.v1");
}

/// The internal node-to-node Raft transport (`strata.internal.v1`); not a
/// public API.
pub mod internal {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("strata.internal.v1");
}

/// Encoded `FileDescriptorSet` of `strata.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_v1_descriptor");

/// Domain of the `google.rpc.ErrorInfo` details Strata attaches to errors.
pub const ERROR_DOMAIN: &str = "strata.io";
