//! `polity-testnet`: local Polity clusters and demos.

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use polity_testnet::bench::{self, BenchArgs};
use polity_testnet::chaos;
use polity_testnet::cluster::{self, DirArgs, UpArgs};
use polity_testnet::demo::{self, DemoArgs};

#[derive(Debug, Parser)]
#[command(
    name = "polity-testnet",
    version,
    about = "Local Polity testnets and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a 9-node testnet (3 regions on 2 continents), decide one global task on
    /// each consensus path (raft, bft, stake), print each certificate tree with who
    /// voted what, and verify every chain offline against the testnet's genesis.
    Demo(DemoArgs),
    /// Start a local cluster of node processes and wait until discovery converges.
    Up(UpArgs),
    /// Show the nodes of a detached cluster (`--json` for scripts).
    Status(cluster::StatusArgs),
    /// Stop a detached cluster.
    Down(DirArgs),
    /// Load a running cluster with tasks over gRPC and report throughput, latency
    /// percentiles and outcomes.
    Bench(BenchArgs),
    /// Flood one node of a detached testnet with hostile peers; report its peak
    /// memory and honest tasks' latency under flood.
    Flood(polity_testnet::flood::FloodArgs),
    /// Fault injection against a fresh cluster: measured reliability, crash and
    /// partition schedules, a self-spawning supervisor.
    Chaos(chaos::ChaosArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Up(args) => cluster::up(args).await,
        Command::Status(args) => cluster::status(args).await,
        Command::Down(args) => cluster::down(args).await,
        Command::Bench(args) => bench::cli(args).await,
        Command::Flood(args) => polity_testnet::flood::cli(args).await,
        Command::Chaos(command) => chaos::cli(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
