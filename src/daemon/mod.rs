//! The daemon: one refresh task per client, one worker per output, and a
//! supervisor that starts them, reloads the config as a diff, and stops them.
//!
//! * [`client`]: the refresh loop of one client.
//! * [`outputs`]: one worker per output, fed the newest token through a watch channel.
//! * [`reload`]: the config diff, and the file watcher.
//! * [`supervisor`]: signals, reload, shutdown; shared by `run` and `dev`.
//! * [`once`]: a single pass for `once` and `token`.
//! * [`control`]: the control socket behind `tokenkeeper refresh NAME`.
//! * [`trim`]: memory given back to the kernel after a burst of refreshes.

pub mod client;
pub mod control;
pub mod once;
pub mod outputs;
pub mod reload;
pub mod supervisor;
pub mod trim;

pub use supervisor::run;
