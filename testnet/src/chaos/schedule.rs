//! The seeded schedule of a chaos run: which node is killed when, when it comes
//! back, when the cluster splits and heals. A pure function of its configuration,
//! so a seed replays the same schedule.

use serde::Serialize;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed, seedable generator;
/// enough for schedules, and the same on every platform and version.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for n far below 2^64.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `count` distinct indices of `0..n`, sorted (all of them when `count >= n`).
    pub fn choose(&mut self, n: usize, count: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..n).collect();
        // Partial Fisher-Yates.
        let count = count.min(n);
        for i in 0..count {
            let j = i + self.below(n - i);
            pool.swap(i, j);
        }
        let mut chosen = pool[..count].to_vec();
        chosen.sort_unstable();
        chosen
    }
}

/// One thing the supervisor does at `at_ms` after the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL node `node` (an index of the original nodes).
    Kill { node: usize },
    /// Start node `node` again, same data dir and flags.
    Restart { node: usize },
    /// Every node of `minority` blocks every other node and vice versa.
    Partition { minority: Vec<usize> },
    /// Every node unblocks every node.
    Heal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// What the schedule is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Original nodes (indices `0..nodes`).
    pub nodes: usize,
    /// Length of the load phase; nothing is scheduled at or after it, and every
    /// killed node is restarted by then at the latest.
    pub duration_ms: u64,
    /// A kill every this often (none when `None`).
    pub kill_every_ms: Option<u64>,
    /// A killed node comes back this long after its kill.
    pub restart_after_ms: u64,
    /// Nodes down at once at most (a kill that would exceed it is skipped).
    pub down_max: usize,
    /// When the cluster splits (never when `None`).
    pub partition_at_ms: Option<u64>,
    /// How long the split lasts.
    pub heal_after_ms: u64,
    pub seed: u64,
}

/// Size of the minority side of a split of `nodes`: the largest strict minority.
pub fn minority_size(nodes: usize) -> usize {
    nodes.saturating_sub(1) / 2
}

/// The events of a run, in time order (ties keep the order they were planned in).
pub fn plan(config: &ScheduleConfig) -> Vec<Event> {
    let mut rng = SplitMix64::new(config.seed);
    let mut events = Vec::new();
    if let Some(every) = config.kill_every_ms.filter(|&every| every > 0) {
        // (node, back at) of the nodes down.
        let mut down: Vec<(usize, u64)> = Vec::new();
        let mut at = every;
        while at < config.duration_ms {
            down.retain(|&(_, back)| back > at);
            if down.len() < config.down_max {
                let up: Vec<usize> = (0..config.nodes)
                    .filter(|node| down.iter().all(|&(gone, _)| gone != *node))
                    .collect();
                if !up.is_empty() {
                    let node = up[rng.below(up.len())];
                    let back = (at + config.restart_after_ms).min(config.duration_ms);
                    events.push(Event {
                        at_ms: at,
                        action: Action::Kill { node },
                    });
                    events.push(Event {
                        at_ms: back,
                        action: Action::Restart { node },
                    });
                    down.push((node, back));
                }
            }
            at += every;
        }
    }
    if let Some(split) = config.partition_at_ms
        && split < config.duration_ms
        && minority_size(config.nodes) > 0
    {
        let minority = rng.choose(config.nodes, minority_size(config.nodes));
        events.push(Event {
            at_ms: split,
            action: Action::Partition { minority },
        });
        events.push(Event {
            at_ms: (split + config.heal_after_ms).min(config.duration_ms),
            action: Action::Heal,
        });
    }
    events.sort_by_key(|event| event.at_ms);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ScheduleConfig {
        ScheduleConfig {
            nodes: 5,
            duration_ms: 60_000,
            kill_every_ms: Some(10_000),
            restart_after_ms: 4_000,
            down_max: 1,
            partition_at_ms: Some(20_000),
            heal_after_ms: 15_000,
            seed: 42,
        }
    }

    #[test]
    fn the_generator_is_seeded_and_bounded() {
        let mut a = SplitMix64::new(1);
        let mut b = SplitMix64::new(1);
        let xs: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        // The reference output of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut rng = SplitMix64::new(9);
        for _ in 0..1000 {
            assert!(rng.below(7) < 7);
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(rng.below(0), 0);
        let chosen = rng.choose(10, 4);
        assert_eq!(chosen.len(), 4);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]) && chosen[3] < 10);
        assert_eq!(rng.choose(3, 9), vec![0, 1, 2]);
    }

    #[test]
    fn a_schedule_replays_and_keeps_its_bounds() {
        let events = plan(&config());
        assert_eq!(events, plan(&config()));
        assert_ne!(
            events,
            plan(&ScheduleConfig {
                seed: 43,
                ..config()
            })
        );
        assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let kills = events
            .iter()
            .filter(|e| matches!(e.action, Action::Kill { .. }))
            .count();
        // At 10, 20, 30, 40, 50 s: each restart comes 4 s later, so one down at once.
        assert_eq!(kills, 5);
        let mut down = Vec::new();
        for event in &events {
            assert!(event.at_ms <= 60_000);
            match &event.action {
                Action::Kill { node } => {
                    assert!(!down.contains(node), "{events:?}");
                    down.push(*node);
                    assert!(down.len() <= 1);
                }
                Action::Restart { node } => down.retain(|n| n != node),
                Action::Partition { minority } => {
                    assert_eq!(minority.len(), 2);
                    assert_eq!(event.at_ms, 20_000);
                }
                Action::Heal => assert_eq!(event.at_ms, 35_000),
            }
        }
        assert!(down.is_empty(), "every killed node comes back");
    }

    #[test]
    fn kills_are_skipped_while_too_many_are_down() {
        let events = plan(&ScheduleConfig {
            restart_after_ms: 25_000,
            partition_at_ms: None,
            ..config()
        });
        let kills: Vec<u64> = events
            .iter()
            .filter(|e| matches!(e.action, Action::Kill { .. }))
            .map(|e| e.at_ms)
            .collect();
        // Down from 10 to 35 s, then from 40 s (restart clamped to the end).
        assert_eq!(kills, vec![10_000, 40_000]);
        let restarts: Vec<u64> = events
            .iter()
            .filter(|e| matches!(e.action, Action::Restart { .. }))
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(restarts, vec![35_000, 60_000]);
    }

    #[test]
    fn nothing_scheduled_means_no_events() {
        let quiet = ScheduleConfig {
            kill_every_ms: None,
            partition_at_ms: None,
            ..config()
        };
        assert!(plan(&quiet).is_empty());
        // A split of one node has no minority.
        let single = ScheduleConfig {
            nodes: 1,
            kill_every_ms: None,
            ..config()
        };
        assert!(plan(&single).is_empty());
        assert_eq!(minority_size(5), 2);
        assert_eq!(minority_size(4), 1);
        assert_eq!(minority_size(2), 0);
    }
}
