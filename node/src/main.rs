//! `polity`: run a federation node, or talk to one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use polity_node::client::{self, Connection, OutputArgs, PeersArgs, SubmitArgs, VerifyArgs};
use polity_node::config::{LogFormat, NodeConfig, NodeFlags};
use polity_node::identity::Identity;

#[derive(Debug, Parser)]
#[command(
    name = "polity",
    version,
    about = "A Polity federation node and its client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Node(NodeFlags),
    /// Print the PeerId of the identity in a data dir (creating it if absent).
    Id {
        #[arg(long, default_value = "polity-data")]
        data_dir: PathBuf,
    },
    /// Submit a task and (by default) wait for its certificate.
    Submit {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: SubmitArgs,
    },
    /// Show a task and its certificate.
    Get {
        #[command(flatten)]
        connection: Connection,
        /// Task id (hex).
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow a task's progress until it is final.
    Watch {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the node's signed description.
    Info {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// List the peers the node knows (filter by capability, place, compatibility).
    Peers {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: PeersArgs,
    },
    /// Show the node's trust scores for its peers.
    Trust {
        #[command(flatten)]
        connection: Connection,
        /// One peer (base58 PeerId).
        peer_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show continents, regions and nodes as the node sees them.
    Topology {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Verify a certificate chain: offline from a file, or by task id on a node.
    Verify {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: VerifyArgs,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    polity_node::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Node(flags) => {
            let config = NodeConfig::load(&flags)?;
            init_logging(config.log_format);
            polity_node::server::run(config).await?;
        }
        Command::Id { data_dir } => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            println!("{}", Identity::load_or_create(&data_dir)?.peer_id());
        }
        Command::Submit { connection, args } => client::submit(&connection, &args).await?,
        Command::Get {
            connection,
            id,
            output,
        } => client::get(&connection, &id, &output).await?,
        Command::Watch {
            connection,
            id,
            json,
        } => client::watch(&connection, &id, json).await?,
        Command::Info { connection, json } => client::info(&connection, json).await?,
        Command::Peers { connection, args } => client::peers(&connection, &args).await?,
        Command::Trust {
            connection,
            peer_id,
            json,
        } => client::trust(&connection, peer_id, json).await?,
        Command::Topology { connection, json } => client::topology(&connection, json).await?,
        Command::Verify { connection, args } => {
            if !client::verify(&connection, &args).await? {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
