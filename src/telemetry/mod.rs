//! What the daemon tells the world: logs ([`logging`]) and the status board
//! ([`status`]) that `tokenkeeper status` reads.

pub mod logging;
pub mod status;
