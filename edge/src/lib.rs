//! `sipmba-edge`: the agent of a SIP-MBA thing (a Raspberry Pi). It reads sensors into an on-disk
//! outbox, wakes at the upload interval, streams the outbox to Collect over one gRPC session,
//! runs the commands waiting for it, and sleeps again. See the README's "Edge agent" section.

pub mod agent;
pub mod config;
pub mod credentials;
pub mod hardware;
pub mod outbox;
pub mod provision;
