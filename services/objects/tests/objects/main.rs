//! The Objects service over gRPC on loopback, on PostgreSQL and on SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use sipmba_auth::Kind;
use sipmba_proto::v1 as pb;
use sipmba_testkit::Backend;
use tokio_stream::StreamExt;
use tonic::Code;
use uuid::Uuid;

mod access;
mod channels;
mod hierarchy;
mod input;

fn state(v: i32) -> pb::ObjectState {
    pb::ObjectState::try_from(v).unwrap()
}
