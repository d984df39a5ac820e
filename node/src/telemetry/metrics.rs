//! The node's Prometheus metrics, in one registry.
//!
//! Names follow the seed where they apply (`federation_tasks_total{outcome}`,
//! `federation_byzantine_attacks_detected_total`, `federation_cascade_prevented_total`;
//! counters carry `_total` as both exposition formats require). The seed's
//! `federation_agent_count` is exported as the gauge `federation_agents`: promtool
//! rejects a `_count` suffix on anything but histograms and summaries.
//!
//! `/metrics` speaks both formats: OpenMetrics to scrapers that ask for it in their
//! `Accept` header, the classic Prometheus text format (0.0.4) to everyone else.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// decided, degraded or failed.
    pub outcome: String,
    /// bft, raft or stake.
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    /// region, continent or global.
    pub level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// What was wrong: invalid_argument, unauthenticated, rate_limited, overloaded.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrustBandLabels {
    /// A tenth of the trust range, "0.0-0.1" .. "0.9-1.0" (lower bound included;
    /// a trust of exactly 1 counts in the top band).
    pub band: String,
}

/// Bands of `federation_trust_peers`: ten, so the family has ten series at most.
pub const TRUST_BANDS: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// single (one statement), batch (a certificate's statements, each under the
    /// strict rule), or cached (found good before: no curve work).
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RaftGroupLabels {
    /// The raft group's name (`crate::raft::RaftGroups::name_for`).
    pub group: String,
}

fn decision_latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the node exports.
pub struct Metrics {
    pub registry: Registry,
    /// Nodes this node knows, itself included.
    pub agents: Gauge,
    pub tasks: Family<OutcomeLabels, Counter>,
    pub byzantine_attacks_detected: Counter,
    pub cascade_prevented: Counter,
    pub decision_latency_seconds: Family<LevelLabels, Histogram, fn() -> Histogram>,
    pub tasks_inflight: Gauge,
    pub requests_rejected: Family<RejectLabels, Counter>,
    pub executor_errors: Counter,
    /// Members of the latest group at each level: the agents a decision used.
    pub group_members: Family<LevelLabels, Gauge>,
    /// Members whose observation differed from their group's decision.
    pub disagreements: Counter,
    /// Group rounds this node is running as a member.
    pub member_rounds: Gauge,
    /// Peer messages dropped or refused, by reason.
    pub peer_messages_dropped: Family<RejectLabels, Counter>,
    /// 1 while this node leads the raft group, else 0; one series per running group.
    pub raft_leader: Family<RaftGroupLabels, Gauge>,
    /// The current raft term of each running group on this node.
    pub raft_term: Family<RaftGroupLabels, Gauge>,
    /// Voters of each running group's current membership, as this node knows it (a
    /// place group's voters follow the registry).
    pub raft_voters: Family<RaftGroupLabels, Gauge>,
    /// The network layer's counters (malformed frames, rejected infos, ...).
    pub net: polity_net::NetMetrics,
    /// Known peers by this node's trust in them, in [`TRUST_BANDS`] bands; set
    /// whenever the peers are listed (seats, ListPeers), like `agents`.
    pub trust_peers: Family<TrustBandLabels, Gauge>,
    /// Faults injected on purpose, by kind (see `crate::chaos`).
    pub faults_injected: Family<KindLabels, Counter>,
    /// Worker slots, busy slots, smoothed load (per mille) and slot changes.
    pub worker_slots: Gauge,
    pub workers_busy: Gauge,
    pub worker_load_permille: Gauge,
    pub workers_spawned: Gauge,
    pub workers_retired: Gauge,
    /// Smoothed share of this node's tasks that ended DECIDED, per mille.
    pub reliability_permille: Gauge,
    /// +1 wants more agents, -1 may retire agents, 0 steady (see `crate::member::workers`).
    pub scale_signal: Gauge,
    /// Recovery learning per failure kind (`crate::telemetry::recovery`).
    pub recovery: crate::telemetry::recovery::Recovery,
    /// Statements this process signed, and signatures it checked by mode: brought up
    /// to `polity_consensus::signature_counts` at each exposition.
    pub signatures_signed: Counter,
    pub signatures_verified: Family<ModeLabels, Counter>,
    /// One catch-up at a time: two concurrent scrapes must not both add a delta.
    signature_sync: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric, one subsystem after another. The registration order is
    /// the exposition order of `/metrics`, so the groups run in the order the metrics
    /// were first added.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let TaskMetrics {
            agents,
            tasks,
            byzantine_attacks_detected,
            cascade_prevented,
            decision_latency_seconds,
            tasks_inflight,
        } = TaskMetrics::register(&mut registry);
        let ApiMetrics {
            requests_rejected,
            executor_errors,
        } = ApiMetrics::register(&mut registry);
        let RoundMetrics {
            group_members,
            disagreements,
            member_rounds,
            peer_messages_dropped,
        } = RoundMetrics::register(&mut registry);
        let RaftMetrics {
            raft_leader,
            raft_term,
            raft_voters,
        } = RaftMetrics::register(&mut registry);
        let net = polity_net::NetMetrics::default();
        net.register(&mut registry);
        let trust_peers = register_trust_peers(&mut registry);
        let faults_injected = registered(
            &mut registry,
            "polity_faults_injected",
            "Faults this node injected on purpose (chaos runs), by kind",
            Family::<KindLabels, Counter>::default(),
        );
        let WorkerMetrics {
            worker_slots,
            workers_busy,
            worker_load_permille,
            workers_spawned,
            workers_retired,
            reliability_permille,
            scale_signal,
        } = WorkerMetrics::register(&mut registry);
        let recovery = crate::telemetry::recovery::Recovery::default();
        recovery.register(&mut registry);
        let (signatures_signed, signatures_verified) = register_signature_metrics(&mut registry);
        Metrics {
            signatures_signed,
            signatures_verified,
            signature_sync: std::sync::Mutex::new(()),
            trust_peers,
            faults_injected,
            worker_slots,
            workers_busy,
            worker_load_permille,
            workers_spawned,
            workers_retired,
            reliability_permille,
            scale_signal,
            recovery,
            net,
            registry,
            agents,
            tasks,
            byzantine_attacks_detected,
            cascade_prevented,
            decision_latency_seconds,
            tasks_inflight,
            requests_rejected,
            executor_errors,
            group_members,
            disagreements,
            member_rounds,
            peer_messages_dropped,
            raft_leader,
            raft_term,
            raft_voters,
        }
    }

    /// Publishes how many known peers fall in each trust band.
    pub fn set_trust_distribution(&self, trust: impl Iterator<Item = f64>) {
        let mut peers = [0i64; TRUST_BANDS];
        for score in trust {
            peers[trust_band(score)] += 1;
        }
        set_trust_bands(&self.trust_peers, &peers);
    }

    pub fn peer_message_dropped(&self, reason: &str) {
        self.peer_messages_dropped
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn fault_injected(&self, kind: &str) {
        self.faults_injected
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Publishes a workers snapshot.
    pub fn set_workers(&self, view: &crate::member::workers::WorkersView) {
        self.worker_slots.set(i64::from(view.slots));
        self.workers_busy.set(i64::from(view.busy));
        self.worker_load_permille
            .set((view.load * 1_000.0).round() as i64);
        self.workers_spawned
            .set(i64::try_from(view.spawned).unwrap_or(i64::MAX));
        self.workers_retired
            .set(i64::try_from(view.retired).unwrap_or(i64::MAX));
        self.reliability_permille
            .set((view.reliability * 1_000.0).round() as i64);
        self.scale_signal.set(i64::from(view.scale_signal));
    }

    pub fn reject(&self, reason: &str) {
        self.requests_rejected
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Brings the signature counters up to the process's counts (they only grow).
    fn sync_signature_counts(&self) {
        let _one_at_a_time = self
            .signature_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counts = polity_consensus::signature_counts();
        let catch_up = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.signatures_signed, counts.signed);
        for (mode, total) in [
            ("single", counts.verified_single),
            ("batch", counts.verified_batch),
            ("cached", counts.verified_cached),
        ] {
            let labels = ModeLabels {
                mode: mode.to_string(),
            };
            catch_up(&self.signatures_verified.get_or_create(&labels), total);
        }
    }

    /// The OpenMetrics exposition of every metric.
    pub fn encode_openmetrics(&self) -> String {
        self.sync_signature_counts();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The classic Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

/// The signature counters (`Metrics::signatures_signed`, `signatures_verified`).
fn register_signature_metrics(registry: &mut Registry) -> (Counter, Family<ModeLabels, Counter>) {
    let signed = registered(
        registry,
        "polity_signatures_signed",
        "Statements this process signed",
        Counter::default(),
    );
    let verified = registered(
        registry,
        "polity_signatures_verified",
        "Signatures this process checked under the strict rule, by mode",
        Family::<ModeLabels, Counter>::default(),
    );
    (signed, verified)
}

/// Registers `federation_trust_peers` with every band at 0, so a dashboard sees the
/// whole range before the first count.
fn register_trust_peers(registry: &mut Registry) -> Family<TrustBandLabels, Gauge> {
    let family = registered(
        registry,
        "federation_trust_peers",
        "Known peers by this node's trust in them, in bands of 0.1",
        Family::<TrustBandLabels, Gauge>::default(),
    );
    set_trust_bands(&family, &[0; TRUST_BANDS]);
    family
}

fn set_trust_bands(family: &Family<TrustBandLabels, Gauge>, peers: &[i64; TRUST_BANDS]) {
    for (band, count) in peers.iter().enumerate() {
        family
            .get_or_create(&TrustBandLabels {
                band: format!("{:.1}-{:.1}", band as f64 / 10.0, (band + 1) as f64 / 10.0),
            })
            .set(*count);
    }
}

/// The band of a trust score: [0.0, 0.1) is 0, ..., [0.9, 1.0] is 9; scores
/// outside [0, 1] (never expected) count in the nearest band.
fn trust_band(score: f64) -> usize {
    ((score * TRUST_BANDS as f64).floor().max(0.0) as usize).min(TRUST_BANDS - 1)
}

/// Registers `metric` under `name` with `help` and returns it (a metric is a shared
/// handle: the registry's copy and the returned one count the same thing).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The federation's task outcomes and decisions, as the entry node sees them.
struct TaskMetrics {
    agents: Gauge,
    tasks: Family<OutcomeLabels, Counter>,
    byzantine_attacks_detected: Counter,
    cascade_prevented: Counter,
    decision_latency_seconds: Family<LevelLabels, Histogram, fn() -> Histogram>,
    tasks_inflight: Gauge,
}

impl TaskMetrics {
    fn register(registry: &mut Registry) -> TaskMetrics {
        TaskMetrics {
            agents: registered(
                registry,
                "federation_agents",
                "Nodes this node knows in the federation, itself included",
                Gauge::default(),
            ),
            tasks: registered(
                registry,
                "federation_tasks",
                "Tasks finished on this entry node, by outcome and consensus path",
                Family::default(),
            ),
            byzantine_attacks_detected: registered(
                registry,
                "federation_byzantine_attacks_detected",
                "Verified evidence of misbehaviour (equivocation, forged signatures)",
                Counter::default(),
            ),
            cascade_prevented: registered(
                registry,
                "federation_cascade_prevented",
                "Groups that failed to decide without holding back their siblings",
                Counter::default(),
            ),
            decision_latency_seconds: registered(
                registry,
                "federation_decision_latency_seconds",
                "Time from dispatch to a group's decision, by level",
                Family::new_with_constructor(decision_latency_histogram as fn() -> Histogram),
            ),
            tasks_inflight: registered(
                registry,
                "polity_tasks_inflight",
                "Tasks being decided on this node",
                Gauge::default(),
            ),
        }
    }
}

/// What the gRPC API refused and what the executors failed to answer.
struct ApiMetrics {
    requests_rejected: Family<RejectLabels, Counter>,
    executor_errors: Counter,
}

impl ApiMetrics {
    fn register(registry: &mut Registry) -> ApiMetrics {
        ApiMetrics {
            requests_rejected: registered(
                registry,
                "polity_grpc_requests_rejected",
                "gRPC requests refused before any work, by reason",
                Family::default(),
            ),
            executor_errors: registered(
                registry,
                "polity_executor_errors",
                "Executor runs that produced an error instead of an answer",
                Counter::default(),
            ),
        }
    }
}

/// Group rounds: who took part, who disagreed, which peer messages were dropped.
struct RoundMetrics {
    group_members: Family<LevelLabels, Gauge>,
    disagreements: Counter,
    member_rounds: Gauge,
    peer_messages_dropped: Family<RejectLabels, Counter>,
}

impl RoundMetrics {
    fn register(registry: &mut Registry) -> RoundMetrics {
        RoundMetrics {
            group_members: registered(
                registry,
                "federation_group_members",
                "Members of the latest group this entry node ran at each level",
                Family::default(),
            ),
            disagreements: registered(
                registry,
                "federation_disagreements",
                "Members whose observation differed from their group's decision",
                Counter::default(),
            ),
            member_rounds: registered(
                registry,
                "federation_member_rounds",
                "Group rounds this node is running as a member",
                Gauge::default(),
            ),
            peer_messages_dropped: registered(
                registry,
                "federation_peer_messages_dropped",
                "Peer messages dropped or refused (malformed, unknown slot, backlog), by reason",
                Family::default(),
            ),
        }
    }
}

/// Leadership and term of each raft group running on this node.
struct RaftMetrics {
    raft_leader: Family<RaftGroupLabels, Gauge>,
    raft_term: Family<RaftGroupLabels, Gauge>,
    raft_voters: Family<RaftGroupLabels, Gauge>,
}

impl RaftMetrics {
    fn register(registry: &mut Registry) -> RaftMetrics {
        RaftMetrics {
            raft_leader: registered(
                registry,
                "federation_raft_leader",
                "1 when this node leads the raft group, else 0",
                Family::default(),
            ),
            raft_term: registered(
                registry,
                "federation_raft_term",
                "The current raft term of the group on this node",
                Family::default(),
            ),
            raft_voters: registered(
                registry,
                "federation_raft_voters",
                "Voters in the raft group's current membership, as this node knows it",
                Family::default(),
            ),
        }
    }
}

/// Worker slots and the load and reliability they adapt to (`crate::member::workers`).
struct WorkerMetrics {
    worker_slots: Gauge,
    workers_busy: Gauge,
    worker_load_permille: Gauge,
    workers_spawned: Gauge,
    workers_retired: Gauge,
    reliability_permille: Gauge,
    scale_signal: Gauge,
}

impl WorkerMetrics {
    fn register(registry: &mut Registry) -> WorkerMetrics {
        let mut gauge = |name: &str, help: &str| registered(registry, name, help, Gauge::default());
        WorkerMetrics {
            worker_slots: gauge(
                "polity_worker_slots",
                "Executions this node runs at once at most (grows with load)",
            ),
            workers_busy: gauge("polity_workers_busy", "Executions running"),
            worker_load_permille: gauge(
                "polity_worker_load_permille",
                "Smoothed (busy + waiting) / slots, in thousandths",
            ),
            workers_spawned: gauge(
                "polity_workers_spawned",
                "Worker slots added under load since start",
            ),
            workers_retired: gauge("polity_workers_retired", "Worker slots retired since start"),
            reliability_permille: gauge(
                "polity_reliability_permille",
                "Smoothed share of this node's tasks that ended DECIDED, in thousandths",
            ),
            scale_signal: gauge(
                "polity_scale_signal",
                "+1 the node wants more agents, -1 agents may be retired, 0 steady",
            ),
        }
    }
}

/// Rewrites an OpenMetrics exposition into the Prometheus 0.0.4 text format. The
/// two differ only in metadata: OpenMetrics names a counter family without its
/// `_total` suffix, has `# UNIT` lines and ends with `# EOF`; samples are identical
/// for the types this node exports (counters, gauges, histograms).
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match metadata {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics.byzantine_attacks_detected.inc();
        metrics.agents.set(3);
        let text = metrics.encode_prometheus();
        assert!(
            text.contains("# TYPE federation_byzantine_attacks_detected_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP federation_byzantine_attacks_detected_total Verified"),
            "{text}"
        );
        assert!(
            text.contains("\nfederation_byzantine_attacks_detected_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE federation_agents gauge\nfederation_agents 3\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(metrics.encode_openmetrics().ends_with("# EOF\n"));
    }

    #[test]
    fn trust_is_published_in_ten_bands() {
        assert_eq!(trust_band(0.0), 0);
        assert_eq!(trust_band(0.69), 6);
        assert_eq!(trust_band(0.7), 7);
        assert_eq!(trust_band(1.0), 9);
        assert_eq!(trust_band(-0.5), 0);
        assert_eq!(trust_band(7.0), 9);
        let metrics = Metrics::new();
        let text = metrics.encode_prometheus();
        assert!(
            text.contains("federation_trust_peers{band=\"0.0-0.1\"} 0\n"),
            "{text}"
        );
        metrics.set_trust_distribution([0.8, 0.85, 0.0, 1.0].into_iter());
        let text = metrics.encode_prometheus();
        for line in [
            "federation_trust_peers{band=\"0.8-0.9\"} 2\n",
            "federation_trust_peers{band=\"0.0-0.1\"} 1\n",
            "federation_trust_peers{band=\"0.9-1.0\"} 1\n",
            "federation_trust_peers{band=\"0.5-0.6\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert_eq!(text.matches("federation_trust_peers{").count(), TRUST_BANDS);
    }
}
