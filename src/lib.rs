//! tokenkeeper: keeps OAuth 2.0 access tokens fresh in files so that everything
//! else on a host can simply read them. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod exit;
pub mod fsread;
pub mod grant;
pub mod limiter;
pub mod output;
pub mod schedule;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod token;

/// `tokenkeeper/<version>`, sent as the User-Agent of every request.
pub const USER_AGENT: &str = concat!("tokenkeeper/", env!("CARGO_PKG_VERSION"));

/// Installs rustls' `ring` provider as the process default. Called once at the
/// top of `main` and of each test binary; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
