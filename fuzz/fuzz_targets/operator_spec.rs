//! A `SipMba` spec as a user writes it (JSON, as the API server hands it over) → what the operator
//! builds from it. A spec is either refused with a message naming what to change, or every
//! service's configuration it renders is one the `sipmba` binary loads (otherwise its pods would
//! crash-loop) and every workload, Service, budget and ConfigMap builds.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use std::{path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use sipmba_operator::{
    api::{SipMba, SipMbaSpec},
    desired::{self, Component},
    platform,
};

/// A directory holding every file a rendered configuration names.
fn files() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        sipmba_testkit::operator_mounted_files(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<SipMbaSpec>(data) else {
        return; // the API server refuses what does not match the schema
    };
    let mut p = SipMba::new("demo", spec);
    p.metadata.namespace = Some("iot".into());
    p.metadata.uid = Some("0f6a3c1e-1111-4222-8333-944455556666".into());
    if let Some(problem) = platform::invalid(&p) {
        assert!(!problem.is_empty());
        return;
    }
    let dir = files().to_str().unwrap();
    for component in Component::ALL {
        let text = desired::config(&p, component).replace(desired::ROOT, dir);
        let args = sipmba::config::Args {
            shared: sipmba_runtime::ConfigArgs {
                database_url: Some("postgres://sipmba@db:5432/sipmba".into()),
                ..Default::default()
            },
            processing: sipmba_processing::settings::Args {
                processing_replica: Some(0),
            },
            ..Default::default()
        };
        let defaults = sipmba_runtime::Defaults {
            own_keys: component == Component::Sso,
            ..Default::default()
        };
        if let Err(e) = sipmba::config::from_toml(&text, &args, &defaults) {
            panic!(
                "the operator accepts the spec, but {} refuses its configuration: {e}\n{text}",
                component.name()
            );
        }
        serde_json::to_value(desired::config_map(&p, component)).unwrap();
        serde_json::to_value(desired::service(&p, component)).unwrap();
        serde_json::to_value(desired::disruption_budget(&p, component)).unwrap();
        if component == Component::Processing {
            serde_json::to_value(desired::stateful_set(&p)).unwrap();
        } else {
            serde_json::to_value(desired::deployment(&p, component)).unwrap();
        }
    }
});
