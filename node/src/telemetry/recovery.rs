//! Recovery learning: for each kind of failure this node sees, how long recovery
//! takes and how often it happens at all, as exponentially weighted moving averages.
//!
//! A failure is opened with [`Recovery::failed`] under a key (a peer, a raft group, a
//! group name) and closed by [`Recovery::recovered`] under the same key; the time in
//! between feeds the recovery-time EWMA and a 1 feeds the success EWMA. A failure
//! still open after the horizon feeds a 0 and is forgotten. Repeated failures of an
//! open key do not restart its clock.
//!
//! Kinds the node reports (see ARCHITECTURE.md): `peer_unreachable` (a request to a
//! peer failed, until one succeeds), `breaker_open` (a peer's circuit breaker
//! refused a request, until a request to it succeeds), `raft_leader` (a running raft
//! group lost its leader, until it has one again), `group_degraded` (a group this
//! node orchestrated could not decide, until a group of that name decides).
//!
//! Bounded: at most [`OPEN_MAX`] open failures (the oldest is given up when full).
//! Time is passed in, so the arithmetic is tested without clocks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Weight of the newest sample in each average.
pub const EWMA_ALPHA: f64 = 0.2;
/// A failure not recovered within this long counts as not recovered.
pub const HORIZON: Duration = Duration::from_secs(120);
/// Open failures tracked at most.
pub const OPEN_MAX: usize = 4_096;

/// The failure kinds the node itself reports.
pub const PEER_UNREACHABLE: &str = "peer_unreachable";
pub const BREAKER_OPEN: &str = "breaker_open";
pub const RAFT_LEADER: &str = "raft_leader";
pub const GROUP_DEGRADED: &str = "group_degraded";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub failure: String,
}

/// What is known about one kind of failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindStats {
    pub failures: u64,
    pub recoveries: u64,
    pub given_up: u64,
    /// `None` until the first recovery.
    pub recovery_ms_ewma: Option<f64>,
    /// `None` until the first recovery or give-up.
    pub success_ewma: Option<f64>,
    pub open: u64,
}

fn ewma(previous: Option<f64>, sample: f64) -> f64 {
    match previous {
        Some(previous) => previous + EWMA_ALPHA * (sample - previous),
        None => sample,
    }
}

#[derive(Default)]
struct State {
    kinds: BTreeMap<&'static str, KindStats>,
    open: HashMap<(&'static str, String), Instant>,
    /// Open failures in the order they were opened, for the bound and the horizon.
    order: VecDeque<((&'static str, String), Instant)>,
}

impl State {
    fn give_up(&mut self, kind: &'static str) {
        let stats = self.kinds.entry(kind).or_default();
        stats.given_up += 1;
        stats.open = stats.open.saturating_sub(1);
        stats.success_ewma = Some(ewma(stats.success_ewma, 0.0));
    }

    /// Gives up the failures opened before `now - HORIZON`, and the oldest ones
    /// beyond the bound.
    fn expire(&mut self, now: Instant) {
        while let Some(((kind, key), opened)) = self.order.front().cloned() {
            let too_old = now.saturating_duration_since(opened) > HORIZON;
            if !too_old && self.order.len() <= OPEN_MAX {
                break;
            }
            self.order.pop_front();
            // Stale order entries (already recovered, or reopened later) are skipped.
            if self.open.get(&(kind, key.clone())) == Some(&opened) {
                self.open.remove(&(kind, key));
                self.give_up(kind);
            }
        }
    }
}

/// The node's recovery record, exported as `polity_recovery_*{failure}`.
#[derive(Default)]
pub struct Recovery {
    state: Mutex<State>,
    /// Open failures of any kind: lets [`Recovery::recovered`] return at once on the
    /// hot path (every delivered message) when nothing is open.
    open_total: AtomicUsize,
    failures: Family<FailureLabels, Counter>,
    recoveries: Family<FailureLabels, Counter>,
    recovery_ms: Family<FailureLabels, Gauge<f64, AtomicU64>>,
    success: Family<FailureLabels, Gauge<f64, AtomicU64>>,
}

impl Recovery {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "polity_recovery_failures",
            "Failures seen, by kind",
            self.failures.clone(),
        );
        registry.register(
            "polity_recovery_recoveries",
            "Failures that recovered, by kind",
            self.recoveries.clone(),
        );
        registry.register(
            "polity_recovery_time_ms_ewma",
            "EWMA of the time from failure to recovery, in ms, by kind",
            self.recovery_ms.clone(),
        );
        registry.register(
            "polity_recovery_success_ewma",
            "EWMA of recovery within the horizon (1) or not (0), by kind",
            self.success.clone(),
        );
    }

    pub fn failed(&self, kind: &'static str, key: &str) {
        self.failed_at(kind, key, Instant::now());
    }

    /// Whether any failure is open: when not, there is nothing to recover.
    pub fn any_open(&self) -> bool {
        self.open_total.load(Ordering::Relaxed) > 0
    }

    pub fn recovered(&self, kind: &'static str, key: &str) {
        if self.any_open() {
            self.recovered_at(kind, key, Instant::now());
        }
    }

    pub fn failed_at(&self, kind: &'static str, key: &str, now: Instant) {
        let mut state = self.state.lock().expect("recovery lock");
        state.expire(now);
        let id = (kind, key.to_string());
        if state.open.contains_key(&id) {
            return;
        }
        state.open.insert(id.clone(), now);
        state.order.push_back((id, now));
        let stats = state.kinds.entry(kind).or_default();
        stats.failures += 1;
        stats.open += 1;
        self.failures.get_or_create(&labels(kind)).inc();
        state.expire(now);
        self.open_total.store(state.open.len(), Ordering::Relaxed);
        self.export(&state, kind);
    }

    /// Closes the failure of `key`, if one is open (cheap when none is).
    pub fn recovered_at(&self, kind: &'static str, key: &str, now: Instant) {
        let mut state = self.state.lock().expect("recovery lock");
        state.expire(now);
        let removed = state.open.remove(&(kind, key.to_string()));
        self.open_total.store(state.open.len(), Ordering::Relaxed);
        let Some(opened) = removed else {
            return;
        };
        let elapsed_ms = now.saturating_duration_since(opened).as_secs_f64() * 1_000.0;
        let stats = state.kinds.entry(kind).or_default();
        stats.recoveries += 1;
        stats.open = stats.open.saturating_sub(1);
        stats.recovery_ms_ewma = Some(ewma(stats.recovery_ms_ewma, elapsed_ms));
        stats.success_ewma = Some(ewma(stats.success_ewma, 1.0));
        self.recoveries.get_or_create(&labels(kind)).inc();
        self.export(&state, kind);
    }

    /// Gives up failures past the horizon; call now and then.
    pub fn sweep(&self) {
        let mut state = self.state.lock().expect("recovery lock");
        state.expire(Instant::now());
        self.open_total.store(state.open.len(), Ordering::Relaxed);
        let kinds: Vec<&'static str> = state.kinds.keys().copied().collect();
        for kind in kinds {
            self.export(&state, kind);
        }
    }

    pub fn stats(&self) -> BTreeMap<&'static str, KindStats> {
        self.state.lock().expect("recovery lock").kinds.clone()
    }

    fn export(&self, state: &State, kind: &'static str) {
        let Some(stats) = state.kinds.get(kind) else {
            return;
        };
        if let Some(ms) = stats.recovery_ms_ewma {
            self.recovery_ms.get_or_create(&labels(kind)).set(ms);
        }
        if let Some(success) = stats.success_ewma {
            self.success.get_or_create(&labels(kind)).set(success);
        }
    }
}

fn labels(kind: &str) -> FailureLabels {
    FailureLabels {
        failure: kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_time_and_success_are_averaged() {
        let recovery = Recovery::default();
        let start = Instant::now();
        recovery.failed_at(PEER_UNREACHABLE, "a", start);
        // A repeated failure does not restart the clock.
        recovery.failed_at(PEER_UNREACHABLE, "a", start + Duration::from_millis(50));
        recovery.recovered_at(PEER_UNREACHABLE, "a", start + Duration::from_millis(100));
        let stats = recovery.stats()[PEER_UNREACHABLE].clone();
        assert_eq!(stats.failures, 1);
        assert_eq!(stats.recoveries, 1);
        assert_eq!(stats.open, 0);
        assert!((stats.recovery_ms_ewma.unwrap() - 100.0).abs() < 1e-6);
        assert_eq!(stats.success_ewma, Some(1.0));

        recovery.failed_at(PEER_UNREACHABLE, "b", start + Duration::from_secs(1));
        recovery.recovered_at(
            PEER_UNREACHABLE,
            "b",
            start + Duration::from_secs(1) + Duration::from_millis(600),
        );
        let stats = recovery.stats()[PEER_UNREACHABLE].clone();
        // 100 + 0.2 * (600 - 100)
        assert!((stats.recovery_ms_ewma.unwrap() - 200.0).abs() < 1e-6);
    }

    #[test]
    fn a_failure_past_the_horizon_counts_as_not_recovered() {
        let recovery = Recovery::default();
        let start = Instant::now();
        recovery.failed_at(RAFT_LEADER, "g", start);
        recovery.failed_at(RAFT_LEADER, "h", start + HORIZON + Duration::from_secs(1));
        let stats = recovery.stats()[RAFT_LEADER].clone();
        assert_eq!(stats.given_up, 1);
        assert_eq!(stats.open, 1);
        assert_eq!(stats.success_ewma, Some(0.0));
        // Recovering the given-up key later changes nothing.
        recovery.recovered_at(RAFT_LEADER, "g", start + HORIZON * 2);
        assert_eq!(recovery.stats()[RAFT_LEADER].recoveries, 0);
    }

    #[test]
    fn open_failures_are_bounded() {
        let recovery = Recovery::default();
        let start = Instant::now();
        for index in 0..OPEN_MAX + 10 {
            recovery.failed_at(GROUP_DEGRADED, &index.to_string(), start);
        }
        let stats = recovery.stats()[GROUP_DEGRADED].clone();
        assert_eq!(stats.open as usize, OPEN_MAX);
        assert_eq!(stats.given_up, 10);
    }

    #[test]
    fn recovering_an_unknown_key_is_a_no_op() {
        let recovery = Recovery::default();
        recovery.recovered(BREAKER_OPEN, "nobody");
        assert!(recovery.stats().is_empty());
    }
}
