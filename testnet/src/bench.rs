//! `polity-testnet bench`: a gRPC load generator for running nodes.
//!
//! `--concurrency` client tasks each loop "submit a task with `wait: true`, await the
//! finished `TaskRecord`", spreading their requests round-robin over the gRPC
//! endpoints given (`--endpoint`, repeatable) or found in a detached testnet's state
//! file (`--dir`). Every request carries a distinct nonce (a random per-run base
//! plus a counter), so each one is a distinct task that the federation really
//! decides, never a stored record handed back.
//!
//! The run has two phases: a warm-up (`--warmup`, not recorded) and a measured
//! phase that ends after `--duration` seconds or after `--count` measured requests.
//! A request belongs to the phase in which it was *sent*; requests still in flight
//! when the measured phase ends are awaited and recorded, and the measured time
//! runs until the last of them returned.
//!
//! What is measured:
//!
//! - latency, in an [`hdrhistogram`] at microsecond resolution with 3 significant
//!   figures, from sending a `SubmitTask` to its reply, for every request that got a
//!   `TaskRecord` back (whatever its state); gRPC errors are counted, not timed;
//! - outcomes: records DECIDED, DEGRADED, FAILED (and any other state, which a
//!   `wait: true` reply should never have);
//! - errors by gRPC code (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`, ...), with one
//!   sample message per code; a request with no reply within the deadline plus a
//!   margin counts as `DEADLINE_EXCEEDED`;
//! - throughput: decided tasks per second of measured time.
//!
//! Everything is bounded: the client tasks are the only parallelism (each has at
//! most one request in flight), results are kept per task and merged at the end,
//! and the error maps are keyed by the 17 gRPC codes.
//!
//! [`run`] is the core, usable without any process; [`cli`] is the subcommand.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use polity_node::client::{Client, endpoint_url, parse_path, parse_scope};
use polity_proto::{ConsensusPath, RiskPolicy, Scope, SubmitTaskRequest, TaskRecord, TaskState};
use serde::Serialize;

use crate::cluster::TestnetState;
use crate::load::{self, Load, Reply, Step, Submission};
use crate::rpc::{self, SubmitError};

/// Client tasks at most.
pub const CONCURRENCY_MAX: usize = 10_000;
/// Connections per endpoint at most.
pub const CONNECTIONS_MAX: usize = 64;
/// Payload bytes at most (a node's default payload limit is 1 MiB).
pub const PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The deadline a node applies when a request gives none (`deadline_ms: 0`).
const NODE_DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Longest latency the histogram holds; longer ones are recorded as this.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// How long a client task pauses after an error before its next request, so a
/// dead or shedding node is not hammered in a hot loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Failure reasons (of FAILED records) kept as samples at most.
const FAILURE_SAMPLES_MAX: usize = 5;
/// Characters of a sample message kept at most.
const SAMPLE_CHARS_MAX: usize = 200;

/// `polity-testnet bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A node's gRPC endpoint, e.g. 127.0.0.1:7001 or http://127.0.0.1:7001
    /// (repeatable; requests are spread round-robin over them).
    #[arg(
        long = "endpoint",
        required_unless_present = "dir",
        conflicts_with = "dir"
    )]
    pub endpoints: Vec<String>,
    /// Instead, every live node of the detached testnet in this dir
    /// (`polity-testnet up --detach --dir DIR`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bearer token sent with every request, when the nodes require one.
    #[arg(long, env = "POLITY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Client tasks, each with one request in flight at a time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections per endpoint (the client tasks share them).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measure for this many seconds (default 10, unless --count is given).
    #[arg(long, conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Instead, stop after this many measured requests.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds of warm-up before measuring (its requests are not recorded).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Capability every task runs.
    #[arg(long, default_value = "sha256")]
    pub capability: String,
    /// Payload size of every task in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// region[:NAME], continent[:NAME] or global (default: the entry node's region).
    #[arg(long)]
    pub scope: Option<String>,
    /// Force a consensus path: bft, raft or stake.
    #[arg(long)]
    pub path: Option<String>,
    /// Members asked per region group.
    #[arg(long, default_value_t = 1)]
    pub replication: u32,
    /// Time budget of every task in milliseconds (0: the node's default, 10 s).
    #[arg(long, default_value_t = 10_000)]
    pub deadline_ms: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopAfter {
    /// After this long.
    Duration(Duration),
    /// After this many measured requests have been sent (and answered).
    Count(u64),
}

/// Everything [`run`] needs; [`BenchConfig::new`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// gRPC endpoints (plaintext `http://`).
    pub endpoints: Vec<String>,
    /// Bearer token (without the `Bearer ` prefix).
    pub token: Option<String>,
    /// Client tasks.
    pub concurrency: usize,
    /// Connections per endpoint.
    pub connections: usize,
    /// When the measured phase ends.
    pub stop: StopAfter,
    /// Warm-up before the measured phase.
    pub warmup: Duration,
    /// Capability of every task.
    pub capability: String,
    /// Payload size of every task.
    pub payload_bytes: usize,
    /// Scope of every task; `None` is the entry node's region.
    pub scope: Option<Scope>,
    /// Forced consensus path; `None` lets the node choose.
    pub path: Option<ConsensusPath>,
    /// Members per region group.
    pub replication: u32,
    /// Time budget of every task in milliseconds (0: the node's default).
    pub deadline_ms: u64,
}

impl BenchConfig {
    /// The CLI's defaults against these endpoints.
    pub fn new(endpoints: Vec<String>) -> BenchConfig {
        BenchConfig {
            endpoints,
            token: None,
            concurrency: 64,
            connections: 4,
            stop: StopAfter::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(1),
            capability: "sha256".to_string(),
            payload_bytes: 64,
            scope: None,
            path: None,
            replication: 1,
            deadline_ms: 10_000,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() {
            bail!("no endpoints to send to");
        }
        if let Some(endpoint) = self.endpoints.iter().find(|e| e.starts_with("https://")) {
            bail!("{endpoint}: bench speaks plaintext gRPC (http://) only");
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            bail!("--concurrency must be in 1..={CONCURRENCY_MAX}");
        }
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            bail!("--connections must be in 1..={CONNECTIONS_MAX}");
        }
        match self.stop {
            StopAfter::Duration(duration) if duration.is_zero() => {
                bail!("--duration must be positive")
            }
            StopAfter::Count(0) => bail!("--count must be positive"),
            _ => {}
        }
        if self.capability.is_empty() {
            bail!("--capability must not be empty");
        }
        if self.payload_bytes > PAYLOAD_BYTES_MAX {
            bail!("--payload-bytes must be at most {PAYLOAD_BYTES_MAX}");
        }
        Ok(())
    }

    /// How long a client waits for a reply: the task's deadline plus a margin (a
    /// tenth of it, at least one second) for the reply to travel back.
    fn rpc_timeout(&self) -> Duration {
        let deadline = match self.deadline_ms {
            0 => NODE_DEFAULT_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        deadline + (deadline / 10).max(Duration::from_secs(1))
    }

    /// The request every client sends, but for its nonce.
    fn template(&self, run_base: u64) -> SubmitTaskRequest {
        SubmitTaskRequest {
            capability: self.capability.clone(),
            payload: payload(self.payload_bytes, run_base),
            scope: self.scope.clone(),
            replication: self.replication,
            aggregation: 0,
            policy: self.path.map(|path| RiskPolicy {
                adversarial_risk: 0.0,
                consistency: 0.0,
                path_override: path as i32,
            }),
            deadline_ms: self.deadline_ms,
            nonce: 0,
            wait: true,
        }
    }
}

impl BenchArgs {
    /// Resolves the endpoints (reading `--dir`'s state file) and parses the options.
    pub fn config(&self) -> anyhow::Result<BenchConfig> {
        let endpoints = match &self.dir {
            Some(dir) => testnet_endpoints(dir)?,
            // Plaintext only, so a bare host:port is http://.
            None => self
                .endpoints
                .iter()
                .map(|endpoint| endpoint_url(endpoint, false))
                .collect(),
        };
        let stop = match (self.count, self.duration) {
            (Some(count), _) => StopAfter::Count(count),
            (None, Some(seconds)) => StopAfter::Duration(seconds_arg("--duration", seconds)?),
            (None, None) => StopAfter::Duration(Duration::from_secs(10)),
        };
        Ok(BenchConfig {
            endpoints,
            token: self.token.clone(),
            concurrency: self.concurrency,
            connections: self.connections,
            stop,
            warmup: seconds_arg("--warmup", self.warmup)?,
            capability: self.capability.clone(),
            payload_bytes: self.payload_bytes,
            scope: self.scope.as_deref().map(parse_scope).transpose()?,
            path: self.path.as_deref().map(parse_path).transpose()?,
            replication: self.replication,
            deadline_ms: self.deadline_ms,
        })
    }
}

fn seconds_arg(name: &str, seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .with_context(|| format!("{name} {seconds}: not a number of seconds"))
}

/// The gRPC endpoints of the live nodes of a detached testnet, as `status` finds
/// them: from `<dir>/testnet.json`.
pub fn testnet_endpoints(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let Some(state) = TestnetState::read(dir)? else {
        bail!(
            "no testnet recorded in {} (polity-testnet up --detach --dir {} first)",
            dir.display(),
            dir.display()
        );
    };
    let endpoints: Vec<String> = state
        .nodes
        .iter()
        .filter(|node| node.maybe_alive())
        .map(|node| node.grpc.clone())
        .collect();
    if endpoints.is_empty() {
        bail!("no node of the testnet in {} is alive", dir.display());
    }
    if endpoints.len() < state.nodes.len() {
        eprintln!(
            "warning: {} of {} node(s) are dead; sending to the others",
            state.nodes.len() - endpoints.len(),
            state.nodes.len()
        );
    }
    Ok(endpoints)
}

/// `size` printable bytes derived from the run's random base (so two runs send
/// different payloads even before their nonces differ).
fn payload(size: usize, run_base: u64) -> Vec<u8> {
    let pattern = format!("polity-bench-{run_base:016x} ");
    pattern.bytes().cycle().take(size).collect()
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Requests timed (those answered with a record).
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyReport {
    fn of(histogram: &Histogram<u64>) -> LatencyReport {
        if histogram.is_empty() {
            return LatencyReport::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyReport {
            samples: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// States of the records that came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcomes {
    pub decided: u64,
    pub degraded: u64,
    pub failed: u64,
    /// Any other state (RUNNING or unspecified: a `wait: true` reply should never
    /// have one).
    pub other: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub endpoints: usize,
    pub connections_per_endpoint: usize,
    pub concurrency: usize,
    pub capability: String,
    pub payload_bytes: usize,
    pub replication: u32,
    pub deadline_ms: u64,
    /// Requests sent during the warm-up (not recorded).
    pub warmup_requests: u64,
    /// Measured requests (each answered with a record or an error).
    pub requests: u64,
    /// Seconds from the end of the warm-up until the last measured reply.
    pub duration_s: f64,
    /// Measured requests per second.
    pub requests_per_s: f64,
    /// Decided tasks per second: the throughput.
    pub decisions_per_s: f64,
    pub latency_ms: LatencyReport,
    pub outcomes: Outcomes,
    /// gRPC errors by code name, e.g. `RESOURCE_EXHAUSTED`.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error code.
    pub error_samples: BTreeMap<String, String>,
    /// A few distinct reasons given by FAILED records.
    pub failure_samples: Vec<String>,
}

impl BenchReport {
    /// Total gRPC errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "bench         {} endpoint(s) x {} connection(s), concurrency {}, {} ({} B payload, replication {}, deadline {} ms)",
            self.endpoints,
            self.connections_per_endpoint,
            self.concurrency,
            self.capability,
            self.payload_bytes,
            self.replication,
            self.deadline_ms
        ));
        line(format!(
            "requests      {} in {:.2} s ({:.1}/s; {} warm-up request(s) not recorded)",
            self.requests, self.duration_s, self.requests_per_s, self.warmup_requests
        ));
        line(format!("decisions/s   {:.1}", self.decisions_per_s));
        line(format!(
            "outcomes      decided {}, degraded {}, failed {}{}",
            self.outcomes.decided,
            self.outcomes.degraded,
            self.outcomes.failed,
            if self.outcomes.other > 0 {
                format!(", other {}", self.outcomes.other)
            } else {
                String::new()
            }
        ));
        let latency = &self.latency_ms;
        line(format!(
            "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, {} sample(s))",
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p999,
            latency.max,
            latency.mean,
            latency.samples
        ));
        if self.errors.is_empty() {
            line("errors        none".to_string());
        } else {
            line(format!("errors        {}", self.error_count()));
            for (code, count) in &self.errors {
                let sample = self.error_samples.get(code).map_or("", String::as_str);
                line(format!("  {code:<22} {count:>8}  e.g. {sample}"));
            }
        }
        for reason in &self.failure_samples {
            line(format!("failed, e.g.  {reason}"));
        }
        out
    }
}

/// Opens `connections` channels to every endpoint, ordered so that consecutive
/// clients reach consecutive endpoints (round-robin over the list spreads the load
/// evenly over endpoints and connections).
async fn connect(config: &BenchConfig) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(config.endpoints.len() * config.connections);
    for _ in 0..config.connections {
        for url in &config.endpoints {
            // Each `federation` opens its own HTTP/2 connection.
            clients.push(rpc::federation(url, config.token.as_deref()).await?);
        }
    }
    Ok(clients)
}

/// The bench's [`Load`]: round-robin over the clients, fresh nonces, a warm-up
/// and then the measured phase.
struct BenchLoad {
    clients: Vec<Client>,
    template: SubmitTaskRequest,
    rpc_timeout: Duration,
    /// Nonce of the next request: the run's random base plus a counter.
    next_nonce: AtomicU64,
    /// Index of the client for the next request.
    next_client: AtomicUsize,
    /// Measured requests sent so far (for [`StopAfter::Count`]).
    measured_sent: AtomicU64,
    /// When the warm-up ends.
    measure_from: Instant,
    stop: StopAfter,
}

/// What one client task saw; merged into the report at the end.
struct Tally {
    latency_us: Histogram<u64>,
    warmup_requests: u64,
    requests: u64,
    outcomes: Outcomes,
    errors: BTreeMap<&'static str, u64>,
    error_samples: BTreeMap<&'static str, String>,
    failure_samples: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .map_err(|error| anyhow::anyhow!("latency histogram: {error:?}"))?,
            warmup_requests: 0,
            requests: 0,
            outcomes: Outcomes::default(),
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            failure_samples: Vec::new(),
        })
    }

    /// A record that came back after `latency`.
    fn record(&mut self, record: &TaskRecord, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        match TaskState::try_from(record.state) {
            Ok(TaskState::Decided) => self.outcomes.decided += 1,
            Ok(TaskState::Degraded) => self.outcomes.degraded += 1,
            Ok(TaskState::Failed) => {
                self.outcomes.failed += 1;
                self.failure(&record.error);
            }
            _ => self.outcomes.other += 1,
        }
    }

    fn error(&mut self, code: tonic::Code, message: &str) {
        let name = code_name(code);
        *self.errors.entry(name).or_default() += 1;
        self.error_samples
            .entry(name)
            .or_insert_with(|| sample(message));
    }

    fn failure(&mut self, reason: &str) {
        if self.failure_samples.len() < FAILURE_SAMPLES_MAX
            && !self.failure_samples.iter().any(|known| known == reason)
        {
            self.failure_samples.push(sample(reason));
        }
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .map_err(|error| anyhow::anyhow!("merging latency histograms: {error:?}"))?;
        self.warmup_requests += other.warmup_requests;
        self.requests += other.requests;
        self.outcomes.decided += other.outcomes.decided;
        self.outcomes.degraded += other.outcomes.degraded;
        self.outcomes.failed += other.outcomes.failed;
        self.outcomes.other += other.outcomes.other;
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        for (code, message) in other.error_samples {
            self.error_samples.entry(code).or_insert(message);
        }
        for reason in other.failure_samples {
            self.failure(&reason);
        }
        Ok(())
    }
}

fn sample(message: &str) -> String {
    message.chars().take(SAMPLE_CHARS_MAX).collect()
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Load for BenchLoad {
    type Client = Tally;
    /// Whether the request belongs to the measured phase.
    type Sent = bool;

    fn client(&self, _index: usize) -> anyhow::Result<Tally> {
        Tally::new()
    }

    fn next(&self, _tally: &mut Tally) -> Step<bool> {
        let now = Instant::now();
        let measured = now >= self.measure_from;
        if measured {
            let over = match self.stop {
                StopAfter::Duration(duration) => now >= self.measure_from + duration,
                StopAfter::Count(count) => {
                    self.measured_sent.fetch_add(1, Ordering::Relaxed) >= count
                }
            };
            if over {
                return Step::Stop;
            }
        }
        let mut request = self.template.clone();
        request.nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let index = self.next_client.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.rpc_timeout);
        Step::Send(Box::new(Submission {
            client: self.clients[index].clone(),
            request,
            timeout: self.rpc_timeout,
            sent: measured,
        }))
    }

    fn record(&self, tally: &mut Tally, measured: bool, reply: Reply) -> Duration {
        if !measured {
            tally.warmup_requests += 1;
            return if reply.record.is_ok() {
                Duration::ZERO
            } else {
                ERROR_PAUSE
            };
        }
        tally.requests += 1;
        match reply.record {
            Ok(record) => {
                tally.record(&record, reply.latency);
                Duration::ZERO
            }
            Err(SubmitError::Status(status)) => {
                tally.error(status.code(), status.message());
                ERROR_PAUSE
            }
            Err(SubmitError::NoReply(timeout)) => {
                tally.error(
                    tonic::Code::DeadlineExceeded,
                    &format!(
                        "no reply within {} ms (client-side timeout)",
                        timeout.as_millis()
                    ),
                );
                Duration::ZERO
            }
        }
    }
}

/// Runs the load: connects, warms up, measures, and returns what it measured.
pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    config.validate()?;
    let clients = connect(&config).await?;
    let run_base = getrandom::u64().context("drawing the run's random nonce base")?;
    let started = Instant::now();
    let bench = Arc::new(BenchLoad {
        clients,
        template: config.template(run_base),
        rpc_timeout: config.rpc_timeout(),
        next_nonce: AtomicU64::new(run_base),
        next_client: AtomicUsize::new(0),
        measured_sent: AtomicU64::new(0),
        measure_from: started + config.warmup,
        stop: config.stop,
    });
    let mut total = Tally::new()?;
    for tally in load::run(Arc::clone(&bench), config.concurrency).await? {
        total.merge(tally)?;
    }
    let measured = bench.measure_from.elapsed();
    let seconds = measured.as_secs_f64();
    let per_second = |count: u64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    Ok(BenchReport {
        endpoints: config.endpoints.len(),
        connections_per_endpoint: config.connections,
        concurrency: config.concurrency,
        capability: config.capability.clone(),
        payload_bytes: config.payload_bytes,
        replication: config.replication,
        deadline_ms: config.deadline_ms,
        warmup_requests: total.warmup_requests,
        requests: total.requests,
        duration_s: seconds,
        requests_per_s: per_second(total.requests),
        decisions_per_s: per_second(total.outcomes.decided),
        latency_ms: LatencyReport::of(&total.latency_us),
        outcomes: total.outcomes,
        errors: total
            .errors
            .into_iter()
            .map(|(code, count)| (code.to_string(), count))
            .collect(),
        error_samples: total
            .error_samples
            .into_iter()
            .map(|(code, message)| (code.to_string(), message))
            .collect(),
        failure_samples: total.failure_samples,
    })
}

/// `polity-testnet bench`: runs the load and prints the report.
pub async fn cli(args: BenchArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if !args.json {
        let phase = match config.stop {
            StopAfter::Duration(duration) => format!("for {:.1} s", duration.as_secs_f64()),
            StopAfter::Count(count) => format!("{count} request(s)"),
        };
        eprintln!(
            "warming up {:.1} s, then measuring {phase} against {} endpoint(s)...",
            config.warmup.as_secs_f64(),
            config.endpoints.len()
        );
    }
    // The nodes' signature counters, when the nodes are a recorded testnet.
    let http = match &args.dir {
        Some(dir) if !args.json => TestnetState::read(dir)?
            .map(|state| state.nodes.into_iter().map(|node| node.http).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let before = crate::limit::scrape(&http).await;
    let report = run(config).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    print!("{}", report.table());
    if let (Ok(before), false) = (before, http.is_empty()) {
        let after = crate::limit::scrape(&http).await?;
        // Warm-up tasks signed too: they count as decisions here.
        let decisions = report.outcomes.decided + report.warmup_requests;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let cost = crate::limit::measure_cost();
        if let Some(limit) = crate::limit::limit(before, after, decisions, cost, cores) {
            print!("{}", limit.table(report.decisions_per_s));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use polity_proto::federation_server::{Federation, FederationServer};
    use polity_proto::*;
    use tonic::transport::server::TcpIncoming;
    use tonic::{Request, Response, Status};

    use super::*;

    /// What the fake node answers to SubmitTask.
    #[derive(Clone)]
    enum Reply {
        /// Records in these states, in turn.
        States(Vec<TaskState>),
        /// This error.
        Error(tonic::Code),
    }

    /// A Federation server that answers SubmitTask at once, as configured.
    struct FakeNode {
        reply: Reply,
        /// The bearer token it requires, if any.
        token: Option<String>,
        served: AtomicUsize,
        nonces: Arc<Mutex<HashSet<u64>>>,
    }

    #[tonic::async_trait]
    impl Federation for FakeNode {
        async fn submit_task(
            &self,
            request: Request<SubmitTaskRequest>,
        ) -> Result<Response<TaskRecord>, Status> {
            if let Some(token) = &self.token {
                let expected = format!("Bearer {token}");
                let given = request.metadata().get("authorization");
                if given.and_then(|value| value.to_str().ok()) != Some(expected.as_str()) {
                    return Err(Status::unauthenticated("bad token"));
                }
            }
            let request = request.into_inner();
            if !request.wait {
                return Err(Status::failed_precondition("bench must wait"));
            }
            self.nonces.lock().unwrap().insert(request.nonce);
            let turn = self.served.fetch_add(1, Ordering::Relaxed);
            match &self.reply {
                Reply::States(states) => {
                    let state = states[turn % states.len()];
                    Ok(Response::new(TaskRecord {
                        task_id: request.nonce.to_be_bytes().to_vec(),
                        state: state as i32,
                        error: if state == TaskState::Failed {
                            "no quorum".to_string()
                        } else {
                            String::new()
                        },
                        ..TaskRecord::default()
                    }))
                }
                Reply::Error(code) => Err(Status::new(*code, "fake refusal")),
            }
        }

        async fn get_task(
            &self,
            _: Request<GetTaskRequest>,
        ) -> Result<Response<TaskRecord>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type WatchTaskStream = tonic::codegen::BoxStream<TaskEvent>;

        async fn watch_task(
            &self,
            _: Request<WatchTaskRequest>,
        ) -> Result<Response<Self::WatchTaskStream>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get_node_info(
            &self,
            _: Request<GetNodeInfoRequest>,
        ) -> Result<Response<GetNodeInfoResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn list_peers(
            &self,
            _: Request<ListPeersRequest>,
        ) -> Result<Response<ListPeersResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get_trust(
            &self,
            _: Request<GetTrustRequest>,
        ) -> Result<Response<GetTrustResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get_topology(
            &self,
            _: Request<GetTopologyRequest>,
        ) -> Result<Response<Topology>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn verify_certificate(
            &self,
            _: Request<VerifyCertificateRequest>,
        ) -> Result<Response<VerifyCertificateResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get_epoch_chain(
            &self,
            _: Request<polity_proto::GetEpochChainRequest>,
        ) -> Result<Response<polity_proto::EpochChain>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    /// Starts a fake node on 127.0.0.1:0; returns its endpoint and the nonces it saw.
    async fn fake_node(reply: Reply, token: Option<&str>) -> (String, Arc<Mutex<HashSet<u64>>>) {
        let nonces = Arc::new(Mutex::new(HashSet::new()));
        let node = FakeNode {
            reply,
            token: token.map(str::to_string),
            served: AtomicUsize::new(0),
            nonces: Arc::clone(&nonces),
        };
        let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let address = incoming.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FederationServer::new(node))
                .serve_with_incoming(incoming),
        );
        (format!("http://{address}"), nonces)
    }

    fn count_config(endpoint: String, count: u64) -> BenchConfig {
        BenchConfig {
            concurrency: 4,
            connections: 2,
            stop: StopAfter::Count(count),
            warmup: Duration::ZERO,
            ..BenchConfig::new(vec![endpoint])
        }
    }

    #[tokio::test]
    async fn counts_decided_tasks_with_distinct_nonces() {
        let (endpoint, nonces) =
            fake_node(Reply::States(vec![TaskState::Decided]), Some("s3cret")).await;
        let config = BenchConfig {
            token: Some("s3cret".to_string()),
            ..count_config(endpoint, 50)
        };
        let report = run(config).await.unwrap();
        assert_eq!(report.requests, 50);
        assert_eq!(report.outcomes.decided, 50);
        assert_eq!(report.outcomes.degraded + report.outcomes.failed, 0);
        assert_eq!(report.error_count(), 0, "{:?}", report.error_samples);
        assert_eq!(report.latency_ms.samples, 50);
        assert_eq!(report.warmup_requests, 0);
        // Every request was a distinct task.
        assert_eq!(nonces.lock().unwrap().len(), 50);
        // The report serializes, and the table shows the counts.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["outcomes"]["decided"], 50);
        assert!(report.table().contains("decided 50"));
    }

    #[tokio::test]
    async fn counts_errors_by_code() {
        let (endpoint, _) = fake_node(Reply::Error(tonic::Code::InvalidArgument), None).await;
        let report = run(count_config(endpoint, 20)).await.unwrap();
        assert_eq!(report.requests, 20);
        assert_eq!(report.errors.get("INVALID_ARGUMENT"), Some(&20));
        assert_eq!(report.error_count(), 20);
        assert_eq!(report.outcomes, Outcomes::default());
        assert_eq!(report.latency_ms.samples, 0);
        assert_eq!(
            report
                .error_samples
                .get("INVALID_ARGUMENT")
                .map(String::as_str),
            Some("fake refusal")
        );
    }

    #[tokio::test]
    async fn a_missing_token_is_counted_as_unauthenticated() {
        let (endpoint, _) =
            fake_node(Reply::States(vec![TaskState::Decided]), Some("s3cret")).await;
        let report = run(count_config(endpoint, 8)).await.unwrap();
        assert_eq!(report.errors.get("UNAUTHENTICATED"), Some(&8));
        assert_eq!(report.outcomes.decided, 0);
    }

    #[tokio::test]
    async fn counts_each_record_state_over_two_endpoints() {
        let states = vec![TaskState::Decided, TaskState::Degraded, TaskState::Failed];
        let (first, first_nonces) = fake_node(Reply::States(states.clone()), None).await;
        let (second, second_nonces) = fake_node(Reply::States(states), None).await;
        let config = BenchConfig {
            endpoints: vec![first, second],
            ..count_config(String::new(), 60)
        };
        let report = run(config).await.unwrap();
        assert_eq!(report.requests, 60);
        let outcomes = &report.outcomes;
        assert_eq!(outcomes.decided + outcomes.degraded + outcomes.failed, 60);
        assert_eq!(report.failure_samples, vec!["no quorum".to_string()]);
        // Round-robin: both endpoints got half of the requests.
        assert_eq!(first_nonces.lock().unwrap().len(), 30);
        assert_eq!(second_nonces.lock().unwrap().len(), 30);
    }

    #[tokio::test]
    async fn warmup_requests_are_not_recorded() {
        let (endpoint, nonces) = fake_node(Reply::States(vec![TaskState::Decided]), None).await;
        let config = BenchConfig {
            warmup: Duration::from_millis(100),
            ..count_config(endpoint, 10)
        };
        let report = run(config).await.unwrap();
        assert_eq!(report.requests, 10);
        assert_eq!(report.outcomes.decided, 10);
        let seen = nonces.lock().unwrap().len() as u64;
        assert_eq!(seen, 10 + report.warmup_requests);
    }

    #[test]
    fn parses_scopes_and_paths() {
        let scope = parse_scope("region:eu-west").unwrap();
        assert_eq!(scope.level, Level::Region as i32);
        assert_eq!(scope.name, "eu-west");
        assert_eq!(parse_scope("continent").unwrap().name, "");
        assert_eq!(parse_scope("global").unwrap().level, Level::Global as i32);
        assert!(parse_scope("global:x").is_err());
        assert!(parse_scope("planet").is_err());
        assert_eq!(parse_path("raft").unwrap(), ConsensusPath::Raft);
        assert!(parse_path("paxos").is_err());
    }

    #[test]
    fn the_request_template_carries_the_options() {
        let config = BenchConfig {
            payload_bytes: 100,
            path: Some(ConsensusPath::Bft),
            scope: Some(parse_scope("global").unwrap()),
            replication: 3,
            ..BenchConfig::new(vec!["http://127.0.0.1:1".to_string()])
        };
        let request = config.template(7);
        assert_eq!(request.payload.len(), 100);
        assert!(request.wait);
        assert_eq!(request.replication, 3);
        assert_eq!(
            request.policy.unwrap().path_override,
            ConsensusPath::Bft as i32
        );
        assert!(config.rpc_timeout() > Duration::from_millis(config.deadline_ms));
    }

    #[test]
    fn reads_the_endpoints_of_a_detached_testnet() {
        let dir = tempfile::tempdir().unwrap();
        let node = |name: &str, pid: u32, grpc: &str| crate::cluster::NodeRecord {
            name: name.to_string(),
            pid,
            data_dir: dir.path().join(name),
            region: "region-0".to_string(),
            continent: "continent-0".to_string(),
            peer_id: String::new(),
            grpc: grpc.to_string(),
            http: String::new(),
            p2p: Vec::new(),
            public_key: String::new(),
            spawned: false,
            remote: false,
        };
        let state = TestnetState {
            nodes: vec![
                node("node-0", std::process::id(), "http://127.0.0.1:7001"),
                // No such process: skipped.
                node("node-1", u32::MAX - 1, "http://127.0.0.1:7002"),
                // A container's node: no local process to look for, always asked.
                crate::cluster::NodeRecord {
                    remote: true,
                    ..node("node-2", 0, "http://127.0.0.1:7003")
                },
            ],
            token_file: None,
        };
        std::fs::write(
            dir.path().join(crate::cluster::STATE_FILE),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        assert_eq!(
            testnet_endpoints(dir.path()).unwrap(),
            vec![
                "http://127.0.0.1:7001".to_string(),
                "http://127.0.0.1:7003".to_string()
            ]
        );
        assert!(testnet_endpoints(&dir.path().join("missing")).is_err());
    }
}
