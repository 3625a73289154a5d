//! tokenkeeper: keeps OAuth 2.0 access tokens fresh in files so that everything
//! else on a host can simply read them. See ARCHITECTURE.md for the map.

pub mod cli;
pub(crate) mod clock;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod dev;
pub(crate) mod exit;
pub(crate) mod fsread;
pub(crate) mod grant;
pub(crate) mod kube;
pub(crate) mod limiter;
pub(crate) mod man;
pub(crate) mod output;
pub(crate) mod schedule;
pub(crate) mod secret;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod token;

/// What the fuzz targets, the integration tests and the benchmark reach
/// into. Not an API: everything else is crate-private, so that code nothing
/// uses is found as dead.
#[doc(hidden)]
pub mod internals {
    pub use crate::cluster::seal::SealKey;
    pub use crate::config::{ConfigError, raw, validate};
    pub use crate::daemon::trim::QUIET;
    pub use crate::grant::ResponseMapping;
    pub use crate::grant::assertion::AssertionKey;
    pub use crate::grant::response::{HttpAnswer, ParseContext, parse_answer};
    pub use crate::secret::Redactor;
    pub use crate::state::{StateStore, read_record};
    pub use crate::token::Token;
}

/// `tokenkeeper/<version>`, sent as the User-Agent of every request.
pub const USER_AGENT: &str = concat!("tokenkeeper/", env!("CARGO_PKG_VERSION"));

/// Installs rustls' `ring` provider as the process default. Called once at the
/// top of `main` and of each test binary; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
