//! `polity-testnet chaos run`: a steady task load on a fresh cluster while a seeded
//! schedule kills and restarts nodes and splits the cluster in two; afterwards a
//! check that nothing certified was lost.
//!
//! - **Load**: `--clients` client tasks, each looping "submit a `sha256` task
//!   (region scope, bft, `--replication`, wait) at a random live node". Every
//!   certified value is checked against the SHA-256 computed here.
//! - **Kills**: every `--kill-every-s`, a random live node (of the original ones)
//!   gets SIGKILL; `--restart-after-s` later it is started again with the same data
//!   dir, flags and (when it can bind them again) the same ports, and the faults it
//!   had (a partition) are set again. The supervisor also restarts any node that
//!   exits on its own.
//! - **Partition**: at `--partition-at-s` a seeded minority (the largest strict
//!   minority) and the majority block each other (`Admin/SetFaults.blocked_peers`);
//!   `--heal-after-s` later every block is cleared.
//! - **Autoscale** (`--autoscale`): every `--poll-ms` the supervisor reads every
//!   node's `Admin/GetStatus`; when the mean load is above `--load-high` or the
//!   measured reliability (decided share of the tasks that finished since the last
//!   poll) is below `--reliability-min`, it starts one more node in the most loaded
//!   region (at most `--spawn-max`); when the mean load is below `--load-low` it
//!   retires (SIGTERM) the newest spawned node. Spawned nodes are written to the
//!   state file, so `polity-testnet status --dir DIR` shows them while it runs.
//!
//! Afterwards every node is brought back (partition healed, dead nodes restarted)
//! and every task that got a certificate is read back from its entry node
//! (`GetTask`, same certificate) and verified there (`VerifyCertificate`).
//!
//! Phases of a task follow its submission and finish times: `steady` before the
//! partition is in force, `partition` while it is (submitted after every block was
//! set, finished before the heal began), `healed` after every block was cleared,
//! and `transition` for tasks that straddle a change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use polity_consensus::verify_task_chain;
use polity_node::client::Client;
use polity_proto::{
    ConsensusPath, Faults, Level, NodeStatus, RiskPolicy, Scope, SubmitTaskRequest, TaskState,
};
use serde::Serialize;

use super::schedule::{Action, Event, ScheduleConfig, SplitMix64, plan};
use super::{node_seed, sha256_hex};
use crate::cluster::{
    Launched, NodeRecord, TestnetState, UpArgs, default_capabilities, launch, record_of,
};
use crate::load::{self, Load, Reply, Step, Submission};
use crate::process::{Listen, NodeProcess, NodeSpec, Starting, polity_binary};
use crate::rpc::{self, Token};

/// Client tasks at most.
pub const CLIENTS_MAX: usize = 64;
/// Task outcomes kept per client at most (more are counted, not kept).
const LOG_PER_CLIENT_MAX: usize = 100_000;
/// Weight of the newest sample in the restart-time EWMA.
const EWMA_ALPHA: f64 = 0.3;
/// How often the supervisor looks at its schedule and its processes.
const TICK: Duration = Duration::from_millis(100);
/// Polls between two autoscale changes at least.
const AUTOSCALE_COOLDOWN_POLLS: u32 = 3;
/// Tasks that must have finished since the last poll for the measured
/// reliability to count.
const RELIABILITY_SAMPLE_MIN: usize = 5;
/// How long one GetTask or VerifyCertificate of the ledger check may take.
const LEDGER_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Tasks at most kept as samples of failures.
const SAMPLES_MAX: usize = 5;
/// How long a client pauses after an error, so a dead or refusing node is not
/// hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// The window after a heal the report counts on its own: does the cluster recover
/// at once?
const HEAL_WINDOW_MS: u64 = 5_000;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Nodes at the start.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Regions (nodes are dealt round-robin); all in one continent.
    #[arg(long, default_value_t = 1)]
    pub regions: usize,
    /// Kill a random live node every this many seconds.
    #[arg(long)]
    pub kill_every_s: Option<f64>,
    /// A killed node is restarted this many seconds after its kill.
    #[arg(long, default_value_t = 5.0)]
    pub restart_after_s: f64,
    /// Nodes down at once at most (default: what a bft group of all nodes
    /// tolerates, at least 1).
    #[arg(long)]
    pub down_max: Option<usize>,
    /// Split the cluster into a minority and a majority at this second.
    #[arg(long)]
    pub partition_at_s: Option<f64>,
    /// Heal the split this many seconds after it began.
    #[arg(long, default_value_t = 10.0)]
    pub heal_after_s: f64,
    /// Length of the run in seconds (the schedule's horizon).
    #[arg(long, default_value_t = 30.0)]
    pub duration_s: f64,
    /// The clients stop submitting at this second (default: at the end); the
    /// supervisor goes on until --duration-s, e.g. to watch the autoscaler retire.
    #[arg(long)]
    pub load_until_s: Option<f64>,
    /// Seed of the schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Client tasks, each with one task in flight.
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// Members per region group.
    #[arg(long, default_value_t = 3)]
    pub replication: u32,
    /// Time budget of each task in milliseconds.
    #[arg(long, default_value_t = 8_000)]
    pub deadline_ms: u64,
    /// Start and retire nodes from the nodes' load and the measured reliability.
    #[arg(long)]
    pub autoscale: bool,
    /// Spawn when the mean load is above this.
    #[arg(long, default_value_t = 0.8)]
    pub load_high: f64,
    /// Spawn when the measured reliability is below this.
    #[arg(long, default_value_t = 0.95)]
    pub reliability_min: f64,
    /// Retire spawned nodes when the mean load is below this.
    #[arg(long, default_value_t = 0.3)]
    pub load_low: f64,
    /// Nodes spawned (alive at once) at most.
    #[arg(long, default_value_t = 2)]
    pub spawn_max: usize,
    /// How often the autoscaler reads the nodes' status, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub poll_ms: u64,
    /// Extra flags for every `polity node` (repeatable).
    #[arg(long = "node-arg")]
    pub node_args: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the node data dirs, the token and the state file go (old data there is
    /// removed).
    #[arg(long, default_value = "polity-chaos-run")]
    pub dir: PathBuf,
}

impl RunArgs {
    /// The CLI's defaults for `nodes` nodes in `dir`.
    pub fn new(nodes: usize, dir: &Path) -> RunArgs {
        RunArgs {
            nodes,
            regions: 1,
            kill_every_s: None,
            restart_after_s: 5.0,
            down_max: None,
            partition_at_s: None,
            heal_after_s: 10.0,
            duration_s: 30.0,
            load_until_s: None,
            seed: 1,
            clients: 3,
            replication: 3,
            deadline_ms: 8_000,
            autoscale: false,
            load_high: 0.8,
            reliability_min: 0.95,
            load_low: 0.3,
            spawn_max: 2,
            poll_ms: 1_000,
            node_args: Vec::new(),
            json: false,
            dir: dir.to_path_buf(),
        }
    }

    fn schedule(&self) -> anyhow::Result<ScheduleConfig> {
        let ms = |name: &str, seconds: f64| -> anyhow::Result<u64> {
            Duration::try_from_secs_f64(seconds)
                .map(|d| d.as_millis() as u64)
                .with_context(|| format!("{name} {seconds}: not a number of seconds"))
        };
        if self.nodes == 0 || self.nodes > crate::cluster::NODES_MAX {
            bail!("--nodes must be in 1..={}", crate::cluster::NODES_MAX);
        }
        if self.regions == 0 || self.regions > self.nodes {
            bail!("--regions must be in 1..=--nodes");
        }
        if !(1..=CLIENTS_MAX).contains(&self.clients) {
            bail!("--clients must be in 1..={CLIENTS_MAX}");
        }
        if self.replication == 0 || self.replication as usize > self.nodes.div_ceil(self.regions) {
            bail!("--replication must be in 1..=(nodes per region)");
        }
        if self.deadline_ms == 0 || self.poll_ms == 0 {
            bail!("--deadline-ms and --poll-ms must be positive");
        }
        for (name, value) in [
            ("--load-high", self.load_high),
            ("--load-low", self.load_low),
            ("--reliability-min", self.reliability_min),
        ] {
            if !value.is_finite() || value < 0.0 {
                bail!("{name} must be a non-negative number");
            }
        }
        if self.load_low >= self.load_high {
            bail!("--load-low must be below --load-high");
        }
        let duration_ms = ms("--duration-s", self.duration_s)?;
        if duration_ms == 0 {
            bail!("--duration-s must be positive");
        }
        if let Some(until) = self.load_until_s
            && !(until.is_finite() && until >= 0.0)
        {
            bail!("--load-until-s must be a non-negative number of seconds");
        }
        let kill_every_ms = self
            .kill_every_s
            .map(|s| ms("--kill-every-s", s))
            .transpose()?;
        if kill_every_ms == Some(0) {
            bail!("--kill-every-s must be positive");
        }
        Ok(ScheduleConfig {
            nodes: self.nodes,
            duration_ms,
            kill_every_ms,
            restart_after_ms: ms("--restart-after-s", self.restart_after_s)?,
            down_max: self
                .down_max
                .unwrap_or_else(|| polity_consensus::quorum::faults_max(self.nodes).max(1)),
            partition_at_ms: self
                .partition_at_s
                .map(|s| ms("--partition-at-s", s))
                .transpose()?,
            heal_after_ms: ms("--heal-after-s", self.heal_after_s)?,
            seed: self.seed,
        })
    }
}

/// When a task ran, relative to the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Steady,
    Partition,
    Healed,
    Transition,
}

/// Times (ms since the start) at which the partition was in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PartitionTimes {
    /// Every block was set.
    pub applied_ms: Option<u64>,
    /// Unblocking began.
    pub heal_started_ms: Option<u64>,
    /// Every block was cleared.
    pub healed_ms: Option<u64>,
}

impl PartitionTimes {
    /// The phase of a task submitted at `submitted` and finished at `finished`.
    pub fn phase(&self, submitted: u64, finished: u64) -> Phase {
        let Some(applied) = self.applied_ms else {
            return Phase::Steady;
        };
        let heal_started = self.heal_started_ms.unwrap_or(u64::MAX);
        let healed = self.healed_ms.unwrap_or(u64::MAX);
        if finished < applied {
            Phase::Steady
        } else if submitted >= applied && finished < heal_started {
            Phase::Partition
        } else if submitted >= healed {
            Phase::Healed
        } else {
            Phase::Transition
        }
    }
}

/// What one submission gave.
#[derive(Debug, Clone)]
struct TaskLog {
    entry: usize,
    submitted_ms: u64,
    finished_ms: u64,
    outcome: Result<Finished, String>,
}

#[derive(Debug, Clone)]
struct Finished {
    task_id: Vec<u8>,
    state: TaskState,
    /// The certificate, when the record has one (DECIDED, DEGRADED).
    certificate: Option<polity_proto::Certificate>,
    /// The certificate verified here and carries the record's value.
    verified: bool,
    /// The value is the SHA-256 of the payload.
    right: bool,
    /// Hex keys of the members of the groups that decided.
    members: BTreeSet<String>,
    error: String,
}

/// Outcome counts of some tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub submitted: u64,
    pub decided: u64,
    pub degraded: u64,
    pub failed: u64,
    pub errors: u64,
    /// Errors by kind: the gRPC code (`FailedPrecondition`, `Unavailable`, `Unknown`
    /// for a transport error…) or "no reply" when the client gave up.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The longest a client waited for an error (a refusal at once is fast; a
    /// client held to its deadline is not).
    pub error_ms_max: u64,
    /// The longest a client waited for a FAILED record (a task that ran out its
    /// time, or gave up early).
    pub failed_ms_max: u64,
    /// Sum of every submission's latency, for the mean.
    pub latency_ms_sum: u64,
}

impl Tally {
    fn add(&mut self, outcome: &Result<Finished, String>, latency_ms: u64) {
        self.submitted += 1;
        self.latency_ms_sum += latency_ms;
        match outcome {
            Ok(finished) => match finished.state {
                TaskState::Decided => self.decided += 1,
                TaskState::Degraded => self.degraded += 1,
                _ => {
                    self.failed += 1;
                    self.failed_ms_max = self.failed_ms_max.max(latency_ms);
                }
            },
            Err(error) => {
                self.errors += 1;
                *self.errors_by_kind.entry(error_kind(error)).or_default() += 1;
                self.error_ms_max = self.error_ms_max.max(latency_ms);
            }
        }
    }

    fn add_log(&mut self, log: &TaskLog) {
        self.add(
            &log.outcome,
            log.finished_ms.saturating_sub(log.submitted_ms),
        );
    }

    /// Tasks that got a certificate.
    pub fn certified(&self) -> u64 {
        self.decided + self.degraded
    }

    /// The counts as one line of the report's table.
    fn line(&self) -> String {
        let mut line = format!(
            "submitted {:>5}  decided {:>5}  degraded {:>4}  failed {:>4}  errors {:>4}",
            self.submitted, self.decided, self.degraded, self.failed, self.errors
        );
        if self.errors > 0 {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            line += &format!(" ({}; slowest {} ms)", kinds.join(", "), self.error_ms_max);
        }
        if self.failed > 0 {
            line += &format!(" (slowest failure {} ms)", self.failed_ms_max);
        }
        if let Some(mean_ms) = self.latency_ms_sum.checked_div(self.submitted) {
            line += &format!(" mean {mean_ms} ms");
        }
        line
    }
}

/// An error's kind for the report: the gRPC code before the first ':' of
/// `"Code: message"`, or "no reply" when the client gave up waiting.
fn error_kind(error: &str) -> String {
    if error.starts_with("no reply") {
        return "no reply".into();
    }
    let kind = error.split(':').next().unwrap_or(error);
    kind.chars().take(40).collect()
}

impl PartitionReport {
    /// The partition's lines of the report's table.
    fn lines(&self) -> String {
        let mut out = format!(
            "partition        minority {}  in force {:?}..{:?} ms (healed {:?})\n",
            self.minority.join(" "),
            self.times.applied_ms,
            self.times.heal_started_ms,
            self.times.healed_ms
        );
        out += &format!("  minority side  {}\n", self.minority_entered.line());
        out += &format!("  majority side  {}\n", self.majority_entered.line());
        out += &format!("  minority, healed {}\n", self.minority_after_heal.line());
        out += &format!("  majority, healed {}\n", self.majority_after_heal.line());
        out += &format!(
            "  first {} s after the heal {}\n",
            HEAL_WINDOW_MS / 1_000,
            self.first_after_heal.line()
        );
        out += &format!(
            "  first decided after the heal: minority {:?} ms, majority {:?} ms\n",
            self.minority_first_decided_after_heal_ms, self.majority_first_decided_after_heal_ms
        );
        out += &format!(
            "  certificates with members on both sides: {}\n",
            self.mixed_certificates
        );
        out
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionReport {
    /// Names of the minority's nodes.
    pub minority: Vec<String>,
    #[serde(flatten)]
    pub times: PartitionTimes,
    /// Tasks entered on each side while the partition was in force.
    pub minority_entered: Tally,
    pub majority_entered: Tally,
    /// Tasks entered on each side after the heal.
    pub minority_after_heal: Tally,
    pub majority_after_heal: Tally,
    /// Tasks submitted within [`HEAL_WINDOW_MS`] of the heal, both sides.
    pub first_after_heal: Tally,
    /// When the first task entered on each side after the heal was decided (ms
    /// after every block was cleared).
    pub minority_first_decided_after_heal_ms: Option<u64>,
    pub majority_first_decided_after_heal_ms: Option<u64>,
    /// Certificates of the partition phase whose decided groups had members on
    /// both sides (must be 0).
    pub mixed_certificates: u64,
}

/// The ledger check after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerReport {
    /// Tasks that got a certificate during the run.
    pub certified: u64,
    /// Read back from the entry node with the same certificate, verified there.
    pub served: u64,
    /// Not found on the entry node.
    pub lost: u64,
    /// Found, but with another certificate (or none).
    pub changed: u64,
    /// The entry node's VerifyCertificate did not pass (or could not be asked).
    pub unverified: u64,
    /// First few problems.
    pub problems: Vec<String>,
    /// Served back, per entry node (member index).
    #[serde(skip)]
    pub served_by_entry: BTreeMap<usize, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub region: String,
    pub spawned: bool,
    pub kills: u32,
    /// Restarts after a kill or an exit of its own.
    pub restarts: u32,
    /// Exits nobody asked for (then restarted).
    pub crashes: u32,
    /// Restarts that could not bind the old ports and took new ones.
    pub new_ports: u32,
    /// Retired by the autoscaler (then started again only to check its ledger).
    pub retired: bool,
    /// Certified tasks it entered, and of those served back after the run.
    pub certified_entered: u64,
    pub served: u64,
    pub status: Option<StatusSummary>,
}

/// The part of a node's Admin status a report shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSummary {
    pub worker_slots: u32,
    pub load: f64,
    pub reliability: f64,
    pub workers_spawned: u64,
    pub workers_retired: u64,
    pub recovery: Vec<RecoveryRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryRow {
    pub failure: String,
    pub failures: u64,
    pub recoveries: u64,
    pub recovery_ms_ewma: f64,
    pub success_rate_ewma: f64,
    pub open: u64,
}

impl StatusSummary {
    fn of(status: &NodeStatus) -> StatusSummary {
        StatusSummary {
            worker_slots: status.worker_slots,
            load: status.load,
            reliability: status.reliability,
            workers_spawned: status.workers_spawned,
            workers_retired: status.workers_retired,
            recovery: status
                .recovery
                .iter()
                .map(|r| RecoveryRow {
                    failure: r.failure.clone(),
                    failures: r.failures,
                    recoveries: r.recoveries,
                    recovery_ms_ewma: r.recovery_ms_ewma,
                    success_rate_ewma: r.success_rate_ewma,
                    open: r.open,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AutoscaleReport {
    pub polls: u32,
    pub spawned: u32,
    pub retired: u32,
    pub mean_load_max: f64,
    /// Every decision, as text with its time.
    pub decisions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub nodes: usize,
    pub regions: usize,
    pub seed: u64,
    pub duration_s: f64,
    pub schedule: Vec<Event>,
    /// What the supervisor did, with times (ms since the start).
    pub actions: Vec<String>,
    pub phases: BTreeMap<String, Tally>,
    pub total: Tally,
    /// Certified values that are not the SHA-256 of their payload (must be 0).
    pub wrong_values: u64,
    /// Certificates that did not verify here (must be 0).
    pub invalid_certificates: u64,
    pub kills: u32,
    pub restarts: u32,
    pub crashes: u32,
    /// EWMA of the time from spawning a node again until it serves, in ms.
    pub restart_ms_ewma: f64,
    /// EWMA of the time from a kill until the node serves again, in ms.
    pub downtime_ms_ewma: f64,
    pub partition: Option<PartitionReport>,
    pub ledger: LedgerReport,
    pub autoscale: Option<AutoscaleReport>,
    pub node_reports: Vec<NodeReport>,
    pub failure_samples: Vec<String>,
    /// Tasks finished beyond what the clients keep (in no tally, never checked).
    pub unlogged: u64,
    /// No lost or changed certificate, no wrong value, no invalid certificate, no
    /// mixed certificate.
    pub ok: bool,
}

/// One node the supervisor looks after.
struct Member {
    spec: NodeSpec,
    process: Option<NodeProcess>,
    /// The ports to bind again on a restart.
    listen: Option<Listen>,
    public_key: Vec<u8>,
    key_hex: String,
    grpc: String,
    spawned: bool,
    /// Retired by the autoscaler: never restarted.
    retired: bool,
    /// Killed by the schedule, waiting for its restart event.
    killed_at: Option<Instant>,
    /// The faults this node should have (re-set after a restart).
    faults: Faults,
    kills: u32,
    restarts: u32,
    crashes: u32,
    new_ports: u32,
}

impl Member {
    fn of(process: NodeProcess, spawned: bool) -> anyhow::Result<Member> {
        let public_key = hex::decode(&process.endpoints.public_key).with_context(|| {
            format!(
                "node {}: public key {:?} is not hex",
                process.spec.name, process.endpoints.public_key
            )
        })?;
        Ok(Member {
            spec: process.spec.clone(),
            listen: Listen::of(&process.endpoints),
            key_hex: process.endpoints.public_key.clone(),
            grpc: process.endpoints.grpc.clone(),
            public_key,
            process: Some(process),
            spawned,
            retired: false,
            killed_at: None,
            faults: Faults::default(),
            kills: 0,
            restarts: 0,
            crashes: 0,
            new_ports: 0,
        })
    }

    fn alive(&self) -> bool {
        self.process.is_some()
    }
}

/// Live entry points the clients choose from: one slot per member.
type View = Arc<RwLock<Vec<Option<Client>>>>;

struct Supervisor {
    binary: PathBuf,
    dir: PathBuf,
    token: Token,
    capabilities: Vec<String>,
    node_args: Vec<String>,
    members: Vec<Member>,
    view: View,
    started: Instant,
    actions: Vec<String>,
    minority: Option<BTreeSet<usize>>,
    times: PartitionTimes,
    restart_ms_ewma: Option<f64>,
    downtime_ms_ewma: Option<f64>,
    quiet: bool,
}

fn ewma(old: Option<f64>, sample: f64) -> Option<f64> {
    Some(match old {
        None => sample,
        Some(old) => EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * old,
    })
}

impl Supervisor {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn note(&mut self, text: String) {
        let line = format!("{:>7.1} s  {text}", self.started.elapsed().as_secs_f64());
        if !self.quiet {
            eprintln!("{line}");
        }
        self.actions.push(line);
    }

    fn set_view(&self, index: usize, client: Option<Client>) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        if view.len() <= index {
            view.resize(index + 1, None);
        }
        view[index] = client;
    }

    fn state(&self) -> TestnetState {
        TestnetState {
            nodes: self
                .members
                .iter()
                .filter_map(|member| {
                    let process = member.process.as_ref()?;
                    Some(NodeRecord {
                        spawned: member.spawned,
                        ..record_of(process)
                    })
                })
                .collect(),
            token_file: Some(self.token.path.clone()),
        }
    }

    fn write_state(&mut self) {
        if let Err(error) = self.state().write(&self.dir) {
            let text = format!("could not write the state file: {error:#}");
            self.note(text);
        }
    }

    /// SIGKILL (dropping the handle kills and reaps the child).
    fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        let Some(process) = member.process.take() else {
            return;
        };
        drop(process);
        member.kills += 1;
        member.killed_at = Some(Instant::now());
        let name = member.spec.name.clone();
        self.set_view(index, None);
        self.note(format!("killed {name} (SIGKILL)"));
        self.write_state();
    }

    /// Starts member `index` again: same data dir and flags, bootstrapping to live
    /// nodes, on its old ports when it can bind them.
    async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let live_bootstrap: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(other, member)| *other != index && member.alive())
            .filter_map(|(_, member)| member.process.as_ref()?.endpoints.p2p.first().cloned())
            .take(2)
            .collect();
        let binary = self.binary.clone();
        let member = &mut self.members[index];
        let mut spec = member.spec.clone();
        spec.extra_args = without_bootstrap(&spec.extra_args);
        for address in live_bootstrap {
            spec.extra_args.push("--bootstrap".into());
            spec.extra_args.push(address);
        }
        let listen = member.listen.clone();
        let spawned_at = Instant::now();
        let started = tokio::task::spawn_blocking(move || start_again(&binary, spec, listen))
            .await
            .context("the restart thread panicked")?;
        let (process, new_ports) =
            started.with_context(|| format!("restarting {}", member.spec.name))?;
        let serving_ms = spawned_at.elapsed().as_secs_f64() * 1000.0;
        member.restarts += 1;
        if new_ports {
            member.new_ports += 1;
        }
        member.listen = Listen::of(&process.endpoints);
        member.grpc = process.endpoints.grpc.clone();
        member.process = Some(process);
        let downtime = member.killed_at.take().map(|at| at.elapsed());
        let name = member.spec.name.clone();
        let grpc = member.grpc.clone();
        let faults = member.faults.clone();
        let revived = member.retired;
        if !revived {
            self.restart_ms_ewma = ewma(self.restart_ms_ewma, serving_ms);
        }
        if let Some(downtime) = downtime {
            self.downtime_ms_ewma = ewma(self.downtime_ms_ewma, downtime.as_secs_f64() * 1000.0);
        }
        self.note(format!(
            "{} {name} in {serving_ms:.0} ms{}",
            if revived {
                "started the retired node for the ledger check:"
            } else {
                "restarted"
            },
            if new_ports { " (on new ports)" } else { "" }
        ));
        if faults != Faults::default()
            && let Err(error) = rpc::set_faults(&grpc, &self.token, faults).await
        {
            self.note(format!("could not set {name}'s faults again: {error:#}"));
        }
        match rpc::federation(&grpc, Some(&self.token.value)).await {
            Ok(client) => self.set_view(index, Some(client)),
            Err(error) => self.note(format!("{name} restarted but unreachable: {error:#}")),
        }
        self.write_state();
        Ok(())
    }

    /// Restarts every member that exited without being told to.
    async fn reap(&mut self) {
        for index in 0..self.members.len() {
            let exited = self.members[index]
                .process
                .as_mut()
                .and_then(NodeProcess::exit_status);
            if let Some(status) = exited {
                let member = &mut self.members[index];
                member.process = None;
                member.crashes += 1;
                member.killed_at = Some(Instant::now());
                let name = member.spec.name.clone();
                self.set_view(index, None);
                self.note(format!(
                    "{name} exited on its own ({status}); restarting it"
                ));
                if let Err(error) = self.restart(index).await {
                    self.note(format!("{error:#}"));
                }
            }
        }
    }

    /// Sets `blocked` (public keys) on member `index`, keeping its other faults.
    async fn block(&mut self, index: usize, blocked: Vec<Vec<u8>>) {
        let member = &mut self.members[index];
        member.faults.blocked_peers = blocked;
        if !member.alive() {
            return; // set again when it restarts
        }
        let (grpc, faults, name) = (
            member.grpc.clone(),
            member.faults.clone(),
            member.spec.name.clone(),
        );
        if let Err(error) = rpc::set_faults(&grpc, &self.token, faults).await {
            self.note(format!("could not set {name}'s blocked peers: {error:#}"));
        }
    }

    async fn partition(&mut self, minority: &[usize]) {
        let minority: BTreeSet<usize> = minority
            .iter()
            .copied()
            .filter(|&index| index < self.members.len())
            .collect();
        let keys = |inside: bool, members: &[Member]| -> Vec<Vec<u8>> {
            members
                .iter()
                .enumerate()
                .filter(|(index, _)| minority.contains(index) == inside)
                .map(|(_, member)| member.public_key.clone())
                .collect()
        };
        let minority_keys = keys(true, &self.members);
        let majority_keys = keys(false, &self.members);
        for index in 0..self.members.len() {
            let blocked = if minority.contains(&index) {
                majority_keys.clone()
            } else {
                minority_keys.clone()
            };
            self.block(index, blocked).await;
        }
        let names: Vec<String> = minority
            .iter()
            .map(|&index| self.members[index].spec.name.clone())
            .collect();
        self.minority = Some(minority);
        self.times.applied_ms = Some(self.now_ms());
        self.note(format!(
            "partition: {} | the other {} node(s)",
            names.join(" "),
            self.members.len() - names.len()
        ));
    }

    async fn heal(&mut self) {
        if self.minority.is_none() || self.times.healed_ms.is_some() {
            return;
        }
        self.times.heal_started_ms = Some(self.now_ms());
        for index in 0..self.members.len() {
            self.block(index, Vec::new()).await;
        }
        self.times.healed_ms = Some(self.now_ms());
        self.note("healed: every block cleared".into());
    }

    async fn apply(&mut self, event: &Event) {
        match &event.action {
            Action::Kill { node } => {
                if self.members.get(*node).is_some_and(Member::alive) {
                    self.kill(*node);
                }
            }
            Action::Restart { node } => {
                let due = self
                    .members
                    .get(*node)
                    .is_some_and(|m| !m.alive() && !m.retired);
                if due && let Err(error) = self.restart(*node).await {
                    self.note(format!("{error:#}"));
                }
            }
            Action::Partition { minority } => self.partition(minority).await,
            Action::Heal => self.heal().await,
        }
    }

    /// Every member's Admin status (None for dead or silent ones).
    async fn statuses(&self) -> Vec<Option<NodeStatus>> {
        let mut statuses = Vec::with_capacity(self.members.len());
        for member in &self.members {
            if !member.alive() {
                statuses.push(None);
                continue;
            }
            statuses.push(
                rpc::node_status_within(&member.grpc, &self.token, Duration::from_secs(3)).await,
            );
        }
        statuses
    }

    /// Starts one more node in `region`.
    async fn spawn_node(&mut self, region: &str) -> anyhow::Result<()> {
        let index = self.members.len();
        let name = format!("node-{index}");
        let continent = self
            .members
            .iter()
            .find(|m| m.spec.region == region)
            .map(|m| m.spec.continent.clone())
            .unwrap_or_else(|| "continent-0".into());
        let data_dir = self.dir.join(&name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut extra_args = Vec::new();
        for capability in &self.capabilities {
            extra_args.push("--capability".to_string());
            extra_args.push(capability.clone());
        }
        for member in self.members.iter().filter(|m| m.alive()).take(2) {
            if let Some(address) = member
                .process
                .as_ref()
                .and_then(|p| p.endpoints.p2p.first())
            {
                extra_args.push("--bootstrap".into());
                extra_args.push(address.clone());
            }
        }
        extra_args.push(self.token.node_arg());
        extra_args.extend(self.node_args.iter().cloned());
        let spec = NodeSpec {
            name: name.clone(),
            data_dir,
            region: region.to_string(),
            continent,
            extra_args,
        };
        let binary = self.binary.clone();
        let process = tokio::task::spawn_blocking(move || NodeProcess::start(&binary, spec))
            .await
            .context("the spawn thread panicked")??;
        let mut member = Member::of(process, true)?;
        // A spawned node joins the majority side of a partition in force.
        if let Some(minority) = &self.minority
            && self.times.healed_ms.is_none()
        {
            member.faults.blocked_peers = minority
                .iter()
                .map(|&i| self.members[i].public_key.clone())
                .collect();
        }
        let grpc = member.grpc.clone();
        let faults = member.faults.clone();
        self.members.push(member);
        if faults != Faults::default() {
            rpc::set_faults(&grpc, &self.token, faults).await?;
            // ... and the minority blocks it back.
            let key = self.members[index].public_key.clone();
            let minority: Vec<usize> = self.minority.iter().flatten().copied().collect();
            for other in minority {
                let mut blocked = self.members[other].faults.blocked_peers.clone();
                blocked.push(key.clone());
                self.block(other, blocked).await;
            }
        }
        self.set_view(
            index,
            Some(rpc::federation(&grpc, Some(&self.token.value)).await?),
        );
        self.write_state();
        Ok(())
    }

    /// Brings everything back after the load: heals, restarts what is down, and
    /// starts retired nodes once more so their ledgers are checked too (not counted
    /// as restarts).
    async fn bring_back(&mut self) {
        self.heal().await;
        for index in 0..self.members.len() {
            let member = &self.members[index];
            if member.alive() {
                continue;
            }
            let retired = member.retired;
            let restarts = member.restarts;
            if let Err(error) = self.restart(index).await {
                self.note(format!("{error:#}"));
            } else if retired {
                self.members[index].restarts = restarts;
            }
        }
    }

    /// SIGTERM to the newest live spawned node.
    fn retire_newest(&mut self) -> Option<String> {
        let index = (0..self.members.len())
            .rev()
            .find(|&i| self.members[i].spawned && self.members[i].alive())?;
        self.set_view(index, None);
        let member = &mut self.members[index];
        member.retired = true;
        let name = member.spec.name.clone();
        if let Some(process) = member.process.take()
            && let Err(error) = process.stop()
        {
            self.note(format!("retiring {name}: {error:#}"));
        }
        self.write_state();
        Some(name)
    }
}

/// Starts a node process from `spec` on its old ports (`listen`) when it can bind
/// them, else on new ones; `true` with the process when the ports are new.
fn start_again(
    binary: &Path,
    spec: NodeSpec,
    listen: Option<Listen>,
) -> anyhow::Result<(NodeProcess, bool)> {
    let first = match &listen {
        Some(listen) => Starting::spawn_on(binary, spec.clone(), listen)
            .and_then(Starting::wait)
            .map(|process| (process, false)),
        None => Err(anyhow::anyhow!("no old ports")),
    };
    first.or_else(|_| {
        // The old ports are taken (or unknown): new ones.
        Starting::spawn(binary, spec)
            .and_then(Starting::wait)
            .map(|process| (process, true))
    })
}

/// `extra_args` without its `--bootstrap ADDRESS` pairs (and `--bootstrap=ADDRESS`).
pub fn without_bootstrap(extra_args: &[String]) -> Vec<String> {
    let mut kept = Vec::with_capacity(extra_args.len());
    let mut skip_next = false;
    for arg in extra_args {
        if skip_next {
            skip_next = false;
        } else if arg == "--bootstrap" {
            skip_next = true;
        } else if !arg.starts_with("--bootstrap=") {
            kept.push(arg.clone());
        }
    }
    kept
}

/// What the autoscaler decides from one poll.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleDecision {
    /// Start a node in this region.
    Spawn(String),
    /// Retire the newest spawned node.
    Retire,
    Hold,
}

/// The autoscaling rule: `loads` are (region, load) of the live nodes that
/// answered; `reliability` the measured decided share since the last poll (None
/// with too few tasks); `spawned` the live spawned nodes.
pub fn scale_decision(
    loads: &[(String, f64)],
    reliability: Option<f64>,
    spawned: usize,
    args: &RunArgs,
) -> ScaleDecision {
    if loads.is_empty() {
        return ScaleDecision::Hold;
    }
    let mean = loads.iter().map(|(_, load)| load).sum::<f64>() / loads.len() as f64;
    let unreliable = reliability.is_some_and(|r| r < args.reliability_min);
    if (mean > args.load_high || unreliable) && spawned < args.spawn_max {
        let mut by_region: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for (region, load) in loads {
            let entry = by_region.entry(region).or_default();
            entry.0 += load;
            entry.1 += 1;
        }
        let busiest = by_region
            .iter()
            .map(|(region, (sum, n))| (*region, sum / *n as f64))
            .fold(None::<(&str, f64)>, |best, (region, load)| match best {
                Some((_, top)) if top >= load => best,
                _ => Some((region, load)),
            });
        if let Some((region, _)) = busiest {
            return ScaleDecision::Spawn(region.to_string());
        }
    }
    if mean < args.load_low && !unreliable && spawned > 0 {
        return ScaleDecision::Retire;
    }
    ScaleDecision::Hold
}

/// Runs the whole chaos run and reports; the nodes are stopped at the end.
pub async fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    let schedule_config = args.schedule()?;
    let events = plan(&schedule_config);
    crate::cluster::ensure_no_testnet(&args.dir)?;
    let token = Token::create(&args.dir)?;
    let capabilities = default_capabilities();
    let mut node_args = vec![token.node_arg()];
    node_args.extend(args.node_args.iter().cloned());
    let up = UpArgs {
        nodes: args.nodes,
        regions: args.regions,
        continents: 1,
        capabilities: capabilities.clone(),
        dir: args.dir.clone(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args: node_args.clone(),
    };
    let Launched { nodes, .. } = launch(&up, &capabilities).await?;
    let mut members = Vec::with_capacity(nodes.len());
    for node in nodes {
        members.push(Member::of(node, false)?);
    }
    let mut view = Vec::with_capacity(members.len());
    for member in &members {
        view.push(Some(
            rpc::federation(&member.grpc, Some(&token.value)).await?,
        ));
    }
    let mut supervisor = Supervisor {
        binary: polity_binary()?,
        dir: args.dir.clone(),
        token,
        capabilities,
        // The token flag is added by `spawn_node` itself.
        node_args: args.node_args.clone(),
        members,
        view: Arc::new(RwLock::new(view)),
        started: Instant::now(),
        actions: Vec::new(),
        minority: None,
        times: PartitionTimes::default(),
        restart_ms_ewma: None,
        downtime_ms_ewma: None,
        quiet: args.json,
    };
    supervisor.write_state();
    let result = drive(args, &schedule_config, &events, &mut supervisor).await;
    for member in supervisor.members.drain(..) {
        if let Some(process) = member.process {
            let _ = process.stop();
        }
    }
    let _ = std::fs::remove_file(args.dir.join(crate::cluster::STATE_FILE));
    result
}

/// The run itself: the load and the supervisor side by side until the horizon,
/// then everything brought back, the ledgers checked and the report made.
async fn drive(
    args: &RunArgs,
    schedule_config: &ScheduleConfig,
    events: &[Event],
    supervisor: &mut Supervisor,
) -> anyhow::Result<RunReport> {
    let run_load = Arc::new(RunLoad::new(args, schedule_config, supervisor));
    let clients = load::start(Arc::clone(&run_load), args.clients);
    let autoscale = supervise(args, schedule_config, events, supervisor, &run_load).await;
    run_load.stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    let mut unlogged = 0;
    for client in clients.finish().await? {
        logs.extend(client.log);
        unlogged += client.unlogged;
    }
    let load_ended_s = supervisor.started.elapsed().as_secs_f64();
    supervisor.bring_back().await;
    let ledger = check_ledgers(supervisor, &logs).await;
    let statuses = supervisor.statuses().await;
    let observed = Observed {
        logs,
        unlogged,
        ledger,
        statuses,
        autoscale,
        load_ended_s,
    };
    Ok(report(args, events, supervisor, observed))
}

/// The chaos run's [`Load`]: each client sends `sha256` tasks (region scope, bft,
/// `--replication`, wait) to a live node of its own seeded choosing, until the
/// supervisor says stop or the load time is over.
struct RunLoad {
    view: View,
    stop: AtomicBool,
    /// Finished tasks since the autoscaler last looked: (decided, total).
    recent: std::sync::Mutex<(usize, usize)>,
    template: SubmitTaskRequest,
    rpc_timeout: Duration,
    /// Since `started`.
    load_until: Duration,
    started: Instant,
    seed: u64,
}

/// One client of the chaos run: its choices and its log.
struct RunClient {
    index: usize,
    rng: SplitMix64,
    /// Tasks sent so far (they number the payloads).
    sent: u64,
    log: Vec<TaskLog>,
    /// Tasks finished beyond [`LOG_PER_CLIENT_MAX`] (in no tally).
    unlogged: u64,
}

/// A task in flight: its entry node and the value it must certify.
struct InFlight {
    entry: usize,
    truth: String,
}

impl RunLoad {
    fn new(args: &RunArgs, schedule_config: &ScheduleConfig, supervisor: &Supervisor) -> RunLoad {
        let template = SubmitTaskRequest {
            capability: "sha256".into(),
            payload: Vec::new(),
            scope: Some(Scope {
                level: Level::Region as i32,
                name: String::new(),
            }),
            replication: args.replication,
            aggregation: 0,
            policy: Some(RiskPolicy {
                path_override: ConsensusPath::Bft as i32,
                ..RiskPolicy::default()
            }),
            deadline_ms: args.deadline_ms,
            nonce: 0,
            wait: true,
        };
        RunLoad {
            view: supervisor.view.clone(),
            stop: AtomicBool::new(false),
            recent: std::sync::Mutex::new((0, 0)),
            template,
            rpc_timeout: Duration::from_millis(args.deadline_ms) + Duration::from_secs(5),
            load_until: Duration::from_millis(schedule_config.duration_ms).min(
                args.load_until_s
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .unwrap_or(Duration::MAX),
            ),
            started: supervisor.started,
            seed: args.seed,
        }
    }

    /// A random live entry node, `None` when every node is down.
    fn choose(&self, rng: &mut SplitMix64) -> Option<(usize, Client)> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let live: Vec<(usize, Client)> = view
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.clone().map(|c| (i, c)))
            .collect();
        if live.is_empty() {
            None
        } else {
            Some(live[rng.below(live.len())].clone())
        }
    }

    /// The decided share of the tasks finished since the last call (`None` with too
    /// few of them), and a fresh count.
    fn take_reliability(&self) -> Option<f64> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let measured =
            (recent.1 >= RELIABILITY_SAMPLE_MIN).then(|| recent.0 as f64 / recent.1 as f64);
        *recent = (0, 0);
        measured
    }
}

impl Load for RunLoad {
    type Client = RunClient;
    type Sent = InFlight;

    fn client(&self, index: usize) -> anyhow::Result<RunClient> {
        Ok(RunClient {
            index,
            rng: SplitMix64::new(node_seed(self.seed, 1_000 + index)),
            sent: 0,
            log: Vec::new(),
            unlogged: 0,
        })
    }

    fn next(&self, client: &mut RunClient) -> Step<InFlight> {
        if self.stop.load(Ordering::Relaxed) || self.started.elapsed() >= self.load_until {
            return Step::Stop;
        }
        let Some((entry, handle)) = self.choose(&mut client.rng) else {
            return Step::Wait(TICK);
        };
        let payload = format!(
            "polity-chaos-run seed {} client {} task {}",
            self.seed, client.index, client.sent
        );
        client.sent += 1;
        let truth = sha256_hex(payload.as_bytes());
        let request = SubmitTaskRequest {
            payload: payload.into_bytes(),
            ..self.template.clone()
        };
        Step::Send(Box::new(Submission {
            client: handle,
            request: tonic::Request::new(request),
            timeout: self.rpc_timeout,
            sent: InFlight { entry, truth },
        }))
    }

    fn record(&self, client: &mut RunClient, sent: InFlight, reply: Reply) -> Duration {
        let since_start = |at: Instant| at.duration_since(self.started).as_millis() as u64;
        let submitted_ms = since_start(reply.sent_at);
        let finished_ms = since_start(reply.sent_at + reply.latency);
        let outcome = reply
            .record
            .map(|record| finished(record, sent.truth.as_bytes()))
            .map_err(|error| error.to_string());
        if let Ok(mut recent) = self.recent.lock() {
            recent.1 += 1;
            if matches!(&outcome, Ok(f) if f.state == TaskState::Decided) {
                recent.0 += 1;
            }
        }
        let pause = if outcome.is_err() {
            ERROR_PAUSE
        } else {
            Duration::ZERO
        };
        let log = TaskLog {
            entry: sent.entry,
            submitted_ms,
            finished_ms,
            outcome,
        };
        if client.log.len() < LOG_PER_CLIENT_MAX {
            client.log.push(log);
        } else {
            client.unlogged += 1;
        }
        pause
    }
}

/// The supervisor's loop until the schedule's horizon: events that are due,
/// nodes that exited, autoscale polls. Returns what the autoscaler did.
async fn supervise(
    args: &RunArgs,
    schedule_config: &ScheduleConfig,
    events: &[Event],
    supervisor: &mut Supervisor,
    run_load: &RunLoad,
) -> Option<AutoscaleReport> {
    let duration = Duration::from_millis(schedule_config.duration_ms);
    let mut next_event = 0;
    let mut autoscaler = args.autoscale.then(Autoscaler::new);
    let mut tick = tokio::time::interval(TICK);
    while supervisor.started.elapsed() < duration {
        tick.tick().await;
        let now = supervisor.now_ms();
        while next_event < events.len() && events[next_event].at_ms <= now {
            supervisor.apply(&events[next_event]).await;
            next_event += 1;
        }
        supervisor.reap().await;
        if let Some(autoscaler) = autoscaler.as_mut()
            && autoscaler.last_poll.elapsed() >= Duration::from_millis(args.poll_ms)
        {
            autoscaler.poll(args, supervisor, run_load).await;
        }
    }
    autoscaler.map(|autoscaler| autoscaler.report)
}

/// The autoscaler between polls.
struct Autoscaler {
    report: AutoscaleReport,
    last_poll: Instant,
    polls_since_change: u32,
}

impl Autoscaler {
    fn new() -> Autoscaler {
        Autoscaler {
            report: AutoscaleReport::default(),
            last_poll: Instant::now(),
            polls_since_change: AUTOSCALE_COOLDOWN_POLLS,
        }
    }

    /// Reads every node's status and the measured reliability, decides, and acts
    /// unless the last change is too recent.
    async fn poll(&mut self, args: &RunArgs, supervisor: &mut Supervisor, run_load: &RunLoad) {
        self.last_poll = Instant::now();
        self.report.polls += 1;
        self.polls_since_change += 1;
        let statuses = supervisor.statuses().await;
        let signals =
            statuses
                .iter()
                .flatten()
                .fold((0, 0), |(up, down), s| match s.scale_signal {
                    1.. => (up + 1, down),
                    ..=-1 => (up, down + 1),
                    0 => (up, down),
                });
        let loads: Vec<(String, f64)> = statuses
            .iter()
            .zip(&supervisor.members)
            .filter_map(|(status, m)| Some((m.spec.region.clone(), status.as_ref()?.load)))
            .collect();
        let mean = if loads.is_empty() {
            0.0
        } else {
            loads.iter().map(|(_, l)| l).sum::<f64>() / loads.len() as f64
        };
        self.report.mean_load_max = self.report.mean_load_max.max(mean);
        let reliability = run_load.take_reliability();
        let spawned = supervisor
            .members
            .iter()
            .filter(|m| m.spawned && m.alive())
            .count();
        let decision = scale_decision(&loads, reliability, spawned, args);
        if self.polls_since_change < AUTOSCALE_COOLDOWN_POLLS {
            return;
        }
        let why = format!(
            "mean load {mean:.2}, reliability {}, node scale signals +{} -{}",
            reliability.map_or("-".into(), |r| format!("{r:.3}")),
            signals.0,
            signals.1
        );
        self.act(decision, &why, supervisor).await;
    }

    async fn act(&mut self, decision: ScaleDecision, why: &str, supervisor: &mut Supervisor) {
        let text = match decision {
            ScaleDecision::Spawn(region) => match supervisor.spawn_node(&region).await {
                Ok(()) => {
                    self.report.spawned += 1;
                    let name = supervisor.members.last().map(|m| m.spec.name.clone());
                    format!(
                        "autoscale: spawned {} in {region} ({why})",
                        name.unwrap_or_default()
                    )
                }
                Err(error) => {
                    supervisor.note(format!("autoscale: spawn failed: {error:#}"));
                    return;
                }
            },
            ScaleDecision::Retire => match supervisor.retire_newest() {
                Some(name) => {
                    self.report.retired += 1;
                    format!("autoscale: retired {name} ({why})")
                }
                None => return,
            },
            ScaleDecision::Hold => return,
        };
        self.polls_since_change = 0;
        self.report.decisions.push(text.clone());
        supervisor.note(text);
    }
}

fn finished(record: polity_proto::TaskRecord, truth: &[u8]) -> Finished {
    let state = TaskState::try_from(record.state).unwrap_or_default();
    let verified = record.certificate.as_ref().is_some_and(|certificate| {
        verify_task_chain(certificate, None).is_ok_and(|summary| summary.value == record.value)
    });
    let members = record
        .groups
        .iter()
        .filter(|group| group.degraded_reason.is_empty())
        .flat_map(|group| group.members.iter().cloned())
        .collect();
    Finished {
        task_id: record.task_id,
        state,
        right: record.value == truth,
        certificate: record.certificate,
        verified,
        members,
        error: record.error,
    }
}

/// Reads every certified task back from its entry node and has the node verify it.
async fn check_ledgers(supervisor: &mut Supervisor, logs: &[TaskLog]) -> LedgerReport {
    let mut ledger = LedgerReport::default();
    let mut clients: BTreeMap<usize, Option<Client>> = BTreeMap::new();
    for log in logs {
        let Ok(finished) = &log.outcome else { continue };
        let Some(certificate) = &finished.certificate else {
            continue;
        };
        ledger.certified += 1;
        let member = &supervisor.members[log.entry];
        if let std::collections::btree_map::Entry::Vacant(slot) = clients.entry(log.entry) {
            let client = rpc::federation(&member.grpc, Some(&supervisor.token.value)).await;
            slot.insert(client.ok());
        }
        let name = member.spec.name.clone();
        let Some(Some(client)) = clients.get(&log.entry) else {
            ledger.lost += 1;
            ledger.problem(format!("{name}: unreachable after the run"));
            continue;
        };
        match read_back(&mut client.clone(), &name, finished, certificate).await {
            Readback::Served => {
                ledger.served += 1;
                *ledger.served_by_entry.entry(log.entry).or_default() += 1;
            }
            Readback::Lost(problem) => {
                ledger.lost += 1;
                ledger.problem(problem);
            }
            Readback::Changed(problem) => {
                ledger.changed += 1;
                ledger.problem(problem);
            }
            Readback::Unverified(problem) => {
                ledger.unverified += 1;
                ledger.problem(problem);
            }
        }
    }
    ledger
}

/// What reading one certified task back from its entry node gave.
enum Readback {
    /// The same certificate, and the node verifies it.
    Served,
    Lost(String),
    Changed(String),
    Unverified(String),
}

/// Reads `finished` back from the node `name` and has the node verify it.
async fn read_back(
    client: &mut Client,
    name: &str,
    finished: &Finished,
    certificate: &polity_proto::Certificate,
) -> Readback {
    let id = hex::encode(&finished.task_id);
    match rpc::get_task(client, &finished.task_id, LEDGER_CALL_TIMEOUT).await {
        Ok(stored) if stored.certificate.as_ref() != Some(certificate) => {
            return Readback::Changed(format!("{name}: task {id} has another certificate"));
        }
        Ok(_) => {}
        Err(status) => return Readback::Lost(format!("{name}: task {id}: {status}")),
    }
    match rpc::verify_stored(client, &finished.task_id, LEDGER_CALL_TIMEOUT).await {
        Ok(reply) if reply.valid => Readback::Served,
        Ok(reply) => Readback::Unverified(format!("{name}: task {id}: {}", reply.error)),
        Err(status) => Readback::Unverified(format!("{name}: verify {id}: {status}")),
    }
}

impl LedgerReport {
    fn problem(&mut self, text: String) {
        if self.problems.len() < SAMPLES_MAX {
            self.problems.push(text);
        }
    }
}

/// What a run observed, for its report.
struct Observed {
    logs: Vec<TaskLog>,
    /// Tasks finished beyond what the clients keep.
    unlogged: u64,
    ledger: LedgerReport,
    /// Every member's Admin status after the run.
    statuses: Vec<Option<NodeStatus>>,
    autoscale: Option<AutoscaleReport>,
    load_ended_s: f64,
}

/// Counts over every task of the run.
#[derive(Default)]
struct LogSummary {
    phases: BTreeMap<String, Tally>,
    total: Tally,
    wrong_values: u64,
    invalid_certificates: u64,
    failure_samples: Vec<String>,
    /// Certified tasks per entry node (member index).
    certified_by_entry: BTreeMap<usize, u64>,
}

impl LogSummary {
    fn add(&mut self, log: &TaskLog, phase: Phase) {
        let name = serde_json::to_value(phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.phases.entry(name).or_default().add_log(log);
        self.total.add_log(log);
        let sample = match &log.outcome {
            Ok(finished) => {
                if finished.certificate.is_some() {
                    *self.certified_by_entry.entry(log.entry).or_default() += 1;
                    if !finished.verified {
                        self.invalid_certificates += 1;
                    }
                    if !finished.right {
                        self.wrong_values += 1;
                    }
                }
                (finished.state == TaskState::Failed).then_some(&finished.error)
            }
            Err(error) => Some(error),
        };
        if let Some(sample) = sample
            && self.failure_samples.len() < SAMPLES_MAX
        {
            self.failure_samples.push(sample.clone());
        }
    }
}

/// The tasks of a run with a partition, by the side they entered on.
struct Sides<'a> {
    report: PartitionReport,
    minority: &'a BTreeSet<usize>,
    /// Hex keys of the minority's members, and of the others.
    inside: BTreeSet<&'a str>,
    outside: BTreeSet<&'a str>,
}

impl<'a> Sides<'a> {
    /// `None` when the run had no partition.
    fn of(supervisor: &'a Supervisor) -> Option<Sides<'a>> {
        let minority = supervisor.minority.as_ref()?;
        let (inside, outside): (Vec<_>, Vec<_>) = supervisor
            .members
            .iter()
            .enumerate()
            .partition(|(i, _)| minority.contains(i));
        Some(Sides {
            report: PartitionReport {
                minority: minority
                    .iter()
                    .map(|&i| supervisor.members[i].spec.name.clone())
                    .collect(),
                times: supervisor.times,
                ..PartitionReport::default()
            },
            minority,
            inside: inside.iter().map(|(_, m)| m.key_hex.as_str()).collect(),
            outside: outside.iter().map(|(_, m)| m.key_hex.as_str()).collect(),
        })
    }

    fn add(&mut self, log: &TaskLog, phase: Phase) {
        let report = &mut self.report;
        match (phase, self.minority.contains(&log.entry)) {
            (Phase::Partition, true) => report.minority_entered.add_log(log),
            (Phase::Partition, false) => report.majority_entered.add_log(log),
            (Phase::Healed, true) => report.minority_after_heal.add_log(log),
            (Phase::Healed, false) => report.majority_after_heal.add_log(log),
            _ => {}
        }
        if phase == Phase::Healed
            && let Some(healed_ms) = report.times.healed_ms
        {
            if log.submitted_ms < healed_ms + HEAL_WINDOW_MS {
                report.first_after_heal.add_log(log);
            }
            if matches!(&log.outcome, Ok(f) if f.state == TaskState::Decided) {
                let after_ms = log.finished_ms.saturating_sub(healed_ms);
                let first = match self.minority.contains(&log.entry) {
                    true => &mut report.minority_first_decided_after_heal_ms,
                    false => &mut report.majority_first_decided_after_heal_ms,
                };
                *first = Some(first.map_or(after_ms, |ms| ms.min(after_ms)));
            }
        }
        if phase == Phase::Partition
            && let Ok(finished) = &log.outcome
            && finished.certificate.is_some()
        {
            let on =
                |side: &BTreeSet<&str>| finished.members.iter().any(|k| side.contains(k.as_str()));
            if on(&self.inside) && on(&self.outside) {
                report.mixed_certificates += 1;
            }
        }
    }
}

fn report(
    args: &RunArgs,
    events: &[Event],
    supervisor: &Supervisor,
    observed: Observed,
) -> RunReport {
    let mut summary = LogSummary::default();
    let mut sides = Sides::of(supervisor);
    for log in &observed.logs {
        let phase = supervisor.times.phase(log.submitted_ms, log.finished_ms);
        summary.add(log, phase);
        if let Some(sides) = sides.as_mut() {
            sides.add(log, phase);
        }
    }
    let partition = sides.map(|sides| sides.report);
    let node_reports = node_reports(supervisor, &summary.certified_by_entry, &observed);
    let ledger = observed.ledger;
    let ok = ledger.lost == 0
        && ledger.changed == 0
        && ledger.unverified == 0
        && summary.wrong_values == 0
        && summary.invalid_certificates == 0
        && partition.as_ref().is_none_or(|p| p.mixed_certificates == 0);
    RunReport {
        nodes: args.nodes,
        regions: args.regions,
        seed: args.seed,
        duration_s: observed.load_ended_s,
        schedule: events.to_vec(),
        actions: supervisor.actions.clone(),
        phases: summary.phases,
        total: summary.total,
        wrong_values: summary.wrong_values,
        invalid_certificates: summary.invalid_certificates,
        kills: supervisor.members.iter().map(|m| m.kills).sum(),
        restarts: supervisor.members.iter().map(|m| m.restarts).sum(),
        crashes: supervisor.members.iter().map(|m| m.crashes).sum(),
        restart_ms_ewma: supervisor.restart_ms_ewma.unwrap_or(0.0),
        downtime_ms_ewma: supervisor.downtime_ms_ewma.unwrap_or(0.0),
        partition,
        ledger,
        autoscale: observed.autoscale,
        node_reports,
        failure_samples: summary.failure_samples,
        unlogged: observed.unlogged,
        ok,
    }
}

fn node_reports(
    supervisor: &Supervisor,
    certified_by_entry: &BTreeMap<usize, u64>,
    observed: &Observed,
) -> Vec<NodeReport> {
    supervisor
        .members
        .iter()
        .enumerate()
        .map(|(index, member)| NodeReport {
            name: member.spec.name.clone(),
            region: member.spec.region.clone(),
            spawned: member.spawned,
            kills: member.kills,
            restarts: member.restarts,
            crashes: member.crashes,
            new_ports: member.new_ports,
            retired: member.retired,
            certified_entered: certified_by_entry.get(&index).copied().unwrap_or(0),
            served: observed
                .ledger
                .served_by_entry
                .get(&index)
                .copied()
                .unwrap_or(0),
            status: observed
                .statuses
                .get(index)
                .and_then(Option::as_ref)
                .map(StatusSummary::of),
        })
        .collect()
}

impl RunReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "chaos run: {} node(s) in {} region(s), seed {}, load for {:.1} s\n",
            self.nodes, self.regions, self.seed, self.duration_s
        );
        for (phase, counts) in &self.phases {
            out += &format!("phase {phase:<11} {}\n", counts.line());
        }
        out += &format!("total            {}\n", self.total.line());
        out += &format!(
            "crashes          kills {}  restarts {}  exits on their own {}  restart (spawn to serving) EWMA {:.0} ms  downtime EWMA {:.0} ms\n",
            self.kills, self.restarts, self.crashes, self.restart_ms_ewma, self.downtime_ms_ewma
        );
        if let Some(partition) = &self.partition {
            out += &partition.lines();
        }
        let l = &self.ledger;
        out += &format!(
            "ledgers          certified {}  served back and verified {}  lost {}  changed {}  unverified {}\n",
            l.certified, l.served, l.lost, l.changed, l.unverified
        );
        out += &format!(
            "values           wrong {}  invalid certificates {}\n",
            self.wrong_values, self.invalid_certificates
        );
        if let Some(a) = &self.autoscale {
            out += &format!(
                "autoscale        polls {}  spawned {}  retired {}  highest mean load {:.2}\n",
                a.polls, a.spawned, a.retired, a.mean_load_max
            );
        }
        out += &self.node_lines();
        out += &self.recovery_lines();
        for problem in &self.ledger.problems {
            out += &format!("problem          {problem}\n");
        }
        for sample in &self.failure_samples {
            out += &format!("failure sample   {sample}\n");
        }
        out += &format!(
            "verdict          {}\n",
            if self.ok {
                "OK: nothing certified was lost, changed, wrong or mixed"
            } else {
                "FAILED: see above"
            }
        );
        out
    }

    /// The table of nodes: origin, crashes, ledgers, Admin status.
    fn node_lines(&self) -> String {
        let mut out = String::from(
            "node      region     origin   kills restarts crashes certified served slots  load reliab\n",
        );
        for n in &self.node_reports {
            let status = n.status.as_ref();
            out += &format!(
                "{:<9} {:<10} {:<8} {:>5} {:>8} {:>7} {:>9} {:>6} {:>5} {:>5} {:>6}\n",
                n.name,
                n.region,
                match (n.spawned, n.retired) {
                    (_, true) => "retired",
                    (true, false) => "spawned",
                    (false, false) => "original",
                },
                n.kills,
                n.restarts,
                n.crashes,
                n.certified_entered,
                n.served,
                status.map_or("-".into(), |s| s.worker_slots.to_string()),
                status.map_or("-".into(), |s| format!("{:.2}", s.load)),
                status.map_or("-".into(), |s| format!("{:.3}", s.reliability)),
            );
        }
        out
    }

    /// Recovery (from the nodes' Admin status) summed per failure kind.
    fn recovery_lines(&self) -> String {
        let mut out = String::new();
        let mut recovery: BTreeMap<&str, (u64, u64, f64, usize)> = BTreeMap::new();
        for row in self
            .node_reports
            .iter()
            .filter_map(|n| n.status.as_ref())
            .flat_map(|s| &s.recovery)
        {
            let entry = recovery.entry(&row.failure).or_default();
            entry.0 += row.failures;
            entry.1 += row.recoveries;
            if row.failures > 0 {
                entry.2 += row.recovery_ms_ewma;
                entry.3 += 1;
            }
        }
        for (failure, (failures, recoveries, ms, n)) in recovery {
            out += &format!(
                "recovery         {failure:<20} failures {failures:>5}  recovered {recoveries:>5}  mean EWMA {:.0} ms\n",
                if n > 0 { ms / n as f64 } else { 0.0 }
            );
        }
        out
    }
}

pub async fn cli(args: RunArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.ok {
        bail!("the chaos run found lost, changed, wrong or mixed certificates");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_partition() {
        let none = PartitionTimes::default();
        assert_eq!(none.phase(10, 20), Phase::Steady);
        let times = PartitionTimes {
            applied_ms: Some(1_000),
            heal_started_ms: Some(5_000),
            healed_ms: Some(5_100),
        };
        assert_eq!(times.phase(0, 900), Phase::Steady);
        assert_eq!(times.phase(900, 1_100), Phase::Transition);
        assert_eq!(times.phase(1_000, 4_999), Phase::Partition);
        assert_eq!(times.phase(4_000, 5_050), Phase::Transition);
        assert_eq!(times.phase(5_100, 6_000), Phase::Healed);
        let unhealed = PartitionTimes {
            applied_ms: Some(1_000),
            ..PartitionTimes::default()
        };
        assert_eq!(unhealed.phase(2_000, 90_000), Phase::Partition);
    }

    #[test]
    fn bootstrap_flags_are_dropped() {
        let args: Vec<String> = [
            "--capability",
            "a=b",
            "--bootstrap",
            "/ip4/1",
            "--bootstrap=/ip4/2",
            "--api-token-file=/t",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            without_bootstrap(&args),
            vec!["--capability", "a=b", "--api-token-file=/t"]
        );
    }

    #[test]
    fn the_autoscaling_rule() {
        let args = RunArgs::new(5, Path::new("unused"));
        let loads = |values: &[(&str, f64)]| -> Vec<(String, f64)> {
            values.iter().map(|(r, l)| (r.to_string(), *l)).collect()
        };
        let busy = loads(&[("region-0", 0.9), ("region-1", 1.5), ("region-1", 0.9)]);
        assert_eq!(
            scale_decision(&busy, None, 0, &args),
            ScaleDecision::Spawn("region-1".into())
        );
        // At the bound: hold.
        assert_eq!(scale_decision(&busy, None, 2, &args), ScaleDecision::Hold);
        let calm = loads(&[("region-0", 0.5), ("region-1", 0.5)]);
        assert_eq!(
            scale_decision(&calm, Some(1.0), 0, &args),
            ScaleDecision::Hold
        );
        // Unreliable though calm: spawn in the busier region (ties: the first).
        assert_eq!(
            scale_decision(&calm, Some(0.5), 0, &args),
            ScaleDecision::Spawn("region-0".into())
        );
        let idle = loads(&[("region-0", 0.1)]);
        assert_eq!(scale_decision(&idle, None, 1, &args), ScaleDecision::Retire);
        assert_eq!(scale_decision(&idle, None, 0, &args), ScaleDecision::Hold);
        assert_eq!(
            scale_decision(&[], Some(0.0), 0, &args),
            ScaleDecision::Hold
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        let dir = Path::new("unused");
        assert!(RunArgs::new(5, dir).schedule().is_ok());
        let bad = [
            RunArgs {
                nodes: 0,
                ..RunArgs::new(5, dir)
            },
            RunArgs {
                replication: 6,
                ..RunArgs::new(5, dir)
            },
            RunArgs {
                duration_s: -1.0,
                ..RunArgs::new(5, dir)
            },
            RunArgs {
                kill_every_s: Some(0.0),
                ..RunArgs::new(5, dir)
            },
            RunArgs {
                load_low: 0.9,
                ..RunArgs::new(5, dir)
            },
            RunArgs {
                clients: 0,
                ..RunArgs::new(5, dir)
            },
        ];
        for args in bad {
            assert!(args.schedule().is_err(), "{args:?}");
        }
    }

    #[test]
    fn tallies_count_certificates() {
        let mut tally = Tally::default();
        let done = |state| {
            Ok(Finished {
                task_id: vec![],
                state,
                certificate: None,
                verified: false,
                right: true,
                members: BTreeSet::new(),
                error: String::new(),
            })
        };
        tally.add(&done(TaskState::Decided), 10);
        tally.add(&done(TaskState::Degraded), 10);
        tally.add(&done(TaskState::Failed), 10);
        tally.add(&Err("Unavailable: no quorum reachable".into()), 7);
        tally.add(&Err("no reply within 15s".into()), 15_000);
        assert_eq!(
            tally,
            Tally {
                submitted: 5,
                decided: 1,
                degraded: 1,
                failed: 1,
                errors: 2,
                errors_by_kind: [("Unavailable".to_string(), 1), ("no reply".to_string(), 1)]
                    .into_iter()
                    .collect(),
                error_ms_max: 15_000,
                failed_ms_max: 10,
                latency_ms_sum: 15_037,
            }
        );
        assert_eq!(tally.certified(), 2);
    }
}
