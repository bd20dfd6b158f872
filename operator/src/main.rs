//! `sipmba-operator`: `crd` prints or writes the CRDs.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// The SIP-MBA Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "sipmba-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints the CRDs as YAML, or writes them to a directory, or checks a directory holds them.
    Crd {
        /// Write one file per CRD into this directory.
        #[arg(long, conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Exit 1 when the files of this directory differ from what the types generate.
        #[arg(long)]
        check: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let Command::Crd { out, check } = Cli::parse().command;
    let result = match (out, check) {
        (Some(dir), _) => sipmba_operator::crdgen::write(&dir),
        (None, Some(dir)) => match sipmba_operator::crdgen::stale(&dir) {
            Ok(stale) if stale.is_empty() => Ok(()),
            Ok(stale) => {
                eprintln!(
                    "error: {} differ from the CRD types: run `cargo run -p sipmba-operator -- crd --out {}`",
                    stale.join(", "),
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
        (None, None) => sipmba_operator::crdgen::manifests()
            .map(|all| {
                for (_, yaml) in all {
                    println!("---\n{yaml}");
                }
            })
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
