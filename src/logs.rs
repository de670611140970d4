//! Log lines for failures that repeat: while the store cannot write, every task that uses it
//! fails again and again (a full disk gave 66 error lines a second). Each such place logs the
//! first failure, then at most one line per `EVERY` with the count since its last line.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One line per this long at most, per place.
pub const EVERY: Duration = Duration::from_secs(10);

/// The log limit of one place in the code (a `static`).
pub struct Limiter {
    state: Mutex<State>,
}

struct State {
    logged: Option<Instant>,
    unlogged: u64,
}

impl Limiter {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                logged: None,
                unlogged: 0,
            }),
        }
    }

    /// One more failure now: `Some(n)` when it is to be logged, `n` failures since the last
    /// line (this one included); `None` when it is to stay quiet.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.unlogged += 1;
        if s.logged.is_some_and(|at| now.duration_since(at) < EVERY) {
            return None;
        }
        s.logged = Some(now);
        Some(std::mem::take(&mut s.unlogged))
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs an error at most once per `EVERY` from this place, with `failures`, the count since
/// the last line: `limited_error!(error = %e, "cannot read the outbox")`.
#[macro_export]
macro_rules! limited_error {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logs::Limiter = $crate::logs::Limiter::new();
        if let Some(failures) = LIMIT.hit() {
            ::tracing::error!(failures, limited = "at most one line per 10 s", $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_logged_once_then_once_per_period_with_its_count() {
        let l = Limiter::new();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(l.hit_at(at(0)), Some(1), "the first is logged");
        // 66 a second for 10 s: quiet.
        let logged = (1..660).filter(|i| l.hit_at(at(i * 15)).is_some()).count();
        assert_eq!(logged, 0);
        assert_eq!(
            l.hit_at(at(10_000)),
            Some(660),
            "then one line with the count"
        );
        assert_eq!(l.hit_at(at(10_001)), None);
        assert_eq!(
            l.hit_at(at(25_000)),
            Some(2),
            "a later one after a lull at once"
        );
    }
}
