//! `sipmba`: the one SIP-MBA binary. `sipmba server --target <svc|all>` runs micro-services;
//! `sipmba server --dev` runs everything on embedded defaults; the other commands are the
//! command-line tool for a running platform.

use std::process::ExitCode;

use clap::Parser;
use sipmba::{cli, dev, server};

/// jemalloc on x86_64 Linux, with background threads that return freed memory to the kernel
/// (services/sipmba/Cargo.toml says why not elsewhere).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// SIP-MBA: a secure IoT platform with a brokerless device path and micro-services.
#[derive(Debug, Parser)]
#[command(name = "sipmba", version, about, after_help = cli::EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs one micro-service, or all of them (`--dev`: the whole platform on embedded defaults).
    Server(server::ServerArgs),
    #[command(flatten)]
    Cli(cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Server(args) => match runtime.block_on(async {
            if args.dev {
                dev::run(args).await
            } else {
                server::run(args).await
            }
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(server::Failure::Usage(message)) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
            Err(server::Failure::Runtime(e)) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Cli(command) => match runtime.block_on(cli::run(cli.global, command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", e.message);
                if let Some(hint) = &e.hint {
                    eprintln!("hint: {hint}");
                }
                ExitCode::from(e.exit as u8)
            }
        },
    }
}
