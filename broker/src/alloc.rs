//! The allocator Strand's binaries use: mimalloc, built without transparent huge pages.
//!
//! Why mimalloc: in `strand-bench saga` glibc's malloc, its frees and its consolidation of free
//! chunks took about 16% of the CPU samples, and with mimalloc the same binary did more sagas a
//! second in every alternated pair (README, "Allocator").
//!
//! Why without THP: mimalloc asks the kernel for huge pages on its arenas (`MADV_HUGEPAGE`).
//! Where THP defragmentation is `madvise` (Debian's default), a fault on such a range may
//! compact memory first, and the latency bench showed single stalls of 13 to 25 ms in most runs;
//! built with `no_thp` it showed none in ten.
//!
//! Each binary declares `#[global_allocator] static A: strand_broker::alloc::MiMalloc`; the
//! library imposes no allocator on the programs that embed it.

pub use mimalloc::MiMalloc;
