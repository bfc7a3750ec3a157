//! Warnings a peer can cause at will (connection refusals) are rate-limited: a flood of refused
//! connections must not flood the log, nor make pcierc spend its time formatting lines. At most
//! [`WarnThrottle::limit`] such warnings are logged per window; the first one logged after a
//! window in which some were left out says how many. The counters of `x-pcierc-query-stats`
//! keep the exact numbers.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::warn;

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    left_out: u64,
}

/// A rate limit for one kind of warning.
#[derive(Debug)]
pub struct WarnThrottle {
    /// Warnings logged per window at most.
    pub limit: u32,
    /// The window.
    pub window: Duration,
    state: Mutex<Window>,
}

/// Connection refusals (access policy, connection limits), shared by both sockets.
pub static REFUSALS: WarnThrottle = WarnThrottle::new(5, Duration::from_secs(10));

impl WarnThrottle {
    /// At most `limit` warnings per `window`.
    pub const fn new(limit: u32, window: Duration) -> WarnThrottle {
        WarnThrottle {
            limit,
            window,
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Log `message()` as a warning unless the limit of this window is reached.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        if let Some((message, left_out)) = self.check(Instant::now(), message) {
            if left_out > 0 {
                warn!("{message} ({left_out} more like it were not logged in the last window)");
            } else {
                warn!("{message}");
            }
        }
    }

    /// The decision at `now`: the message to log and how many were left out before it, or
    /// `None` when this one is left out.
    pub fn check(&self, now: Instant, message: impl FnOnce() -> String) -> Option<(String, u64)> {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        let mut left_out = 0;
        if expired {
            left_out = std::mem::take(&mut w.left_out);
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= self.limit {
            w.left_out += 1;
            return None;
        }
        w.logged += 1;
        Some((message(), left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_the_limit_then_says_how_many_were_left_out() {
        let t = WarnThrottle::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let logged: Vec<_> = (0..100)
            .filter_map(|i| t.check(t0 + Duration::from_millis(i), || format!("refusal {i}")))
            .collect();
        assert_eq!(
            logged,
            vec![
                ("refusal 0".to_owned(), 0),
                ("refusal 1".to_owned(), 0),
                ("refusal 2".to_owned(), 0)
            ]
        );
        // The next window: logged again, with the count of the 97 left out.
        let next = t.check(t0 + Duration::from_secs(11), || "later".into());
        assert_eq!(next, Some(("later".to_owned(), 97)));
        let after = t.check(t0 + Duration::from_secs(11), || "again".into());
        assert_eq!(after, Some(("again".to_owned(), 0)));
    }
}
