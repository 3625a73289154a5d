//! Black-box tests: the real `tokenkeeper` binary against real token servers
//! on loopback (panva's oidc-provider from npm) and, where faults must be
//! injected, a small in-test server. One binary, one module per area.
// real processes run in real time here
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod util;

mod chaos;
mod client_auth;
mod cluster;
mod commands;
mod faults;
mod files;
mod filesystem;
mod grants;
mod oidc;
mod outputs;
mod platforms;
mod refresh;
mod reload;
mod rotation;
mod secrets;
mod telemetry;
