//! What the daemon tells the world: logs ([`logging`]), the status board
//! ([`status`]) that `tokenkeeper status` reads, Prometheus [`metrics`], the
//! listen [`server`] (metrics, health, readiness) and systemd [`notify`].

pub mod logging;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod status;
