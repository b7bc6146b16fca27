//! One memory budget for the bytes that requests and answers hold while in flight, shared by
//! every connection of the native and Kafka listeners (as Kafka's `queued.max.request.bytes`).
//!
//! A connection charges a request frame before it reads the frame's body, and a fetch charges
//! the record bytes it may return before it reads them; a charge is given back when the
//! request has been handled or the answer written (or the connection closed). While the
//! budget is spent, connections wait for it instead of reading from their sockets, so a flood
//! of large requests or of answers nobody reads slows clients down rather than growing memory.
//!
//! A task never waits for a charge while holding another one, so waits cannot form a cycle:
//! every charge is given back by work that needs no further budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes in flight across all connections, at most `bytes_max`. Cheap to clone (one budget,
/// many handles). A [`Budget::share`] of it bounds one connection as well, so that one client
/// cannot take the whole budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// This budget's semaphore first, then its parent's (for a share).
    semaphores: Vec<Arc<Semaphore>>,
    bytes_max: usize,
}

impl Budget {
    /// The default budget, 128 MiB (`BrokerConfig::in_flight_bytes_max`).
    pub const BYTES_MAX_DEFAULT: usize = 128 << 20;

    pub fn new(bytes_max: usize) -> Budget {
        let bytes_max = bytes_max.clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            semaphores: vec![Arc::new(Semaphore::new(bytes_max))],
            bytes_max,
        }
    }

    /// A budget of at most `bytes_max` (and at most this one's) whose charges are also
    /// charged to this one.
    pub fn share(&self, bytes_max: usize) -> Budget {
        let bytes_max = bytes_max.clamp(1, self.bytes_max);
        let mut semaphores = vec![Arc::new(Semaphore::new(bytes_max))];
        semaphores.extend(self.semaphores.iter().cloned());
        Budget {
            semaphores,
            bytes_max,
        }
    }

    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Bytes not charged right now (to this budget itself, not counting its parent's).
    pub fn available(&self) -> usize {
        self.semaphores[0].available_permits()
    }

    /// Waits until `bytes` (at most the whole budget, so that one request as large as the
    /// budget still gets through once the others are done) can be charged, then charges them:
    /// to a share first, then to the budget it is a share of.
    pub async fn charge(&self, bytes: usize) -> Charge {
        let bytes = bytes.min(self.bytes_max);
        let mut charge = Charge::default();
        if bytes == 0 {
            return charge;
        }
        for semaphore in &self.semaphores {
            charge.permits.push(take(semaphore, bytes).await);
        }
        charge
    }
}

/// `bytes` permits of `semaphore`; acquiring takes a u32, so larger charges (budgets over
/// 4 GiB) are taken in parts.
async fn take(semaphore: &Arc<Semaphore>, bytes: usize) -> OwnedSemaphorePermit {
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut left = bytes;
    while left > 0 {
        let part = left.min(u32::MAX as usize);
        let got = semaphore
            .clone()
            .acquire_many_owned(part as u32)
            .await
            .expect("the budget's semaphore is never closed");
        match &mut permit {
            Some(p) => p.merge(got),
            None => permit = Some(got),
        }
        left -= part;
    }
    permit.expect("bytes > 0")
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(Budget::BYTES_MAX_DEFAULT)
    }
}

/// Bytes charged to a budget (and to the budget it is a share of), given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    permits: Vec<OwnedSemaphorePermit>,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.permits.first().map_or(0, |p| p.num_permits())
    }

    /// Gives back everything above `bytes` (a fetch that read less than it reserved).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes == 0 {
            self.permits.clear();
            return;
        }
        for permit in &mut self.permits {
            let extra = permit.num_permits().saturating_sub(bytes);
            if extra > 0 {
                drop(permit.split(extra));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_wait_for_room_and_come_back_when_dropped() {
        let budget = Budget::new(100);
        let mut big = budget.charge(80).await;
        assert_eq!(budget.available(), 20);
        // A charge larger than what is left waits...
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(50).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The waiter holds what was left (first come, first served: later small charges
        // cannot starve it).
        assert_eq!(budget.available(), 0);
        // ...until enough is given back.
        big.shrink_to(30);
        assert_eq!(big.bytes(), 30);
        let second = waiting.await.unwrap();
        assert_eq!(second.bytes(), 50);
        assert_eq!(budget.available(), 20);
        drop(second);
        drop(big);
        assert_eq!(budget.available(), 100);
        // One charge above the whole budget is cut to the budget rather than waiting forever.
        let all = budget.charge(1000).await;
        assert_eq!(all.bytes(), 100);
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test]
    async fn a_share_bounds_one_user_and_counts_against_the_whole() {
        let budget = Budget::new(100);
        let share = budget.share(30);
        let mut first = share.charge(25).await;
        assert_eq!((share.available(), budget.available()), (5, 75));
        // The share is spent, although the budget is not.
        let waiting = tokio::spawn({
            let share = share.clone();
            async move { share.charge(10).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Others still charge the budget itself.
        let other = budget.charge(60).await;
        first.shrink_to(10);
        let second = waiting.await.unwrap();
        assert_eq!(second.bytes(), 10);
        assert_eq!((share.available(), budget.available()), (10, 20));
        drop((first, second, other));
        assert_eq!((share.available(), budget.available()), (30, 100));
    }
}
