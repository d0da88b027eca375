//! The servers a generator spreads its requests over, and which of them to skip for now.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One server and until when it is skipped.
#[derive(Debug)]
struct Endpoint {
    base: String,
    down_until: Mutex<Option<Instant>>,
}

/// Base URLs taken in turn; one that failed is skipped for a cooldown, then tried again.
#[derive(Debug)]
pub(crate) struct Endpoints {
    all: Vec<Endpoint>,
    next: AtomicUsize,
    cooldown: Duration,
}

impl Endpoints {
    /// The pool of `bases` (trailing slashes dropped), with `cooldown` after a failure.
    pub fn new(bases: &[String], cooldown: Duration) -> Self {
        let all = bases
            .iter()
            .map(|b| Endpoint { base: b.trim_end_matches('/').to_owned(), down_until: Mutex::new(None) })
            .collect();
        Self { all, next: AtomicUsize::new(0), cooldown }
    }

    /// The next healthy server in turn (its index and base URL); when every one is cooling down,
    /// the one that comes back first, with how long until it does.
    pub fn pick(&self) -> (usize, &str, Duration) {
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.all.len();
        let mut soonest: Option<(usize, Instant)> = None;
        for i in (0..n).map(|o| (start + o) % n) {
            let down = *self.all[i].down_until.lock().expect("endpoint lock");
            match down {
                Some(until) if until > now => {
                    if soonest.is_none_or(|(_, s)| until < s) {
                        soonest = Some((i, until));
                    }
                }
                _ => return (i, &self.all[i].base, Duration::ZERO),
            }
        }
        let (i, until) = soonest.expect("at least one endpoint");
        (i, &self.all[i].base, until - now)
    }

    /// Server `i` failed: skip it for the cooldown.
    pub fn mark_down(&self, i: usize) {
        let mut down = self.all[i].down_until.lock().expect("endpoint lock");
        *down = Some(Instant::now() + self.cooldown);
        tracing::warn!("{} failed; skipped for {:.0?}", self.all[i].base, self.cooldown);
    }

    /// Server `i` answered: it is healthy again.
    pub fn mark_up(&self, i: usize) {
        let mut down = self.all[i].down_until.lock().expect("endpoint lock");
        if down.take().is_some() {
            tracing::info!("{} answers again", self.all[i].base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_server_is_skipped_until_its_cooldown_ends() {
        let pool = Endpoints::new(&["http://a/v1/".into(), "http://b/v1".into()], Duration::from_millis(50));
        let firsts: Vec<&str> = (0..4).map(|_| pool.pick().1).collect();
        assert_eq!(firsts, ["http://a/v1", "http://b/v1", "http://a/v1", "http://b/v1"], "in turn");
        pool.mark_down(0);
        assert!((0..4).all(|_| pool.pick().1 == "http://b/v1"), "a is skipped");
        pool.mark_down(1);
        let (i, _, wait) = pool.pick();
        assert_eq!(i, 0, "both down: the one back first");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(pool.pick().2, Duration::ZERO, "back after the cooldown");
        pool.mark_up(1);
        let seen: Vec<usize> = (0..2).map(|_| pool.pick().0).collect();
        assert!(seen.contains(&0) && seen.contains(&1));
    }
}
