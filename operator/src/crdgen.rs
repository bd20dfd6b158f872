//! The CRD manifests, generated from the Rust types; `crds/` holds them and CI checks they match.

use std::path::Path;

use kube::CustomResourceExt;

use crate::api::{SipMba, Thing};

/// `(file name, YAML)` of every CRD.
pub fn manifests() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let crds = [SipMba::crd(), Thing::crd()];
    crds.iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(crd)?;
            Ok((
                format!("{name}.yaml"),
                format!("# Generated from the Rust types by `sipmba-operator crd --out <dir>`: do not edit.\n{yaml}"),
            ))
        })
        .collect()
}

/// Writes every CRD into `dir`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, yaml) in manifests()? {
        std::fs::write(dir.join(name), yaml)?;
    }
    Ok(())
}

/// The files of `dir` that differ from what the types generate (missing ones included).
pub fn stale(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut stale = Vec::new();
    for (name, yaml) in manifests()? {
        if std::fs::read_to_string(dir.join(&name)).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(name);
        }
    }
    Ok(stale)
}
