//! `polity-testnet chaos reliability`: P(correct) measured on real nodes under an
//! injected per-member error rate ε, next to the theory.
//!
//! It launches a fresh cluster (scope `region`: one region of N nodes; scope
//! `continent`: three regions of N nodes in one continent), sets ε on every node
//! with `Admin/SetFaults` (each node its own seed, derived from `--seed`), submits
//! K `sha256` tasks with distinct payloads (replication N, the chosen path and
//! scope, entry nodes round-robin) and judges each outcome against the hex SHA-256
//! it computes itself:
//!
//! - **correct**: DECIDED, the certificate chain verifies, its value is the truth;
//! - **wrong**: DECIDED or DEGRADED with a verifying chain whose value is not the
//!   truth (a wrong answer the federation signed: the failure that matters);
//! - **undecided**: FAILED, DEGRADED with the right value (only part of the scope
//!   decided), or a gRPC error;
//! - **invalid**: a certificate that does not verify or does not carry the
//!   record's value (never expected: the entry node verifies before it stores).
//!
//! With `--attach DIR` it launches nothing: it measures on the running cluster
//! recorded in `DIR/testnet.json` (the compose cluster writes one, with its API
//! token), whose nodes keep their own configuration, and clears their faults at
//! the end.
//!
//! The four add up to K. Measured reliability is correct / K with a Wilson 95 %
//! interval, and so is the wrong-certificate rate.
//!
//! # What the theory assumes, and how the federation differs
//!
//! The seed's theory (`majority_correct_levels`): independent members, each wrong
//! with probability ε; a group is right when a strict majority is right (a tie is a
//! failure); a parent takes the strict majority over its child groups. Its "wrong"
//! counterpart assumes the wrong members collude (one wrong value per task), which
//! is what the nodes inject unless `--distinct-wrong`. The seed formula `1 − ε^(n·d)`
//! is the chance that one of n·d agents is right, not a majority figure.
//!
//! The federation does not take plain majorities everywhere. A group's collector
//! reports the strict majority of all observations; it decides when its members
//! alone are a quorum (bft `n − f`, stake more than two thirds of the weight, raft a
//! majority) or when the dissenters attest it too, which an honest member does only
//! once the others rule out a quorum for its own answer (bft: more than `2f`
//! dissenters, stake: two thirds). So a group of 3 decides by plain majority on
//! every path, a bft group of 4 needs 3 agreeing, a stake group of 5 needs 4
//! (`decisive_agreement`). A region group that could not agree gets extra replicas
//! only when its region has more nodes than the group (here it has none to spare),
//! and a continent group is made of `representatives` (2) agreeing members of each
//! decided region group, under the same rule; a continent formed without some
//! region ends DEGRADED. The "quorum model" line computes exactly that model
//! (`quorum_outcome`, `parent_outcome`), still with independent members and
//! colluding wrong answers.
//!
//! Trust: the entry node lowers a member's trust when it disagrees with a decided
//! group, and members at or below `discovery.trust_min` (0.7) are no longer
//! chosen. With ε > 0 on every node of a region that has exactly N nodes, groups
//! soon cannot be formed at all (FAILED_PRECONDITION), which measures the trust
//! rule rather than the quorum. So by default the nodes run with
//! `discovery.trust_min = 0` (written to `<dir>/chaos-node.toml`);
//! `--keep-trust-floor` keeps the node's default.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use polity_consensus::reliability::{
    Interval, Outcome, Z_95, decisive_agreement, majority_correct_levels, majority_wrong_levels,
    parent_outcome, quorum_outcome, seed_formula, wilson_interval,
};
use polity_consensus::verify_task_chain;
use polity_node::client::{Client, parse_path};
use polity_proto::{
    ConsensusPath, Faults, Level, RiskPolicy, Scope, SubmitTaskRequest, TaskRecord, TaskState,
};
use serde::Serialize;

use super::{node_seed, sha256_hex};
use crate::cluster::{Launched, UpArgs, default_capabilities, launch};
use crate::load::{self, Load, Reply, Step, Submission};
use crate::rpc::{self, Token};

/// Tasks per run at most.
pub const TASKS_MAX: u32 = 100_000;
/// Replicas per region group at most (3 regions of them must fit a testnet).
pub const REPLICAS_MAX: u32 = 32;
/// Client tasks at most.
pub const CONCURRENCY_MAX: usize = 64;
/// Representatives of a decided region group in its continent group (the node's
/// default, `tasks.representatives`).
const REPRESENTATIVES: u32 = 2;
/// Regions of a continent-scope run.
const CONTINENT_REGIONS: u32 = 3;
/// Error messages kept as samples at most.
const SAMPLES_MAX: usize = 5;
/// The node configuration file a measurement writes (trust floor 0).
pub const NODE_CONFIG: &str = "chaos-node.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Region,
    Continent,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReliabilityArgs {
    /// Tasks to submit (K).
    #[arg(long, default_value_t = 100)]
    pub tasks: u32,
    /// Per-member error rate ε injected on every node.
    #[arg(long, default_value_t = 0.15)]
    pub epsilon: f64,
    /// Nodes per region and members per region group (N).
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// region (one region of N nodes) or continent (three regions of N nodes).
    #[arg(long, value_enum, default_value = "region")]
    pub scope: ScopeKind,
    /// Consensus path: bft, raft or stake.
    #[arg(long, default_value = "bft")]
    pub path: String,
    /// Seed of the fault choices (each node gets its own, derived from it) and of
    /// the payloads.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Faulty members answer distinct wrong values instead of one colluding value.
    #[arg(long)]
    pub distinct_wrong: bool,
    /// Time budget of each task in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub deadline_ms: u64,
    /// Keep the node's trust floor (members at or below trust 0.7 are not chosen);
    /// by default it is 0 for the measurement (see the module doc).
    #[arg(long)]
    pub keep_trust_floor: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the node data dirs and the token go (old data there is removed).
    #[arg(long, default_value = "polity-chaos")]
    pub dir: PathBuf,
    /// Instead of launching a cluster, measure on the running one recorded in this
    /// dir's `testnet.json` (e.g. the compose cluster's `deploy/compose/generated`,
    /// whose state names its API token). Its nodes keep their own configuration,
    /// trust floor included; their faults are cleared at the end.
    #[arg(long, value_name = "DIR", conflicts_with = "keep_trust_floor")]
    pub attach: Option<PathBuf>,
}

/// A node the measurement talks to.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    grpc: String,
}

/// How one task ended, judged against the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Correct,
    Wrong,
    /// FAILED, or DEGRADED with the right value.
    Undecided,
    /// A certificate that does not verify or does not match the record.
    Invalid,
    /// No record: a gRPC error or no reply in time.
    Error,
}

/// Judges a record: `chain` is what verifying its certificate gave (the chain's
/// root value, or why it failed), `None` when the record has no certificate.
pub fn judge(
    state: TaskState,
    value: &[u8],
    chain: Option<Result<Vec<u8>, String>>,
    truth: &[u8],
) -> Verdict {
    match (state, chain) {
        (TaskState::Decided | TaskState::Degraded, Some(Ok(root))) if root != value => {
            Verdict::Invalid
        }
        (TaskState::Decided | TaskState::Degraded, Some(Err(_))) => Verdict::Invalid,
        (TaskState::Decided, None) => Verdict::Invalid,
        (TaskState::Decided | TaskState::Degraded, Some(Ok(_))) if value != truth => Verdict::Wrong,
        (TaskState::Decided, Some(Ok(_))) => Verdict::Correct,
        _ => Verdict::Undecided,
    }
}

/// Outcome counts; `correct + wrong + undecided + invalid + errors = tasks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub tasks: u32,
    pub correct: u32,
    pub wrong: u32,
    /// Records that decided nothing (FAILED) or only part of the scope with the
    /// right value (DEGRADED).
    pub undecided: u32,
    pub invalid: u32,
    /// Requests that got no record.
    pub errors: u32,
    /// Of all records: how many were DEGRADED, FAILED.
    pub degraded: u32,
    pub failed: u32,
}

impl Counts {
    pub fn add(&mut self, verdict: Verdict, state: Option<TaskState>) {
        self.tasks += 1;
        match verdict {
            Verdict::Correct => self.correct += 1,
            Verdict::Wrong => self.wrong += 1,
            Verdict::Undecided => self.undecided += 1,
            Verdict::Invalid => self.invalid += 1,
            Verdict::Error => self.errors += 1,
        }
        match state {
            Some(TaskState::Degraded) => self.degraded += 1,
            Some(TaskState::Failed) => self.failed += 1,
            _ => {}
        }
    }

    /// Tasks with no decision: undecided records and errors.
    pub fn no_decision(&self) -> u32 {
        self.undecided + self.errors
    }

    pub fn adds_up(&self) -> bool {
        self.correct + self.wrong + self.undecided + self.invalid + self.errors == self.tasks
    }
}

/// A measured rate and its Wilson 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Rate {
    pub fn of(successes: u32, trials: u32) -> Rate {
        let Interval { low, high } = wilson_interval(u64::from(successes), u64::from(trials), Z_95);
        Rate {
            value: if trials == 0 {
                0.0
            } else {
                f64::from(successes) / f64::from(trials)
            },
            low,
            high,
        }
    }

    pub fn contains(&self, probability: f64) -> bool {
        self.low <= probability && probability <= self.high
    }
}

/// A theoretical P(correct), P(wrong) and whether each lies in the measured interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoryLine {
    pub name: String,
    pub correct: f64,
    /// `None` where the model says nothing about wrong answers.
    pub wrong: Option<f64>,
    pub correct_inside: bool,
    pub wrong_inside: Option<bool>,
}

impl TheoryLine {
    fn new(name: &str, correct: f64, wrong: Option<f64>, measured: &Measured) -> TheoryLine {
        TheoryLine {
            name: name.to_string(),
            correct,
            wrong,
            correct_inside: measured.reliability.contains(correct),
            wrong_inside: wrong.map(|wrong| measured.wrong_rate.contains(wrong)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measured {
    /// correct / K.
    pub reliability: Rate,
    /// wrong / K.
    pub wrong_rate: Rate,
    /// (undecided + errors) / K.
    pub no_decision_rate: Rate,
}

/// The configuration a report describes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    pub tasks: u32,
    pub epsilon: f64,
    pub replicas: u32,
    pub scope: ScopeKind,
    pub path: String,
    pub seed: u64,
    pub concurrency: usize,
    pub distinct_wrong: bool,
    pub deadline_ms: u64,
    pub nodes: usize,
    pub regions: usize,
    pub trust_floor_kept: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReliabilityReport {
    pub config: RunConfig,
    pub counts: Counts,
    pub measured: Measured,
    pub theory: Vec<TheoryLine>,
    pub assumptions: Vec<String>,
    /// What the members answered, where it can be known (region scope, decided
    /// tasks): a check that the injected ε is what the members did.
    pub member_errors: Option<MemberErrorReport>,
    /// Each node's own smoothed reliability (Admin GetStatus), after the run.
    pub node_reliability: Vec<f64>,
    pub duration_s: f64,
    /// A few error messages and failure reasons.
    pub samples: Vec<String>,
}

/// The theory lines of a configuration, against what was measured.
pub fn theory(config: &RunConfig, path: ConsensusPath, measured: &Measured) -> Vec<TheoryLine> {
    let n = config.replicas;
    let epsilon = config.epsilon;
    let sizes: Vec<u32> = match config.scope {
        ScopeKind::Region => vec![n],
        ScopeKind::Continent => vec![n, CONTINENT_REGIONS],
    };
    let levels = sizes.len() as u32;
    let region_quorum = decisive_agreement(path, n);
    let mut region = quorum_outcome(n, region_quorum, epsilon);
    if config.distinct_wrong && region_quorum >= 2 {
        // Distinct wrong answers never agree: no wrong value gathers two members.
        region.wrong = 0.0;
    }
    let model: Outcome = match config.scope {
        ScopeKind::Region => region,
        ScopeKind::Continent => parent_outcome(
            CONTINENT_REGIONS,
            REPRESENTATIVES.min(region_quorum),
            region,
            |members| decisive_agreement(path, members),
        ),
    };
    vec![
        TheoryLine::new(
            &format!("majority over {sizes:?} (seed theory, colluding wrong)"),
            majority_correct_levels(&sizes, epsilon),
            Some(majority_wrong_levels(&sizes, epsilon)),
            measured,
        ),
        TheoryLine::new(
            &format!("seed formula 1-eps^(n*d), n={n} d={levels}"),
            seed_formula(n, levels, epsilon),
            None,
            measured,
        ),
        TheoryLine::new(
            &format!(
                "quorum model ({} decides with {region_quorum} of {n} agreeing{})",
                polity_node::entry::path_name(path),
                if config.distinct_wrong {
                    ", distinct wrong"
                } else {
                    ""
                }
            ),
            model.correct,
            Some(model.wrong),
            measured,
        ),
    ]
}

fn assumptions(config: &RunConfig) -> Vec<String> {
    let mut lines = vec![
        "theory: members independent, each wrong with probability eps; a tie is a failure".into(),
        "theory 'wrong' figures assume colluding members (one wrong value per task)".into(),
        "seed formula: P(at least one of n*d agents right), not a majority figure".into(),
        "federation: a group decides its majority value when that value's members are a \
         quorum or the dissenters may attest it (bft > 2f, stake >= 2/3 dissent); no extra \
         replicas here (every region has exactly N nodes)"
            .into(),
    ];
    if config.trust_floor_kept {
        lines.push(
            "trust floor kept: members that disagreed often are no longer chosen, so \
             groups may not form (counted as errors)"
                .into(),
        );
    } else {
        lines.push(
            "nodes ran with discovery.trust_min = 0: disagreeing members stay eligible, as \
             the theory's fixed members do"
                .into(),
        );
    }
    if config.scope == ScopeKind::Continent {
        lines.push(
            "federation: the continent group is 2 representatives of each decided region \
             group under the same quorum; without some region the result is DEGRADED \
             (counted undecided when right, wrong when wrong)"
                .into(),
        );
    }
    if config.distinct_wrong {
        lines.push(
            "--distinct-wrong: wrong members disagree with each other, so the majority theory's \
             'wrong' figure is an upper bound; the quorum model's is 0 (no two agree)"
                .into(),
        );
    }
    lines
}

impl ReliabilityArgs {
    fn validate(&self) -> anyhow::Result<ConsensusPath> {
        if !(1..=TASKS_MAX).contains(&self.tasks) {
            bail!("--tasks must be in 1..={TASKS_MAX}");
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            bail!("--epsilon must be in [0, 1]");
        }
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            bail!("--replicas must be in 1..={REPLICAS_MAX}");
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            bail!("--concurrency must be in 1..={CONCURRENCY_MAX}");
        }
        if self.deadline_ms == 0 {
            bail!("--deadline-ms must be positive");
        }
        parse_path(&self.path)
    }

    fn run_config(&self) -> RunConfig {
        let regions = match self.scope {
            ScopeKind::Region => 1,
            ScopeKind::Continent => CONTINENT_REGIONS as usize,
        };
        RunConfig {
            tasks: self.tasks,
            epsilon: self.epsilon,
            replicas: self.replicas,
            scope: self.scope,
            path: self.path.clone(),
            seed: self.seed,
            concurrency: self.concurrency,
            distinct_wrong: self.distinct_wrong,
            deadline_ms: self.deadline_ms,
            nodes: regions * self.replicas as usize,
            regions,
            // An attached cluster keeps its own configuration, trust floor included.
            trust_floor_kept: self.keep_trust_floor || self.attach.is_some(),
        }
    }
}

/// The payload of task `k`: distinct per task and per seed.
pub fn payload(seed: u64, k: u32) -> Vec<u8> {
    format!("polity-chaos-reliability seed {seed} task {k}").into_bytes()
}

/// Runs the measurement: launches the cluster, injects ε, submits, judges, stops
/// the cluster.
pub async fn measure(args: &ReliabilityArgs) -> anyhow::Result<ReliabilityReport> {
    let path = args.validate()?;
    let config = args.run_config();
    if let Some(dir) = &args.attach {
        return measure_attached(args, &config, path, dir).await;
    }
    crate::cluster::ensure_no_testnet(&args.dir)?;
    let token = Token::create(&args.dir)?;
    let mut node_args = vec![token.node_arg()];
    if !args.keep_trust_floor {
        let path = args.dir.join(NODE_CONFIG);
        std::fs::write(&path, "[discovery]\ntrust_min = 0.0\n")
            .with_context(|| format!("writing {}", path.display()))?;
        node_args.push(format!("--config={}", path.display()));
    }
    let up = UpArgs {
        nodes: config.nodes,
        regions: config.regions,
        continents: 1,
        capabilities: Vec::new(),
        dir: args.dir.clone(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args,
    };
    let Launched { nodes, .. } = launch(&up, &default_capabilities()).await?;
    let targets: Vec<Target> = nodes
        .iter()
        .map(|node| Target {
            name: node.spec.name.clone(),
            grpc: node.endpoints.grpc.clone(),
        })
        .collect();
    let result = measure_on(args, &config, path, &token, &targets).await;
    for node in nodes {
        if let Err(error) = node.stop() {
            eprintln!("{error:#}");
        }
    }
    result
}

/// The measurement on a running cluster recorded in `dir`; every node's faults are
/// cleared afterwards, whatever the measurement gave.
async fn measure_attached(
    args: &ReliabilityArgs,
    config: &RunConfig,
    path: ConsensusPath,
    dir: &std::path::Path,
) -> anyhow::Result<ReliabilityReport> {
    let state = crate::cluster::TestnetState::read(dir)?
        .with_context(|| format!("no cluster recorded in {}", dir.display()))?;
    let token_file = state.token_file.as_ref().with_context(|| {
        format!(
            "the cluster in {} records no API token: Admin/SetFaults needs one",
            dir.display()
        )
    })?;
    let token = Token::read(token_file)?;
    let targets: Vec<Target> = state
        .nodes
        .iter()
        .map(|node| Target {
            name: node.name.clone(),
            grpc: node.grpc.clone(),
        })
        .collect();
    let result = measure_on(args, config, path, &token, &targets).await;
    for target in &targets {
        if let Err(error) = rpc::set_faults(&target.grpc, &token, Faults::default()).await {
            eprintln!("clearing the faults of {}: {error:#}", target.name);
        }
    }
    result
}

async fn measure_on(
    args: &ReliabilityArgs,
    config: &RunConfig,
    path: ConsensusPath,
    token: &Token,
    nodes: &[Target],
) -> anyhow::Result<ReliabilityReport> {
    inject_faults(args, token, nodes).await?;
    let mut clients: Vec<Client> = Vec::with_capacity(nodes.len());
    for node in nodes {
        clients.push(rpc::federation(&node.grpc, Some(&token.value)).await?);
    }
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(args.tasks))
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:<22} [{bar:40}] {pos}/{len}").expect("valid template"),
    );
    bar.set_message("deciding tasks");
    let started = Instant::now();
    let tasks = Arc::new(ReliabilityLoad {
        clients,
        template: task_template(args, path),
        rpc_timeout: Duration::from_millis(args.deadline_ms) + Duration::from_secs(5),
        next: AtomicU32::new(0),
        tasks: args.tasks,
        seed: args.seed,
        bar: bar.clone(),
    });
    let replies = load::run(tasks, args.concurrency).await?;
    let Judged {
        counts,
        members,
        samples,
    } = judge_all(args, replies.into_iter().flatten());
    bar.finish_and_clear();
    let duration_s = started.elapsed().as_secs_f64();
    let mut node_reliability = Vec::with_capacity(nodes.len());
    for node in nodes {
        match rpc::node_status(&node.grpc, token).await {
            Ok(status) => node_reliability.push(status.reliability),
            Err(error) => bail!("Admin/GetStatus on {}: {error:#}", node.name),
        }
    }
    let measured = Measured {
        reliability: Rate::of(counts.correct, counts.tasks),
        wrong_rate: Rate::of(counts.wrong, counts.tasks),
        no_decision_rate: Rate::of(counts.no_decision(), counts.tasks),
    };
    Ok(ReliabilityReport {
        member_errors: members.report(args.epsilon, counts.correct + counts.wrong == counts.tasks),
        theory: theory(config, path, &measured),
        assumptions: assumptions(config),
        config: config.clone(),
        counts,
        measured,
        node_reliability,
        duration_s,
        samples,
    })
}

/// Sets ε on every node, each with its own fault seed.
async fn inject_faults(
    args: &ReliabilityArgs,
    token: &Token,
    nodes: &[Target],
) -> anyhow::Result<()> {
    for (index, node) in nodes.iter().enumerate() {
        let faults = Faults {
            error_rate: args.epsilon,
            distinct_wrong: args.distinct_wrong,
            seed: node_seed(args.seed, index),
            ..Faults::default()
        };
        rpc::set_faults(&node.grpc, token, faults).await?;
    }
    Ok(())
}

/// The request of every task, but for its payload.
fn task_template(args: &ReliabilityArgs, path: ConsensusPath) -> SubmitTaskRequest {
    let level = match args.scope {
        ScopeKind::Region => Level::Region,
        ScopeKind::Continent => Level::Continent,
    };
    SubmitTaskRequest {
        capability: "sha256".into(),
        payload: Vec::new(),
        scope: Some(Scope {
            level: level as i32,
            name: String::new(),
        }),
        replication: args.replicas,
        aggregation: 0,
        policy: Some(RiskPolicy {
            path_override: path as i32,
            ..RiskPolicy::default()
        }),
        deadline_ms: args.deadline_ms,
        nonce: 0,
        wait: true,
    }
}

/// Task `k` and what came back for it (a record, or why none).
type TaskReply = (u32, Result<TaskRecord, String>);

/// The measurement's [`Load`]: tasks 0..K, each sent once, entry nodes round-robin.
struct ReliabilityLoad {
    clients: Vec<Client>,
    template: SubmitTaskRequest,
    rpc_timeout: Duration,
    /// The next task to send.
    next: AtomicU32,
    tasks: u32,
    seed: u64,
    bar: ProgressBar,
}

impl Load for ReliabilityLoad {
    type Client = Vec<TaskReply>;
    /// The task number.
    type Sent = u32;

    fn client(&self, _index: usize) -> anyhow::Result<Vec<TaskReply>> {
        Ok(Vec::new())
    }

    fn next(&self, _seen: &mut Vec<TaskReply>) -> Step<u32> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if k >= self.tasks {
            return Step::Stop;
        }
        let request = SubmitTaskRequest {
            payload: payload(self.seed, k),
            ..self.template.clone()
        };
        Step::Send(Box::new(Submission {
            client: self.clients[k as usize % self.clients.len()].clone(),
            request: tonic::Request::new(request),
            timeout: self.rpc_timeout,
            sent: k,
        }))
    }

    fn record(&self, seen: &mut Vec<TaskReply>, k: u32, reply: Reply) -> Duration {
        seen.push((k, reply.record.map_err(|error| error.to_string())));
        self.bar.inc(1);
        Duration::ZERO
    }
}

/// Every task judged.
struct Judged {
    counts: Counts,
    members: MemberErrors,
    samples: Vec<String>,
}

/// Judges every reply against the SHA-256 of its payload.
fn judge_all(args: &ReliabilityArgs, replies: impl Iterator<Item = TaskReply>) -> Judged {
    let mut counts = Counts::default();
    let mut members = MemberErrors::default();
    let mut samples = Vec::new();
    for (k, outcome) in replies {
        let truth = sha256_hex(&payload(args.seed, k));
        match outcome {
            Ok(record) => {
                let state = TaskState::try_from(record.state).unwrap_or_default();
                let verdict = judge_record(&record, truth.as_bytes());
                if args.scope == ScopeKind::Region
                    && matches!(verdict, Verdict::Correct | Verdict::Wrong)
                {
                    members.add(&record, verdict == Verdict::Correct);
                }
                if state == TaskState::Failed && samples.len() < SAMPLES_MAX {
                    samples.push(format!("FAILED: {}", record.error));
                }
                counts.add(verdict, Some(state));
            }
            Err(message) => {
                if samples.len() < SAMPLES_MAX {
                    samples.push(message);
                }
                counts.add(Verdict::Error, None);
            }
        }
    }
    Judged {
        counts,
        members,
        samples,
    }
}

/// Wrong answers of region members, read from decided records: when the value
/// is right, the members that disagreed answered wrong; when it is wrong, the ones
/// that agreed did. Only groups that list every member as agreed or disagreed
/// count: a fast-path certificate leaves out the members it did not need (e.g. the
/// one wrong member of a bft group of 4), and such groups are counted as left out,
/// so the estimate is only unbiased when none are.
#[derive(Debug, Clone, Default)]
pub struct MemberErrors {
    answers: u64,
    wrong: u64,
    left_out: u64,
    /// Tasks by how many of their members answered wrong.
    histogram: Vec<u64>,
}

impl MemberErrors {
    pub fn add(&mut self, record: &TaskRecord, value_right: bool) {
        for group in record
            .groups
            .iter()
            .filter(|g| g.level == Level::Region as i32 && g.degraded_reason.is_empty())
        {
            if group.agreed.len() + group.disagreed.len() != group.members.len() {
                self.left_out += 1;
                continue;
            }
            let wrong = if value_right {
                group.disagreed.len()
            } else {
                group.agreed.len()
            };
            self.answers += (group.agreed.len() + group.disagreed.len()) as u64;
            self.wrong += wrong as u64;
            if self.histogram.len() <= wrong {
                self.histogram.resize(wrong + 1, 0);
            }
            self.histogram[wrong] += 1;
        }
    }

    /// `all_decided`: every task of the run decided (see `unbiased`).
    pub fn report(&self, epsilon: f64, all_decided: bool) -> Option<MemberErrorReport> {
        if self.answers == 0 && self.left_out == 0 {
            return None;
        }
        let Interval { low, high } = wilson_interval(self.wrong, self.answers, Z_95);
        Some(MemberErrorReport {
            answers: self.answers,
            wrong: self.wrong,
            rate: Rate {
                value: if self.answers == 0 {
                    0.0
                } else {
                    self.wrong as f64 / self.answers as f64
                },
                low,
                high,
            },
            epsilon_inside: low <= epsilon && epsilon <= high,
            groups_by_wrong_members: self.histogram.clone(),
            groups_left_out: self.left_out,
            unbiased: self.left_out == 0 && all_decided,
        })
    }
}

impl MemberErrorReport {
    /// The report's table line.
    fn line(&self) -> String {
        format!(
            "members    wrong answers {} of {}: {} ({} the interval); decided groups by wrong members {:?}; groups not listing every member (left out) {}\n",
            self.wrong,
            self.answers,
            rate_text(&self.rate),
            match (self.unbiased, self.epsilon_inside) {
                (false, _) => "biased, not comparable: not every task decided or groups left out;",
                (true, true) => "eps inside",
                (true, false) => "eps OUTSIDE",
            },
            self.groups_by_wrong_members,
            self.groups_left_out
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberErrorReport {
    /// Member answers seen (agreed + disagreed of decided region groups).
    pub answers: u64,
    pub wrong: u64,
    /// wrong / answers, with its Wilson 95 % interval.
    pub rate: Rate,
    pub epsilon_inside: bool,
    /// Decided region groups by their number of wrong members (index = count).
    pub groups_by_wrong_members: Vec<u64>,
    /// Decided groups that did not list every member (fast path), not counted.
    pub groups_left_out: u64,
    /// No group left out and every task decided: only then is `rate` an unbiased
    /// estimate of ε (undecided tasks and left-out groups are not a random sample).
    pub unbiased: bool,
}

/// Verifies a record's certificate chain and judges it.
pub fn judge_record(record: &TaskRecord, truth: &[u8]) -> Verdict {
    let state = TaskState::try_from(record.state).unwrap_or_default();
    let chain = record.certificate.as_ref().map(|certificate| {
        verify_task_chain(certificate, None)
            .map(|summary| summary.value)
            .map_err(|error| error.to_string())
    });
    judge(state, &record.value, chain, truth)
}

/// A rate with its interval, as the table shows it.
fn rate_text(r: &Rate) -> String {
    format!("{:.4} [{:.4}, {:.4}]", r.value, r.low, r.high)
}

impl ReliabilityReport {
    pub fn table(&self) -> String {
        let c = &self.config;
        let n = &self.counts;
        let m = &self.measured;
        let mut out = format!(
            "chaos reliability: {} tasks, eps {}, N {}, scope {:?} ({} region(s) x {} nodes), path {}, seed {}{}\n",
            c.tasks,
            c.epsilon,
            c.replicas,
            c.scope,
            c.regions,
            c.replicas,
            c.path,
            c.seed,
            if c.distinct_wrong {
                ", distinct wrong answers"
            } else {
                ", colluding wrong answers"
            }
        );
        out += &format!(
            "outcomes   correct {}  wrong {}  undecided {}  errors {}  invalid {}  (records DEGRADED {}, FAILED {})  in {:.1} s\n",
            n.correct,
            n.wrong,
            n.undecided,
            n.errors,
            n.invalid,
            n.degraded,
            n.failed,
            self.duration_s
        );
        let rate = rate_text;
        out += &format!(
            "measured   reliability {}   wrong certificates {}   no decision {}   (Wilson 95 %)\n",
            rate(&m.reliability),
            rate(&m.wrong_rate),
            rate(&m.no_decision_rate)
        );
        let yes = |inside: bool| if inside { "inside" } else { "OUTSIDE" };
        for line in &self.theory {
            out += &format!(
                "theory     {:<58} P(correct) {:.4} {:<8}",
                line.name,
                line.correct,
                yes(line.correct_inside)
            );
            if let (Some(wrong), Some(inside)) = (line.wrong, line.wrong_inside) {
                out += &format!("  P(wrong) {wrong:.4} {}", yes(inside));
            }
            out.push('\n');
        }
        if let Some(members) = &self.member_errors {
            out += &members.line();
        }
        if !self.node_reliability.is_empty() {
            let shown: Vec<String> = self
                .node_reliability
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect();
            out += &format!(
                "nodes      own reliability (GetStatus): {}\n",
                shown.join(" ")
            );
        }
        for line in &self.assumptions {
            out += &format!("note       {line}\n");
        }
        for sample in &self.samples {
            out += &format!("sample     {sample}\n");
        }
        out
    }
}

pub async fn cli(args: ReliabilityArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let truth = b"right".as_slice();
        let ok = |v: &[u8]| Some(Ok(v.to_vec()));
        assert_eq!(
            judge(TaskState::Decided, truth, ok(truth), truth),
            Verdict::Correct
        );
        assert_eq!(
            judge(TaskState::Decided, b"lie", ok(b"lie"), truth),
            Verdict::Wrong
        );
        assert_eq!(
            judge(TaskState::Degraded, b"lie", ok(b"lie"), truth),
            Verdict::Wrong
        );
        assert_eq!(
            judge(TaskState::Degraded, truth, ok(truth), truth),
            Verdict::Undecided
        );
        assert_eq!(
            judge(TaskState::Failed, b"", None, truth),
            Verdict::Undecided
        );
        assert_eq!(
            judge(TaskState::Decided, truth, ok(b"other"), truth),
            Verdict::Invalid
        );
        assert_eq!(
            judge(TaskState::Decided, truth, Some(Err("bad".into())), truth),
            Verdict::Invalid
        );
        assert_eq!(
            judge(TaskState::Decided, truth, None, truth),
            Verdict::Invalid
        );
    }

    #[test]
    fn counts_add_up() {
        let mut counts = Counts::default();
        counts.add(Verdict::Correct, Some(TaskState::Decided));
        counts.add(Verdict::Wrong, Some(TaskState::Degraded));
        counts.add(Verdict::Undecided, Some(TaskState::Failed));
        counts.add(Verdict::Error, None);
        assert!(counts.adds_up());
        assert_eq!(counts.tasks, 4);
        assert_eq!((counts.degraded, counts.failed), (1, 1));
        assert_eq!(counts.no_decision(), 2);
    }

    fn config(scope: ScopeKind) -> RunConfig {
        RunConfig {
            tasks: 100,
            epsilon: 0.3,
            replicas: 3,
            scope,
            path: "bft".into(),
            seed: 1,
            concurrency: 4,
            distinct_wrong: false,
            deadline_ms: 10_000,
            nodes: 3,
            regions: 1,
            trust_floor_kept: false,
        }
    }

    #[test]
    fn theory_lines_and_their_intervals() {
        let measured = Measured {
            reliability: Rate::of(34, 100),
            wrong_rate: Rate::of(3, 100),
            no_decision_rate: Rate::of(63, 100),
        };
        let lines = theory(&config(ScopeKind::Region), ConsensusPath::Bft, &measured);
        assert_eq!(lines.len(), 3);
        // Majority over 3 at eps 0.3 is 0.784: far outside [0.25, 0.44].
        assert!((lines[0].correct - 0.784).abs() < 1e-9);
        assert!(!lines[0].correct_inside);
        // A group of three decides by majority on bft too (f = 0: any dissent
        // lets the minority attest), so the quorum model is the majority here.
        assert!((lines[2].correct - 0.784).abs() < 1e-9);
        assert!((lines[2].wrong.unwrap() - 0.216).abs() < 1e-9);
        assert!(lines[1].wrong.is_none());
        // bft over 4 needs 3 agreeing.
        let four = RunConfig {
            replicas: 4,
            nodes: 4,
            ..config(ScopeKind::Region)
        };
        let lines = theory(&four, ConsensusPath::Bft, &measured);
        let expected = polity_consensus::reliability::at_least(4, 3, 0.7);
        assert!((lines[2].correct - expected).abs() < 1e-12);
        assert!(!lines[2].correct_inside);
        let distinct = RunConfig {
            distinct_wrong: true,
            ..config(ScopeKind::Region)
        };
        let lines = theory(&distinct, ConsensusPath::Bft, &measured);
        assert_eq!(lines[2].wrong, Some(0.0));
        assert!((lines[2].correct - 0.784).abs() < 1e-9);
        let continent = theory(
            &config(ScopeKind::Continent),
            ConsensusPath::Raft,
            &measured,
        );
        assert!((continent[0].correct - majority_correct_levels(&[3, 3], 0.3)).abs() < 1e-12);
        assert!(continent[2].correct <= continent[0].correct + 1e-12);
    }

    #[test]
    fn member_errors_from_records() {
        use polity_proto::GroupStats;
        let group = |agreed: usize, disagreed: usize, members: usize| GroupStats {
            level: Level::Region as i32,
            agreed: vec!["a".into(); agreed],
            disagreed: vec!["d".into(); disagreed],
            members: vec!["m".into(); members],
            ..GroupStats::default()
        };
        let record = |g: GroupStats| TaskRecord {
            groups: vec![g],
            ..TaskRecord::default()
        };
        let mut errors = MemberErrors::default();
        errors.add(&record(group(2, 1, 3)), true); // one wrong member
        errors.add(&record(group(2, 1, 3)), false); // two wrong members won
        errors.add(&record(group(3, 0, 3)), true);
        errors.add(&record(group(3, 0, 4)), true); // fast path: left out
        let report = errors.report(0.3, true).unwrap();
        assert!(!report.unbiased, "a group was left out");
        assert_eq!((report.answers, report.wrong), (9, 3));
        assert_eq!(report.groups_by_wrong_members, vec![1, 1, 1]);
        assert_eq!(report.groups_left_out, 1);
        assert!(report.epsilon_inside);
        assert!(MemberErrors::default().report(0.3, true).is_none());
        let mut complete = MemberErrors::default();
        complete.add(&record(group(2, 1, 3)), true);
        assert!(complete.report(0.3, true).unwrap().unbiased);
        assert!(!complete.report(0.3, false).unwrap().unbiased);
    }

    #[test]
    fn rates_and_payloads() {
        let rate = Rate::of(0, 0);
        assert_eq!((rate.value, rate.low, rate.high), (0.0, 0.0, 1.0));
        let rate = Rate::of(30, 30);
        assert_eq!(rate.value, 1.0);
        assert!(rate.contains(1.0) && !rate.contains(0.5));
        assert_ne!(payload(1, 2), payload(1, 3));
        assert_ne!(payload(1, 2), payload(2, 2));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let good = ReliabilityArgs {
            tasks: 10,
            epsilon: 0.1,
            replicas: 3,
            scope: ScopeKind::Region,
            path: "raft".into(),
            seed: 1,
            concurrency: 2,
            distinct_wrong: false,
            deadline_ms: 1000,
            keep_trust_floor: false,
            json: true,
            dir: PathBuf::from("unused"),
            attach: None,
        };
        assert_eq!(good.validate().unwrap(), ConsensusPath::Raft);
        for bad in [
            ReliabilityArgs {
                epsilon: 1.5,
                ..good.clone()
            },
            ReliabilityArgs {
                epsilon: f64::NAN,
                ..good.clone()
            },
            ReliabilityArgs {
                tasks: 0,
                ..good.clone()
            },
            ReliabilityArgs {
                replicas: 0,
                ..good.clone()
            },
            ReliabilityArgs {
                concurrency: 0,
                ..good.clone()
            },
            ReliabilityArgs {
                path: "paxos".into(),
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
