//! `polity`: run a federation node, or talk to one.

// Production code handles its errors; `unwrap` is for tests (`expect` with a reason
// is allowed where a failure would be a bug).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use polity_node::client::{self, Connection, OutputArgs, PeersArgs, SubmitArgs, VerifyArgs};
use polity_node::config::{LogFormat, NodeConfig, NodeFlags};
use polity_node::runtime::identity::Identity;

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
    /// Print the theoretical probability that a federation's answer is correct.
    Reliability(ReliabilityArgs),
    /// Put faults in force on a node (chaos runs; needs the node's API token).
    /// Replaces every fault: no flag makes the node healthy again.
    Faults {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: client::FaultArgs,
    },
    /// Show a node's load, worker slots, faults and recovery record (needs the token).
    Status {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Propose a registry change (this node joins or leaves) to the federation.
    Propose {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: client::propose::ProposeCommand,
    },
    /// This node's operator's ballot on a proposed registry (Admin API).
    Vote {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: client::propose::VoteArgs,
    },
    /// Federation files: write a genesis, add members, show one, or export a
    /// node's epoch chain.
    Genesis {
        #[command(subcommand)]
        command: client::genesis::GenesisCommand,
    },
    /// Verify a certificate chain: offline from a file, or by task id on a node.
    /// Exits 0 when valid, 2 when invalid, 3 when valid but membership was not
    /// checked (no --federation).
    Verify {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: VerifyArgs,
    },
    /// Print a shell completion script: `polity completions bash > /etc/bash_completion.d/polity`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff): `polity man | man -l -`.
    Man,
}

#[derive(Debug, clap::Args)]
struct ReliabilityArgs {
    /// Per-member error rate(s), comma-separated, each in [0,1].
    #[arg(long, value_delimiter = ',', default_value = "0.15")]
    epsilon: Vec<f64>,
    /// Members per region group (N).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Levels (1 = region only, 2 = + continent, 3 = + global).
    #[arg(long, default_value_t = 1)]
    levels: u32,
    /// Child groups each parent takes the majority over (levels 2 and 3).
    #[arg(long, default_value_t = 3)]
    branching: u32,
    /// majority, first-valid, or all.
    #[arg(long, default_value = "all")]
    aggregation: String,
    #[arg(long)]
    json: bool,
}

fn reliability(args: &ReliabilityArgs) -> anyhow::Result<()> {
    use polity_consensus::ReliabilityTable;
    anyhow::ensure!((1..=3).contains(&args.levels), "--levels must be 1, 2 or 3");
    anyhow::ensure!(
        args.replicas >= 1 && args.branching >= 1,
        "--replicas and --branching must be at least 1"
    );
    anyhow::ensure!(
        args.epsilon.iter().all(|e| (0.0..=1.0).contains(e)),
        "--epsilon values must be in [0,1]"
    );
    anyhow::ensure!(
        ["majority", "first-valid", "all"].contains(&args.aggregation.as_str()),
        "--aggregation must be majority, first-valid or all"
    );
    let mut sizes = vec![args.replicas];
    sizes.extend(std::iter::repeat_n(
        args.branching,
        args.levels as usize - 1,
    ));
    let mut table = ReliabilityTable::new(&sizes, &args.epsilon);
    // The seed's formula stays in every view: it is the figure being compared against.
    table.rows.retain(|row| {
        args.aggregation == "all"
            || row.aggregation == args.aggregation
            || row.aggregation == "seed"
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<14} {:>8} {:>12}",
        "aggregation", "group sizes", "epsilon", "P(correct)"
    );
    for row in &table.rows {
        let sizes = row
            .group_sizes
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<12} {:<14} {:>8.3} {:>12.6}",
            row.aggregation, sizes, row.epsilon, row.correct
        );
    }
    println!(
        "majority: binomial tail per group, composed over levels; first-valid: 1 - e^N at the region; \
         seed: 1 - e^(N*D), the chance that at least one agent is right"
    );
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: log files and `docker logs` get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
            polity_node::runtime::start::run(config).await?;
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
        Command::Reliability(args) => reliability(&args)?,
        Command::Faults { connection, args } => client::faults(&connection, &args).await?,
        Command::Status { connection, json } => client::status(&connection, json).await?,
        Command::Propose {
            connection,
            command,
        } => {
            client::propose::propose(&connection, &command).await?;
        }
        Command::Vote { connection, args } => client::propose::vote(&connection, &args).await?,
        Command::Genesis { command } => client::genesis::genesis(&command).await?,
        Command::Verify { connection, args } => match client::verify(&connection, &args).await? {
            client::Verdict::Valid => {}
            client::Verdict::Invalid => return Ok(ExitCode::from(2)),
            client::Verdict::Unanchored => return Ok(ExitCode::from(3)),
        },
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "polity", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
