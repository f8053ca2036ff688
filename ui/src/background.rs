//! Page data computed in the background: the query behind a page runs at most once at a
//! time, its answer is kept and served to every request, and a request that finds it stale
//! starts a refresh and still answers from the old one. A page therefore never waits for
//! its query beyond a moment ([`Background::get_within`]); while the very first answer is
//! computed it shows progress and polls.
//!
//! The workloads summary, the overview's cost allocation, the network page and the nodes
//! page each keep one (see [`Computed`] implementations next to them).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::UiState;
use crate::data::DataError;

/// Data a page computes from the store and keeps.
pub trait Computed: Sized + Send + Sync + 'static {
    /// What it is, for the log when computing fails.
    const WHAT: &'static str;

    /// Reads it now.
    fn compute(state: &UiState) -> impl Future<Output = Result<Self, DataError>> + Send;

    /// Whether it may still be served without starting a refresh.
    fn fresh(&self, state: &UiState) -> bool;
}

/// The kept answer of `T` and whether a refresh is running.
pub struct Background<T> {
    current: Arc<RwLock<Option<Arc<T>>>>,
    refreshing: Arc<AtomicBool>,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl<T> Clone for Background<T> {
    fn clone(&self) -> Self {
        Background {
            current: self.current.clone(),
            refreshing: self.refreshing.clone(),
            last_error: self.last_error.clone(),
        }
    }
}

impl<T> Default for Background<T> {
    fn default() -> Self {
        Background {
            current: Arc::new(RwLock::new(None)),
            refreshing: Arc::new(AtomicBool::new(false)),
            last_error: Arc::new(std::sync::Mutex::new(None)),
        }
    }
}

impl<T: Computed> Background<T> {
    /// The kept answer if there is one, starting a background refresh when it is missing or
    /// no longer fresh. `None` while the first one is computed.
    pub async fn get(&self, state: &UiState) -> Option<Arc<T>> {
        let current = self.current.read().await.clone();
        let stale = current.as_ref().is_none_or(|c| !c.fresh(state));
        if stale && !self.refreshing.swap(true, Ordering::SeqCst) {
            let cache = self.clone();
            let state = state.clone();
            tokio::spawn(async move {
                match T::compute(&state).await {
                    Ok(value) => {
                        *cache.current.write().await = Some(Arc::new(value));
                        *cache.last_error.lock().expect("lock") = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "computing {} failed", T::WHAT);
                        *cache.last_error.lock().expect("lock") = Some(error.to_string());
                    }
                }
                cache.refreshing.store(false, Ordering::SeqCst);
            });
        }
        current
    }

    /// Waits (up to `wait`) for a first answer.
    pub async fn get_within(&self, state: &UiState, wait: Duration) -> Option<Arc<T>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(value) = self.get(state).await {
                return Some(value);
            }
            if Instant::now() >= deadline || self.last_error().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Why the last refresh failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("lock").clone()
    }

    /// Computes it now and keeps it, answering how long that took (benchmarks, tests).
    pub async fn refresh(&self, state: &UiState) -> Result<Duration, DataError> {
        let started = Instant::now();
        let value = T::compute(state).await?;
        self.set(value).await;
        Ok(started.elapsed())
    }

    /// Replaces the kept answer (tests and benchmarks).
    pub async fn set(&self, value: T) {
        *self.current.write().await = Some(Arc::new(value));
    }
}

/// How long a page's data is served before a request refreshes it: a minute, or 5 s while
/// it is empty (right after start, when the first rows are still arriving).
pub fn max_age(empty: bool) -> Duration {
    if empty {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    }
}
