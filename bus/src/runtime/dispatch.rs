//! Runs jobs one after another per key and concurrently across keys, with a bound on how many
//! keys are worked on at once.
//!
//! The runtime keys by correlation id, so a run's events are handled in stream order while
//! other runs proceed. Unlike hashing keys onto a fixed set of lanes, a busy key never holds up
//! an unrelated one that happens to share its lane.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A key's worker slot, obtained with [`SerialByKey::slot`].
#[derive(Debug)]
pub struct Slot {
    // Held, not read: dropping it frees the worker slot.
    _permit: OwnedSemaphorePermit,
}

/// Per-key serial, cross-key concurrent execution of `work` on jobs.
#[derive(Debug)]
pub struct SerialByKey<J, W> {
    queues: Arc<Mutex<HashMap<String, VecDeque<J>>>>,
    slots: Arc<Semaphore>,
    concurrency: usize,
    work: Arc<W>,
}

impl<J, W, Fut> SerialByKey<J, W>
where
    J: Send + 'static,
    W: Fn(J) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    pub fn new(concurrency: usize, work: W) -> Self {
        SerialByKey {
            queues: Arc::default(),
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            work: Arc::new(work),
        }
    }

    /// Queues `job` behind its key's running work, if the key has any. Otherwise hands the job
    /// back: it needs a [`SerialByKey::slot`] and [`SerialByKey::start`].
    pub fn try_enqueue(&self, key: &str, job: J) -> Result<(), J> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.get_mut(key) {
            Some(queue) => {
                queue.push_back(job);
                Ok(())
            }
            None => Err(job),
        }
    }

    /// Waits for a free worker. Cancel-safe: nothing changes until it returns. `None` only if
    /// the slots were closed, which nothing here does.
    pub async fn slot(&self) -> Option<Slot> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .ok()
            .map(|permit| Slot { _permit: permit })
    }

    /// Starts a worker for `key` with `job` first; it drains the key's queue and then frees the
    /// slot.
    pub fn start(&self, key: &str, job: J, slot: Slot) {
        let Err(job) = self.try_enqueue(key, job) else {
            return; // A worker appeared meanwhile and will take the job.
        };
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string(), VecDeque::new());
        let queues = Arc::clone(&self.queues);
        let work = Arc::clone(&self.work);
        let key = key.to_string();
        tokio::spawn(async move {
            let _slot = slot;
            let mut next = Some(job);
            while let Some(job) = next {
                work(job).await;
                let mut queues = queues.lock().unwrap_or_else(PoisonError::into_inner);
                next = queues.get_mut(&key).and_then(VecDeque::pop_front);
                if next.is_none() {
                    queues.remove(&key);
                }
            }
        });
    }

    /// Waits until no worker is running.
    pub async fn wait_idle(&self) {
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        drop(self.slots.acquire_many(all).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    async fn dispatch<W, Fut>(d: &SerialByKey<(String, u32), W>, key: &str, n: u32)
    where
        W: Fn((String, u32)) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Err(job) = d.try_enqueue(key, (key.to_string(), n)) {
            let slot = d.slot().await.expect("open");
            d.start(key, job, slot);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_runs_in_order_while_keys_overlap() {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let d = SerialByKey::new(4, move |(key, n): (String, u32)| {
            let (done_tx, f, p) = (done_tx.clone(), f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                // Later jobs take less time, so any reordering within a key would show.
                tokio::time::sleep(Duration::from_millis(u64::from(10 - n))).await;
                f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                let _ = done_tx.send((key, n));
            }
        });
        for n in 0..10 {
            for key in ["a", "b", "c"] {
                dispatch(&d, key, n).await;
            }
        }
        d.wait_idle().await;
        let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
        while let Ok((key, n)) = done_rx.try_recv() {
            seen.entry(key).or_default().push(n);
        }
        for key in ["a", "b", "c"] {
            assert_eq!(
                seen[key],
                (0..10).collect::<Vec<_>>(),
                "key {key} out of order"
            );
        }
        assert_eq!(
            peak.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the three keys overlap"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let d = SerialByKey::new(2, move |_job: (String, u32)| {
            let (f, p) = (f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        for key in 0..8 {
            dispatch(&d, &key.to_string(), 0).await;
        }
        d.wait_idle().await;
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
