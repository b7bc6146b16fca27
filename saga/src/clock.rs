//! The orchestrator's clock for timers: the wall clock read once, at the first call, plus a
//! monotonic clock's elapsed time since. A wall-clock jump (NTP stepping the clock, an operator
//! setting it) therefore neither fires every timer at once nor holds them back; times still
//! read as milliseconds since the Unix epoch, and a restart takes the wall clock again.

use std::sync::OnceLock;
use std::time::Instant;

fn base() -> &'static (i64, Instant) {
    static BASE: OnceLock<(i64, Instant)> = OnceLock::new();
    BASE.get_or_init(|| (crate::now_ms(), Instant::now()))
}

/// Milliseconds since the Unix epoch, advancing monotonically.
pub fn now_ms() -> i64 {
    let (wall, start) = base();
    wall + start.elapsed().as_millis() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_goes_back_and_starts_at_the_wall_clock() {
        let a = super::now_ms();
        let wall = crate::now_ms();
        let b = super::now_ms();
        assert!(b >= a);
        assert!((wall - a).abs() < 60_000, "{wall} vs {a}");
    }
}
