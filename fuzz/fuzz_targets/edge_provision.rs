//! The edge agent's provisioning endpoint (the operator's `Provision` call) with untrusted
//! requests: decoded from arbitrary bytes, with an arbitrary proof or with the valid HMAC proof
//! the operator computes, so the checks behind the proof are reached. Without the proof nothing
//! is accepted; with it, a request is accepted (and is then what the agent holds) or refused as
//! invalid or stale — never an internal error or a panic.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sipmba_edge::{
    agent::{Agent, Outputs},
    config::Config,
    provision::{Provisioning, hmac_proof, provision_message},
};
use sipmba_proto::v1::{self as pb, edge_service_server::EdgeService};
use tonic::{Code, Request};

const SECRET: &str = "fuzz-enrollment-secret-0123456789";

struct State {
    runtime: tokio::runtime::Runtime,
    agent: Agent,
    service: Provisioning,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let config = Config::parse(&format!(
            "state_dir = {:?}\n[[sensors]]\nkind = \"simulated\"\nmetric = \"t\"\nunit = \"Cel\"\nmin = 18\nmax = 26\n",
            dir.display().to_string()
        ))
        .unwrap();
        let agent = Agent::open(config.clone(), Outputs::open(&config)).unwrap();
        let secret = dir.join("enrollment-secret");
        std::fs::write(&secret, SECRET).unwrap();
        let service = Provisioning::new(agent.clone(), &secret, false).unwrap();
        State {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            agent,
            service,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut request) = pb::ProvisionRequest::decode(rest) else {
        return; // tonic refuses it before the service sees it
    };
    let proven = flags & 1 == 1;
    if proven {
        request.enrollment_proof = hmac_proof(SECRET.as_bytes(), &provision_message(&request));
    }
    let state = state();
    let answer = state.runtime.block_on(EdgeService::provision(
        &state.service,
        Request::new(request.clone()),
    ));
    match answer {
        Ok(response) => {
            assert!(proven, "accepted without the enrollment proof");
            let held = state.agent.credentials.get().expect("credentials held");
            request.enrollment_proof.clear();
            assert_eq!(*held, request, "the agent holds what it accepted");
            let _ = response.into_inner();
        }
        Err(status) => {
            let expected: &[Code] = if proven {
                &[Code::InvalidArgument, Code::FailedPrecondition]
            } else {
                &[Code::Unauthenticated]
            };
            assert!(
                expected.contains(&status.code()),
                "{:?}: {}",
                status.code(),
                status.message()
            );
        }
    }
});
