//! The policy service's tests, in one binary: index (objects built in code), registry
//! file, gRPC over a real tonic client, CRD drift.
#![allow(clippy::unwrap_used)]

mod crds;
mod grpc;
mod index;
mod registry;
mod support;
