//! A per-peer circuit breaker, as a pure state machine (time comes in as `now_ms`).
//!
//! Closed: requests flow; [`FAILURES_TO_OPEN`] consecutive failures open it. Open:
//! requests fail fast until the cool-down passes, then one probe is let through
//! (half-open). A successful probe closes the breaker; a failed one opens it again
//! with twice the cool-down, up to [`COOL_DOWN_MS_MAX`].
//!
//! A peer that cannot be reached at all (a dial refused or failed) opens the
//! breaker at once ([`Breaker::record_unreachable`]): a refused connection is not
//! a flaky request, and counting to five would seat a dead or partitioned peer in
//! five more groups. New evidence that the peer is back (a connection, a cleared
//! block) makes the probe due at once ([`Breaker::reachable_again`]). The probe is
//! the event loop's own (it dials, then asks for the peer's NodeInfo), not a task's
//! request: a peer whose breaker is open gets no seat, so no task would probe it.

/// Consecutive failures that open a closed breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// First cool-down after opening.
pub const COOL_DOWN_MS_MIN: u64 = 2_000;
/// How soon an open breaker is probed once a request for its peer was refused:
/// someone wants the peer (a round's member messaging another that was down), so
/// find out now rather than after a cool-down that grew while it was gone. Bounds
/// the probes of a peer that stays unreachable under demand to two a second.
pub const PROBE_ON_DEMAND_MS: u64 = 500;
/// Longest cool-down: a peer that stays unreachable is probed (one dial, or one
/// NodeInfo request) this often, so a partition that heals without anyone noticing
/// is found within this long.
pub const COOL_DOWN_MS_MAX: u64 = 8_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until_ms: u64,
        cool_down_ms: u64,
    },
    /// One probe is in flight; others fail fast until it reports.
    HalfOpen {
        cool_down_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed { .. })
    }

    /// May a request go out now? In the open state after the cool-down, the answer
    /// is yes once (the probe) and the breaker turns half-open.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open {
                until_ms,
                cool_down_ms,
            } if now_ms >= until_ms => {
                self.state = BreakerState::HalfOpen { cool_down_ms };
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => false,
        }
    }

    /// Is the cool-down over, with no probe out yet?
    pub fn probe_due(&self, now_ms: u64) -> bool {
        matches!(self.state, BreakerState::Open { until_ms, .. } if now_ms >= until_ms)
    }

    /// Takes the probe when it is due (the breaker turns half-open), as [`allow`]
    /// does for a request; `false` when it is not due.
    ///
    /// [`allow`]: Breaker::allow
    pub fn start_probe(&mut self, now_ms: u64) -> bool {
        self.probe_due(now_ms) && self.allow(now_ms)
    }

    /// The peer is back (a new connection, a cleared block): an open breaker's probe
    /// is due now, and a failure after it starts again from the shortest cool-down.
    /// A probe already out is left to report.
    pub fn reachable_again(&mut self, now_ms: u64) {
        if let BreakerState::Open { .. } = self.state {
            self.state = BreakerState::Open {
                until_ms: now_ms,
                cool_down_ms: COOL_DOWN_MS_MIN,
            };
        }
    }

    /// A request for the peer was refused by the open breaker: the probe is due
    /// within [`PROBE_ON_DEMAND_MS`] (never later than it was).
    pub fn wanted(&mut self, now_ms: u64) {
        if let BreakerState::Open {
            until_ms,
            cool_down_ms,
        } = self.state
        {
            self.state = BreakerState::Open {
                until_ms: until_ms.min(now_ms + PROBE_ON_DEMAND_MS),
                cool_down_ms,
            };
        }
    }

    /// The peer could not be reached at all: open at once (a closed breaker does
    /// not count to [`FAILURES_TO_OPEN`]); an open or probing one fails as usual.
    pub fn record_unreachable(&mut self, now_ms: u64) {
        if let BreakerState::Closed { .. } = self.state {
            self.state = BreakerState::Closed {
                failures: FAILURES_TO_OPEN - 1,
            };
        }
        self.record_failure(now_ms);
    }

    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    pub fn record_failure(&mut self, now_ms: u64) {
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 >= FAILURES_TO_OPEN => {
                BreakerState::Open {
                    until_ms: now_ms + COOL_DOWN_MS_MIN,
                    cool_down_ms: COOL_DOWN_MS_MIN,
                }
            }
            BreakerState::Closed { failures } => BreakerState::Closed {
                failures: failures + 1,
            },
            BreakerState::HalfOpen { cool_down_ms } | BreakerState::Open { cool_down_ms, .. } => {
                let cool_down_ms = (cool_down_ms * 2).min(COOL_DOWN_MS_MAX);
                BreakerState::Open {
                    until_ms: now_ms + cool_down_ms,
                    cool_down_ms,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_probes_half_open() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.record_failure(0);
            assert!(breaker.allow(0), "still closed below the threshold");
        }
        breaker.record_failure(0);
        assert!(!breaker.allow(1), "open: fail fast");
        assert!(!breaker.allow(COOL_DOWN_MS_MIN - 1));
        assert!(breaker.allow(COOL_DOWN_MS_MIN), "the probe goes out");
        assert!(!breaker.allow(COOL_DOWN_MS_MIN), "only one probe at a time");
        breaker.record_failure(COOL_DOWN_MS_MIN);
        assert_eq!(
            breaker.state(),
            BreakerState::Open {
                until_ms: 3 * COOL_DOWN_MS_MIN,
                cool_down_ms: 2 * COOL_DOWN_MS_MIN
            },
            "a failed probe doubles the cool-down"
        );
        assert!(breaker.allow(3 * COOL_DOWN_MS_MIN));
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.record_failure(0);
        }
        breaker.record_success();
        breaker.record_failure(0);
        assert!(breaker.allow(0));
    }

    #[test]
    fn an_unreachable_peer_opens_it_at_once_and_a_reconnection_makes_the_probe_due() {
        let mut breaker = Breaker::default();
        breaker.record_unreachable(100);
        assert!(breaker.is_open(), "no counting to five for a refused dial");
        assert!(!breaker.probe_due(101));
        // Probes keep failing while the partition lasts: the cool-down grows.
        let mut now_ms = 100 + COOL_DOWN_MS_MIN;
        for _ in 0..10 {
            assert!(breaker.start_probe(now_ms));
            assert!(!breaker.start_probe(now_ms), "one probe at a time");
            breaker.record_unreachable(now_ms);
            now_ms += COOL_DOWN_MS_MAX;
        }
        assert!(matches!(
            breaker.state(),
            BreakerState::Open {
                cool_down_ms: COOL_DOWN_MS_MAX,
                ..
            }
        ));
        // The heal: the next probe is due at once, not after the long cool-down.
        let healed_ms = now_ms - COOL_DOWN_MS_MAX + 1;
        assert!(!breaker.probe_due(healed_ms));
        breaker.reachable_again(healed_ms);
        assert!(breaker.start_probe(healed_ms));
        breaker.reachable_again(healed_ms); // a probe in flight is left alone
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen {
                cool_down_ms: COOL_DOWN_MS_MIN
            }
        );
        breaker.record_success();
        assert!(!breaker.is_open());
        // A closed breaker is not touched by a reconnection.
        breaker.reachable_again(healed_ms);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_refused_request_brings_the_probe_forward_but_keeps_the_cool_down() {
        let mut breaker = Breaker::default();
        breaker.record_unreachable(0);
        breaker.allow(COOL_DOWN_MS_MIN);
        breaker.record_failure(COOL_DOWN_MS_MIN); // cool-down 4 s, due at 6 s
        breaker.wanted(COOL_DOWN_MS_MIN + 100);
        assert_eq!(
            breaker.state(),
            BreakerState::Open {
                until_ms: COOL_DOWN_MS_MIN + 100 + PROBE_ON_DEMAND_MS,
                cool_down_ms: 2 * COOL_DOWN_MS_MIN
            }
        );
        breaker.wanted(COOL_DOWN_MS_MIN + 300); // never later than it was
        assert!(breaker.probe_due(COOL_DOWN_MS_MIN + 100 + PROBE_ON_DEMAND_MS));
    }

    #[test]
    fn the_cool_down_is_bounded() {
        let mut breaker = Breaker::default();
        let mut now_ms = 0;
        for _ in 0..100 {
            breaker.record_failure(now_ms);
            now_ms += COOL_DOWN_MS_MAX;
            breaker.allow(now_ms);
        }
        match breaker.state() {
            BreakerState::HalfOpen { cool_down_ms } | BreakerState::Open { cool_down_ms, .. } => {
                assert_eq!(cool_down_ms, COOL_DOWN_MS_MAX)
            }
            state => panic!("unexpected {state:?}"),
        }
    }
}
