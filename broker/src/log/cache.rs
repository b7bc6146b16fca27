//! The bound on open sealed segments, shared by every partition log of the process.
//!
//! Each open sealed segment holds three descriptors (its `.log` file and two index files) and
//! two mappings; without a bound a broker with many partitions runs out of either. Sealed
//! segments are queued in the order they were opened; when more than the capacity are open, the
//! oldest is closed unless it was used since it was last looked at (a second chance, the clock
//! algorithm). A read of an open segment only sets a flag: it never takes the queue's lock. A
//! closed segment is reopened by its next read.
//!
//! The active segment is never queued, so never closed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::segment::Segment;

/// Open sealed segments at most, by default.
pub const OPEN_SEALED_SEGMENTS_MAX_DEFAULT: usize = 1_000;

/// What the cache may do with a queued segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// Its files were closed just now: drop it from the queue.
    Closed,
    /// Its files were not open (nothing to count): drop it from the queue.
    NotOpen,
    /// It must stay open for now (used since the last look, retired, not yet fsynced, or its
    /// lock is busy): queue it again.
    Keep,
}

/// Open sealed segments, oldest first, and how many may be open.
#[derive(Debug)]
pub(crate) struct SegmentCache {
    capacity: AtomicUsize,
    n_open: AtomicUsize,
    /// Admitted segments whose files may be open, oldest first. Weak: a segment the log let go
    /// of is dropped (and its files closed) whatever the queue says.
    queue: Mutex<VecDeque<Weak<Segment>>>,
}

impl SegmentCache {
    pub(crate) fn new(capacity: usize) -> SegmentCache {
        SegmentCache {
            capacity: AtomicUsize::new(capacity.max(1)),
            n_open: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Sealed segments whose files are open.
    pub(crate) fn n_open(&self) -> usize {
        self.n_open.load(Ordering::Relaxed)
    }

    /// Puts a sealed segment under the cache's bound. Called once the segment is sealed and in
    /// the log's list; later calls for the same segment do nothing.
    pub(crate) fn admit(self: &Arc<Self>, segment: &Arc<Segment>) {
        debug_assert!(segment.is_sealed(), "only sealed segments are cached");
        if !segment.attach(self, segment) || !segment.mark_counted() {
            return;
        }
        self.opened();
        self.enqueue(Arc::downgrade(segment));
    }

    /// A counted segment's files were (re)opened.
    pub(crate) fn opened(&self) {
        self.n_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A counted segment's files were closed, or it was dropped with them open.
    pub(crate) fn closed(&self) {
        self.n_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Queues a segment whose files were just opened and closes the oldest ones past the
    /// capacity. The work is bounded: two passes over the queue at most (the first may only
    /// clear second chances); segments that must stay open may leave it over capacity until a
    /// later call.
    pub(crate) fn enqueue(&self, segment: Weak<Segment>) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut queue = self.queue.lock().expect("segment cache lock");
        queue.push_back(segment);
        // Dead entries count as well, so that the queue itself stays bounded.
        let mut budget = 2 * queue.len() + 1;
        while queue.len() > capacity && budget > 0 {
            budget -= 1;
            let Some(weak) = queue.pop_front() else {
                break;
            };
            let Some(segment) = weak.upgrade() else {
                continue;
            };
            match segment.try_close() {
                Eviction::Closed => self.closed(),
                Eviction::NotOpen => {}
                Eviction::Keep => queue.push_back(weak),
            }
        }
    }
}

static GLOBAL: OnceLock<Arc<SegmentCache>> = OnceLock::new();

/// The cache of every log opened with [`super::Log::open`].
pub(crate) fn global() -> &'static Arc<SegmentCache> {
    GLOBAL.get_or_init(|| Arc::new(SegmentCache::new(OPEN_SEALED_SEGMENTS_MAX_DEFAULT)))
}

/// Sets how many sealed segments may be open at once across every log of the process (at least
/// one). Set it at start, before logs are opened; a smaller value takes effect as segments are
/// opened.
pub fn set_open_sealed_segments_max(n: usize) {
    global().capacity.store(n.max(1), Ordering::Relaxed);
}

/// Sealed segments whose files are open, across every log of the process.
pub fn open_sealed_segments() -> usize {
    global().n_open()
}
