//! A per-peer circuit breaker, as a pure state machine (time comes in as `now_ms`).
//!
//! Closed: requests flow; [`FAILURES_TO_OPEN`] consecutive failures open it. Open:
//! requests fail fast until the cool-down passes, then one probe is let through
//! (half-open). A successful probe closes the breaker; a failed one opens it again
//! with twice the cool-down, up to [`COOL_DOWN_MS_MAX`].

/// Consecutive failures that open a closed breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// First cool-down after opening.
pub const COOL_DOWN_MS_MIN: u64 = 2_000;
/// Longest cool-down.
pub const COOL_DOWN_MS_MAX: u64 = 60_000;

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
