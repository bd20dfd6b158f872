//! `sipmba-operator`: reconciles `SipMba` resources into the platform's services and topics, and
//! `Thing` resources into provisioned devices.

pub mod api;
pub mod crdgen;
pub mod desired;
