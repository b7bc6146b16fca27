//! A circuit breaker per participant endpoint, so a dead service is not hammered: it opens
//! after `failures_to_open` consecutive failures, lets one trial call through (half-open) after
//! `open_ms`, and closes again when that call succeeds. Time is passed in.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failures_to_open: u32,
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            open_ms: 5_000,
        }
    }
}

/// One endpoint's breaker, as `GET /breakers` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Breaker {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// When an open breaker lets a trial call through.
    pub retry_at_ms: Option<i64>,
    #[serde(skip)]
    trial_in_flight: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            retry_at_ms: None,
            trial_in_flight: false,
        }
    }
}

impl Breaker {
    /// Whether a call may go out now. In half-open, only one trial call at a time.
    pub fn allow(&mut self, now_ms: i64) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open if self.retry_at_ms.is_some_and(|t| now_ms >= t) => {
                self.state = BreakerState::HalfOpen;
                self.trial_in_flight = true;
                true
            }
            BreakerState::Open => false,
            BreakerState::HalfOpen if !self.trial_in_flight => {
                self.trial_in_flight = true;
                true
            }
            BreakerState::HalfOpen => false,
        }
    }

    pub fn record_success(&mut self) {
        *self = Breaker::default();
    }

    pub fn record_failure(&mut self, config: &BreakerConfig, now_ms: i64) {
        self.consecutive_failures += 1;
        self.trial_in_flight = false;
        if self.state == BreakerState::HalfOpen
            || self.consecutive_failures >= config.failures_to_open
        {
            self.state = BreakerState::Open;
            self.retry_at_ms = Some(now_ms + config.open_ms as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_for_one_trial() {
        let config = BreakerConfig {
            failures_to_open: 3,
            open_ms: 1_000,
        };
        let mut b = Breaker::default();
        for now in 0..2 {
            assert!(b.allow(now));
            b.record_failure(&config, now);
        }
        assert_eq!(b.state, BreakerState::Closed);
        b.record_success();
        for now in 0..3 {
            assert!(b.allow(now));
            b.record_failure(&config, now);
        }
        assert_eq!(b.state, BreakerState::Open);
        assert!(!b.allow(500));
        assert!(b.allow(1_002), "half-open after the open period");
        assert_eq!(b.state, BreakerState::HalfOpen);
        assert!(!b.allow(1_003), "one trial at a time");
        b.record_failure(&config, 1_010);
        assert_eq!(b.state, BreakerState::Open, "a failed trial opens it again");
        assert!(b.allow(2_010));
        b.record_success();
        assert_eq!(b.state, BreakerState::Closed);
        assert!(b.allow(2_011));
    }
}
