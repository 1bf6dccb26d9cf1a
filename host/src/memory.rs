//! Giving freed memory back to the OS.
//!
//! The gateway uses glibc's allocator: against jemalloc and mimalloc it held the least memory
//! per session and after every probe of `loadgen memory` (docs/benchmarks.md, "Memory return
//! and allocators").
//! glibc keeps freed pages in its arenas (one per thread that allocated) and returns them on
//! its own only from the top of the main heap, so a burst, a large compile or a profile
//! leaves RSS far above what is in use. Three remedies: [`give_back_memory`] right after a
//! known large free on a thread that may pay for it, [`trim_soon`] after one on a thread that
//! may not, and [`spawn_trimmer`], which trims whenever much of the heap is free. All are
//! no-ops with another allocator (`--features jemalloc` / `mimalloc`) or another libc.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the trimmer looks at the allocator's free bytes.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// The trimmer trims once the resident bytes not in use (RSS less the heap in use) grew by at
/// least this many bytes over their lowest point since the last trim, and as many bytes are
/// free in the arenas... (A rule on RSS growth of 8 MiB left a soak cycle's transient memory,
/// ~8 MiB of a 40 MiB gateway, resident between trims, and missed memory freed after a trim
/// taken under load: `loadgen soak` ended 20-57 % over its start; docs/benchmarks.md, "Soak")
pub const TRIM_GROWTH_MIN: u64 = 2 << 20;
/// ...or by this fraction of RSS, if more (a large gateway's RSS moves by more than a small
/// one's, and each trim walks every arena).
pub const TRIM_GROWTH_RATIO: u64 = 16;
/// ...and the free bytes are at least this fraction of the bytes in use (so a large, busy heap
/// with a normal amount of slack is left alone: trimming it would be undone by the next burst).
pub const TRIM_FREE_RATIO: f64 = 0.25;

/// Whether this build's allocator is glibc's (the default build on Linux with glibc).
pub const GLIBC: bool = cfg!(all(target_env = "gnu", not(any(feature = "jemalloc", feature = "mimalloc"))));

/// The allocator's counters, bytes: `(in use, free in the arenas)`, where in use counts
/// chunks in the arenas and those mapped on their own; `None` when the allocator is not
/// glibc's.
pub fn heap_bytes() -> Option<(u64, u64)> {
    #[cfg(target_env = "gnu")]
    if GLIBC {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        return Some(((info.uordblks + info.hblkhd) as u64, info.fordblks as u64));
    }
    None
}

/// Returns the allocator's free memory to the OS (glibc `malloc_trim`, which walks every
/// arena; a no-op with other allocators). Takes a few ms with a large heap: call it after
/// rare, large frees, off the async workers.
pub fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    if GLIBC {
        // SAFETY: malloc_trim only releases free memory held by the allocator; it has no
        // preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The process's resident set, bytes (`/proc/self/statm`); `None` where there is no procfs.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// How far the resident bytes not in use must grow over their lowest point since the last
/// trim before the trimmer trims, with RSS at `rss` (bytes): [`TRIM_GROWTH_MIN`], or
/// 1/[`TRIM_GROWTH_RATIO`] of `rss` if more.
pub fn trim_growth(rss: u64) -> u64 {
    (rss / TRIM_GROWTH_RATIO).max(TRIM_GROWTH_MIN)
}

/// The trimmer thread, to wake for [`trim_soon`].
static TRIMMER: OnceLock<std::thread::Thread> = OnceLock::new();
/// A trim was asked for since the trimmer last looked.
static TRIM_ASKED: AtomicBool = AtomicBool::new(false);

/// Asks the trimmer (if running) to give free memory back now, whatever share of the heap is
/// free and whatever RSS did since its last trim: for a known large free on a thread that
/// should not pay for the trim itself. (A large component leaving the compile cache frees
/// ~15 MiB of metadata that the trimmer's own rule kept: its reference RSS was taken while the
/// component was live, so the free never looked like growth.) Returns at once.
pub fn trim_soon() {
    TRIM_ASKED.store(true, Ordering::Release);
    if let Some(trimmer) = TRIMMER.get() {
        trimmer.unpark();
    }
}

/// Starts a thread (`wasmgate-trim`) that every [`TRIM_INTERVAL`] trims the heap when its
/// resident bytes not in use (RSS less the heap in use) have grown by [`trim_growth`] over
/// their lowest point since the last trim, at least as many bytes are free in the arenas, and
/// those are [`TRIM_FREE_RATIO`] of the bytes in use (glibc counts trimmed pages as free still,
/// so the free bytes alone would trim a settled heap over and over). Measuring what is not in
/// use, rather than RSS, also catches memory freed after a trim taken under load: RSS stays,
/// the bytes in use fall. Each trim is logged at `debug` with the RSS it gave back and how
/// long it took. Does nothing unless the allocator is glibc's. For the binary: once per
/// process.
pub fn spawn_trimmer() {
    if !GLIBC {
        return;
    }
    let spawned = std::thread::Builder::new().name("wasmgate-trim".into()).spawn(|| {
        let _ = TRIMMER.set(std::thread::current());
        // Resident bytes not in use: their lowest point since the last trim.
        let mut idle_low = 0u64;
        loop {
            std::thread::park_timeout(TRIM_INTERVAL);
            let asked = TRIM_ASKED.swap(false, Ordering::AcqRel);
            let (Some((in_use, free)), Some(rss)) = (heap_bytes(), rss_bytes()) else { return };
            let idle = rss.saturating_sub(in_use);
            let growth = trim_growth(rss);
            let grown = idle >= idle_low.saturating_add(growth);
            let slack = free as f64 >= in_use as f64 * TRIM_FREE_RATIO && grown;
            if free >= growth && (asked || slack) {
                let started = std::time::Instant::now();
                give_back_memory();
                let rss_after = rss_bytes().unwrap_or(rss);
                let in_use_after = heap_bytes().map_or(in_use, |(in_use, _)| in_use);
                idle_low = rss_after.saturating_sub(in_use_after);
                tracing::debug!(
                    rss_before = rss,
                    rss_after,
                    in_use,
                    took_us = started.elapsed().as_micros() as u64,
                    asked,
                    "heap trimmed"
                );
            } else {
                idle_low = idle_low.min(idle);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("could not start the heap trimmer: {e}");
    }
}
