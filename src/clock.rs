//! Wall-clock time as an input. Production reads the system clock; tests use
//! [`TokioClock`], which follows tokio's (pausable) clock so a whole refresh
//! loop runs under `tokio::time::pause()` without real sleeps.

use std::time::SystemTime;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system's wall time, where nothing is injected (commands,
    /// telemetry, the remote outputs' signatures).
    #[allow(
        clippy::disallowed_methods,
        reason = "the one reader of the system's wall clock"
    )]
    pub fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemClock::now(self)
    }
}

/// Wall time derived from tokio's clock: `start_wall + (tokio_now - start)`.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start_wall: SystemTime,
    start: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    pub fn starting_at(start_wall: SystemTime) -> TokioClock {
        TokioClock {
            start_wall,
            start: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start_wall + (tokio::time::Instant::now() - self.start)
    }
}
