//! When a node gossips its signed NodeInfo again.
//!
//! A node's NodeInfo changes only when the node restarts, so gossiping it again is
//! for whoever has not heard it yet: a node that just joined, or a peer that just
//! connected. Announcing on a fixed short period instead costs every node one
//! signature check per copy of every peer's announcement, forever, a cost that
//! grows with the federation's size while buying nothing once everyone has heard.
//!
//! So the interval starts at [`INTERVAL_MIN_MS`], doubles after each announcement
//! that reached someone, up to [`INTERVAL_MAX_MS`], and falls back to the minimum
//! whenever a newcomer shows up (a peer whose info we did not have, or a peer that
//! subscribed to the announce topic). A publish that reached nobody (no subscribed
//! peer yet) is retried after the minimum. Pure: times are milliseconds since the
//! node started, supplied by the caller.

/// The first interval, and the one after a newcomer shows up.
pub const INTERVAL_MIN_MS: u64 = 5_000;
/// The longest interval: how stale a quiet network lets a NodeInfo become.
pub const INTERVAL_MAX_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSchedule {
    interval_ms: u64,
    next_ms: u64,
}

impl AnnounceSchedule {
    /// The first announcement is due at once.
    pub fn new(now_ms: u64) -> AnnounceSchedule {
        AnnounceSchedule {
            interval_ms: INTERVAL_MIN_MS,
            next_ms: now_ms,
        }
    }

    /// When the next announcement is due.
    pub fn next_ms(&self) -> u64 {
        self.next_ms
    }

    /// An announcement was published at `now_ms`; `reached` says whether any peer
    /// was subscribed to take it.
    pub fn published(&mut self, now_ms: u64, reached: bool) {
        if reached {
            self.next_ms = now_ms + self.interval_ms;
            self.interval_ms = (self.interval_ms * 2).min(INTERVAL_MAX_MS);
        } else {
            self.interval_ms = INTERVAL_MIN_MS;
            self.next_ms = now_ms + INTERVAL_MIN_MS;
        }
    }

    /// A newcomer showed up at `now_ms`: announce within the minimum interval
    /// (several newcomers in a row share one announcement) and back off from there.
    pub fn newcomer(&mut self, now_ms: u64) {
        self.interval_ms = INTERVAL_MIN_MS;
        self.next_ms = self.next_ms.min(now_ms + INTERVAL_MIN_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes whenever due, reaching peers, until `until_ms`; returns the times.
    fn check(schedule: &mut AnnounceSchedule, until_ms: u64) -> Vec<u64> {
        let mut times = Vec::new();
        while schedule.next_ms() <= until_ms {
            let now = schedule.next_ms();
            times.push(now);
            schedule.published(now, true);
        }
        times
    }

    #[test]
    fn a_quiet_network_backs_off_to_the_maximum() {
        let mut schedule = AnnounceSchedule::new(0);
        assert_eq!(
            check(&mut schedule, 300_000),
            vec![0, 5_000, 15_000, 35_000, 75_000, 135_000, 195_000, 255_000]
        );
    }

    #[test]
    fn a_newcomer_brings_the_next_announcement_forward_once() {
        let mut schedule = AnnounceSchedule::new(0);
        check(&mut schedule, 200_000);
        // Quiet: the next announcement is a full minute away.
        assert_eq!(schedule.next_ms(), 255_000);
        schedule.newcomer(200_000);
        schedule.newcomer(201_000);
        schedule.newcomer(202_000);
        assert_eq!(
            schedule.next_ms(),
            205_000,
            "three newcomers, one announcement"
        );
        assert_eq!(
            check(&mut schedule, 260_000),
            vec![205_000, 210_000, 220_000, 240_000]
        );
    }

    #[test]
    fn a_newcomer_never_postpones_an_announcement() {
        let mut schedule = AnnounceSchedule::new(0);
        schedule.published(0, true);
        assert_eq!(schedule.next_ms(), 5_000);
        schedule.newcomer(4_000);
        assert_eq!(schedule.next_ms(), 5_000);
    }

    #[test]
    fn a_publish_that_reached_nobody_is_retried_soon() {
        let mut schedule = AnnounceSchedule::new(0);
        check(&mut schedule, 100_000);
        schedule.published(100_000, false);
        assert_eq!(schedule.next_ms(), 105_000);
        schedule.published(105_000, true);
        assert_eq!(
            schedule.next_ms(),
            110_000,
            "backs off from the minimum again"
        );
    }
}
