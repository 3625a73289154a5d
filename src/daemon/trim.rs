//! Gives memory back to the kernel after a burst of refreshes. A burst (the
//! start, SIGUSR1, clients that share a lifetime) allocates connections,
//! requests and write buffers at once; glibc's malloc keeps what they freed
//! in its arenas, so an idle daemon's RSS would stay at the burst's peak
//! (a large share of its private memory: docs/benchmarks.md, "Where the
//! memory went"). Once the status board has
//! been quiet for a while — the HTTP pool has closed its idle connections by
//! then — one `malloc_trim(0)` returns the free pages. An idle daemon does
//! nothing here but read an atomic now and then.

use crate::telemetry::status::StatusBoard;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the board must be quiet before trimming: the token endpoint
/// pool evicts a connection within twice its idle timeout, so that by then
/// its connections are gone.
pub const QUIET: Duration = Duration::from_secs(2 * crate::grant::http::POOL_IDLE.as_secs() + 1);

/// While the board keeps changing (thousands of clients refresh somewhere
/// every second), trim anyway after this many `quiet` periods.
const BUSY_PERIODS: u32 = 10;

/// Calls `trim` once after each burst of board changes, when a whole `quiet`
/// period has passed without one (so between one and two `quiet` periods
/// after the last change), and every [`BUSY_PERIODS`] periods while the
/// changes never stop; until `cancel`.
pub async fn run(
    board: Arc<StatusBoard>,
    quiet: Duration,
    cancel: CancellationToken,
    trim: impl Fn(),
) {
    let mut seen = board.generation();
    // periods since the first change not yet followed by a trim
    let mut pending: Option<u32> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(quiet) => {}
        }
        let now = board.generation();
        let changed = now != seen;
        seen = now;
        pending = match pending {
            Some(periods) if !changed || periods + 1 >= BUSY_PERIODS => {
                trim();
                None
            }
            Some(periods) => Some(periods + 1),
            None => changed.then_some(0),
        };
    }
}

/// Fixes glibc's mmap threshold at its default (128 KiB). Left alone, glibc
/// raises it after the first large block is freed (a 10,000-client config
/// has one), and the trim threshold with it, up to 64 MiB: from then on the
/// threads' arenas keep everything a burst freed, and `malloc_trim` does
/// not reach their tops (the figures at 10,000 clients, idle after a
/// refresh burst, are in docs/benchmarks.md, "Where the memory went").
///
/// And one malloc arena per core instead of glibc's eight: the runtime has
/// one worker thread per core, and the blocking threads that write files
/// share theirs (an arena of its own keeps what a burst freed).
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets glibc malloc parameters; called once at
        // start, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Returns the free memory of every malloc arena to the kernel.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it
    // takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_each_burst_never_while_idle_and_now_and_then_while_busy() {
        let board = Arc::new(StatusBoard::default());
        let trims = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (board, trims, cancel) = (board.clone(), trims.clone(), cancel.clone());
            async move {
                run(board, Duration::from_secs(6), cancel, || {
                    trims.fetch_add(1, Ordering::SeqCst);
                })
                .await
            }
        });
        let count = || trims.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count(), 0, "idle from the start: nothing to give back");

        // a burst lasting 20 s: a change every second
        for _ in 0..20 {
            board.update("c", |s| s.consecutive_failures += 1);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(count(), 0, "not during a short burst");
        tokio::time::sleep(Duration::from_secs(13)).await;
        assert_eq!(count(), 1, "once the board has been quiet");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(count(), 1, "and not again while idle");

        board.update("c", |s| s.consecutive_failures = 0);
        tokio::time::sleep(Duration::from_secs(13)).await;
        assert_eq!(count(), 2, "the next burst, the next trim");

        // changes that never stop: a trim every BUSY_PERIODS periods (60 s)
        for _ in 0..200 {
            board.update("c", |s| s.consecutive_failures += 1);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(count(), 2 + 3, "200 s of changes: three trims");
        cancel.cancel();
        task.await.unwrap();
    }
}
