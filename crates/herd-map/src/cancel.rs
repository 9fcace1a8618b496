//! [`Cancel`]: a shared "stop now" flag that can be polled or waited on.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A cancellation flag shared between the caller, the driver and the runners.
///
/// Cheap to clone; all clones share one flag. A runner may poll
/// [`is_cancelled`](Self::is_cancelled) or block in [`wait_timeout`](Self::wait_timeout),
/// which returns as soon as [`cancel`](Self::cancel) is called. A flag set directly
/// through [`flag`](Self::flag) (for example from a signal handler, where taking a lock
/// is not allowed) is noticed by waiters within [`POLL`](Self::POLL).
#[derive(Clone)]
pub struct Cancel {
    inner: Arc<Inner>,
}

struct Inner {
    flag: Arc<AtomicBool>,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Cancel {
    /// The longest a waiter sleeps between looks at the flag.
    pub const POLL: Duration = Duration::from_millis(50);

    /// A flag that is not set.
    pub fn new() -> Self {
        Self::from_flag(Arc::new(AtomicBool::new(false)))
    }

    /// Wraps an existing flag, for example one a SIGINT handler sets.
    pub fn from_flag(flag: Arc<AtomicBool>) -> Self {
        Self {
            inner: Arc::new(Inner {
                flag,
                lock: Mutex::new(()),
                wake: Condvar::new(),
            }),
        }
    }

    /// The underlying flag; setting it to `true` cancels (waiters notice within
    /// [`POLL`](Self::POLL)).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.inner.flag)
    }

    /// Sets the flag and wakes every waiter at once.
    pub fn cancel(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        let _guard = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.wake.notify_all();
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Blocks until the flag is set or `timeout` has passed; returns whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_cancelled() {
                return true;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Self::POLL,
            };
            if left.is_zero() {
                return false;
            }
            guard = self
                .inner
                .wake
                .wait_timeout(guard, left.min(Self::POLL))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_false_on_timeout_and_true_once_cancelled() {
        let c = Cancel::new();
        assert!(!c.wait_timeout(Duration::from_millis(1)));
        let other = c.clone();
        let t = std::thread::spawn(move || other.wait_timeout(Duration::from_secs(3600)));
        c.cancel();
        assert!(t.join().unwrap());
        assert!(c.is_cancelled());
    }

    #[test]
    fn a_flag_set_without_the_lock_is_noticed() {
        let flag = Arc::new(AtomicBool::new(false));
        let c = Cancel::from_flag(Arc::clone(&flag));
        let waiter = c.clone();
        let t = std::thread::spawn(move || waiter.wait_timeout(Duration::from_secs(3600)));
        flag.store(true, Ordering::SeqCst);
        assert!(t.join().unwrap());
    }
}
