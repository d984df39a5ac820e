//! Worker slots: how many executions a node runs at once, grown and shrunk with load.
//!
//! Every execution takes a slot; executions beyond the slots wait. Twice a second
//! [`Workers::tick`] samples the load, `(busy + waiting) / slots`, into an EWMA and
//! adapts: above `load_high` (and below `slots_max`) one slot is added ("spawned"),
//! below `load_low` (and above `slots_min`) one idle slot is retired. The node's
//! reliability as an entry node (share of its tasks that ended DECIDED, an EWMA) is
//! kept here too; together with the load it makes the *scale signal* the testnet's
//! supervisor acts on by starting or retiring whole node processes:
//! +1 when load > `load_high` or reliability < `reliability_min`, -1 when load <
//! `load_low` and reliability is fine, else 0.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Weight of the newest sample in the load and reliability averages.
const EWMA_ALPHA: f64 = 0.3;

/// The `[workers]` section of the node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Slots at start, and the fewest the node retires down to.
    pub slots_min: u32,
    /// The most slots the node grows to.
    pub slots_max: u32,
    /// Grow above this load.
    pub load_high: f64,
    /// Shrink below this load.
    pub load_low: f64,
    /// Ask for more agents when the node's measured reliability falls below this.
    pub reliability_min: f64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            slots_min: 16,
            slots_max: 256,
            load_high: 0.8,
            load_low: 0.3,
            reliability_min: 0.95,
        }
    }
}

/// Why a `[workers]` configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workers: {0}")]
pub struct InvalidWorkers(&'static str);

impl WorkersConfig {
    pub fn validate(&self) -> Result<(), InvalidWorkers> {
        if self.slots_min == 0 || self.slots_min > self.slots_max {
            return Err(InvalidWorkers("need 1 <= slots_min <= slots_max"));
        }
        if self.slots_max > 65_536 {
            return Err(InvalidWorkers("slots_max is at most 65536"));
        }
        let unit = 0.0..=1.0;
        if !(self.load_low >= 0.0 && self.load_low < self.load_high && self.load_high.is_finite()) {
            return Err(InvalidWorkers("need 0 <= load_low < load_high"));
        }
        if !unit.contains(&self.reliability_min) {
            return Err(InvalidWorkers("reliability_min must be in [0, 1]"));
        }
        Ok(())
    }
}

/// A snapshot for GetStatus and the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkersView {
    pub slots: u32,
    pub busy: u32,
    pub load: f64,
    pub spawned: u64,
    pub retired: u64,
    pub reliability: f64,
    pub scale_signal: i32,
}

struct Averages {
    load: f64,
    reliability: f64,
}

pub struct Workers {
    config: WorkersConfig,
    semaphore: Arc<Semaphore>,
    slots: AtomicU64,
    busy: AtomicU64,
    waiting: AtomicU64,
    spawned: AtomicU64,
    retired: AtomicU64,
    averages: Mutex<Averages>,
}

impl Workers {
    pub fn new(config: WorkersConfig) -> Workers {
        Workers {
            semaphore: Arc::new(Semaphore::new(config.slots_min as usize)),
            slots: AtomicU64::new(u64::from(config.slots_min)),
            busy: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            averages: Mutex::new(Averages {
                load: 0.0,
                reliability: 1.0,
            }),
            config,
        }
    }

    /// Runs `work` in a slot, waiting for one when all are busy.
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = Arc::clone(&self.semaphore).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        let output = work.await;
        self.busy.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        output
    }

    /// Samples the load and grows or shrinks by one slot.
    pub fn tick(&self) {
        let slots = self.slots.load(Ordering::Relaxed).max(1);
        let demand = self.busy.load(Ordering::Relaxed) + self.waiting.load(Ordering::Relaxed);
        let load = {
            let mut averages = self.averages.lock().expect("workers lock");
            averages.load += EWMA_ALPHA * (demand as f64 / slots as f64 - averages.load);
            averages.load
        };
        if load > self.config.load_high && slots < u64::from(self.config.slots_max) {
            self.semaphore.add_permits(1);
            self.slots.fetch_add(1, Ordering::Relaxed);
            self.spawned.fetch_add(1, Ordering::Relaxed);
        } else if load < self.config.load_low
            && slots > u64::from(self.config.slots_min)
            && let Ok(permit) = self.semaphore.try_acquire()
        {
            // An idle slot goes for good.
            permit.forget();
            self.slots.fetch_sub(1, Ordering::Relaxed);
            self.retired.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A task this node entered has finished: decided or not.
    pub fn task_finished(&self, decided: bool) {
        let mut averages = self.averages.lock().expect("workers lock");
        let sample = if decided { 1.0 } else { 0.0 };
        averages.reliability += EWMA_ALPHA * (sample - averages.reliability);
    }

    pub fn view(&self) -> WorkersView {
        let (load, reliability) = {
            let averages = self.averages.lock().expect("workers lock");
            (averages.load, averages.reliability)
        };
        let scale_signal =
            if load > self.config.load_high || reliability < self.config.reliability_min {
                1
            } else if load < self.config.load_low {
                -1
            } else {
                0
            };
        WorkersView {
            slots: u32::try_from(self.slots.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            busy: u32::try_from(self.busy.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            load,
            spawned: self.spawned.load(Ordering::Relaxed),
            retired: self.retired.load(Ordering::Relaxed),
            reliability,
            scale_signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkersConfig {
        WorkersConfig {
            slots_min: 2,
            slots_max: 4,
            ..WorkersConfig::default()
        }
    }

    #[tokio::test]
    async fn slots_grow_under_load_and_shrink_after() {
        let workers = Arc::new(Workers::new(config()));
        let (release, hold) = tokio::sync::watch::channel(false);
        let mut running = Vec::new();
        for _ in 0..6 {
            let workers = Arc::clone(&workers);
            let mut hold = hold.clone();
            running.push(tokio::spawn(async move {
                workers
                    .run(async move {
                        let _ = hold.wait_for(|go| *go).await;
                    })
                    .await
            }));
        }
        while workers.view().busy < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            workers.tick();
            tokio::task::yield_now().await;
        }
        let view = workers.view();
        assert_eq!(view.slots, 4, "grew to slots_max: {view:?}");
        assert_eq!(view.spawned, 2);
        assert_eq!(view.scale_signal, 1);
        release.send(true).unwrap();
        for task in running {
            task.await.unwrap();
        }
        for _ in 0..40 {
            workers.tick();
        }
        let view = workers.view();
        assert_eq!(view.slots, 2, "retired down to slots_min: {view:?}");
        assert_eq!(view.retired, 2);
        assert_eq!(view.scale_signal, -1);
    }

    #[test]
    fn low_reliability_asks_for_agents() {
        let workers = Workers::new(config());
        for _ in 0..10 {
            workers.task_finished(false);
        }
        let view = workers.view();
        assert!(view.reliability < 0.95);
        assert_eq!(view.scale_signal, 1);
        for _ in 0..40 {
            workers.task_finished(true);
        }
        assert!(workers.view().reliability > 0.95);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(WorkersConfig::default().validate().is_ok());
        for bad in [
            WorkersConfig {
                slots_min: 0,
                ..WorkersConfig::default()
            },
            WorkersConfig {
                load_low: 0.9,
                ..WorkersConfig::default()
            },
            WorkersConfig {
                reliability_min: f64::NAN,
                ..WorkersConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
