//! Configuration: parse → validate → build.
//!
//! * [`raw`]: the TOML as written, with spans (serde, `deny_unknown_fields`).
//! * [`validate`]: one pure pass to a [`validate::Plan`], every error at once.
//! * [`build`]: reads secret files, CA bundles and templates; resolves users.
//!
//! [`load`] runs all three and is the single entry for start, reload, `once`,
//! `check` and `token`.

pub mod build;
mod edit;
mod one;
pub mod presets;
pub mod raw;
pub mod validate;

use crate::grant::TokenRequestSpec;
use crate::output::OutputSpec;
use crate::schedule::Policy;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use edit::{Index, Reload};
pub use raw::LogFormat;

/// One problem in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the file, when the problem has a place.
    pub span: Option<Range<usize>>,
    /// Dotted key, e.g. `clients.shop.refresh_ratio`.
    pub key: String,
    pub message: String,
}

/// Everything wrong with a config file, printable as
/// `path:line:column: key: message`, one per line.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub text: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// `diagnostics` in file order; problems without a place last.
    fn new(path: &Path, text: &str, mut diagnostics: Vec<Diagnostic>) -> ConfigError {
        diagnostics.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
        ConfigError {
            path: path.to_path_buf(),
            text: text.to_string(),
            diagnostics,
        }
    }

    fn io(path: &Path, message: String) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            text: String::new(),
            diagnostics: vec![Diagnostic {
                span: None,
                key: String::new(),
                message,
            }],
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(span) = &d.span {
                let (line, column) = line_column(&self.text, span.start);
                write!(f, ":{line}:{column}")?;
            }
            if d.key.is_empty() {
                write!(f, ": {}", d.message)?;
            } else {
                write!(f, ": {}: {}", d.key, d.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A client ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSpec {
    pub name: String,
    pub request: TokenRequestSpec,
    pub policy: Policy,
    pub outputs: Vec<OutputSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    pub listen: Option<SocketAddr>,
    /// systemd READY=1 comes at the latest after this, tokens or not.
    pub ready_timeout: std::time::Duration,
    /// How often file outputs are checked on disk (zero: never).
    pub check_outputs: std::time::Duration,
    /// `[cluster]`: read at start (a change needs a restart).
    pub cluster: Option<Arc<crate::cluster::ClusterSpec>>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonSettings,
    pub clients: BTreeMap<String, Arc<ClientSpec>>,
    /// SHA-256 of the file's bytes, to skip reloads of unchanged content
    /// (zero for [`load_one`]'s).
    pub digest: [u8; 32],
    /// What a reload of an edit needs (empty for [`load_one`]'s).
    pub index: Index,
}

impl Config {
    /// What is valid but probably not meant: printed by `check`, logged by
    /// the daemon at start and at each reload.
    pub fn warnings(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(addr) = self.daemon.listen.filter(|a| !a.ip().is_loopback()) {
            found.push(format!(
                "daemon.listen = \"{addr}\" is reachable from other hosts: /status and /metrics show every client's name, token expiry and the endpoints' errors (never a secret or a token); listen on 127.0.0.1, or restrict the port (firewall, Kubernetes NetworkPolicy)"
            ));
        }
        found
    }
}

/// Parse and validate, without reading anything the config names: the plan
/// and what is wrong with it (only a syntax error stops it early).
fn plan(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(validate::Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
    plan_only(path, text, env, None).map(|(plan, diagnostics, _, _)| (plan, diagnostics))
}

/// [`plan`] of `only` the named client, when it is given; also the names
/// of the clients left out. When the plan was made from a view of the file,
/// its spans are the view's: the view comes with it, to [`one::View::remap`]
/// what is wrong.
#[allow(clippy::type_complexity)]
fn plan_only(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    only: Option<&str>,
) -> Result<
    (
        validate::Plan,
        Vec<Diagnostic>,
        Vec<String>,
        Option<one::View>,
    ),
    Vec<Diagnostic>,
> {
    // one client: from a view of the text without the others, when the
    // file has the plain layout (else the whole text, reading one)
    let view = only.and_then(|name| one::view(text, |n| n == name));
    let (mut raw, diagnostics) = match &view {
        Some(view) => raw::parse_only(&view.text, only),
        None => raw::parse_only(text, only),
    };
    let mut diagnostics = diagnostics;
    let remap = |d: Vec<Diagnostic>| match &view {
        Some(view) => view.remap(d),
        None => d,
    };
    if raw.not_toml {
        return Err(remap(diagnostics));
    }
    if only.is_some() && raw.clients.is_empty() && raw.unreadable_clients == 0 {
        // not there: the caller says so, with the names there are
        let names = match &view {
            Some(_) => one::names(text).unwrap_or_default(),
            None => std::mem::take(&mut raw.skipped_clients),
        };
        return Ok((validate::Plan::default(), Vec::new(), names, view));
    }
    let skipped = std::mem::take(&mut raw.skipped_clients);
    let (plan, invalid) = validate::validate(&raw, &base(path), env, Default::default());
    diagnostics.extend(invalid);
    Ok((plan, diagnostics, skipped, view))
}

/// The directory relative paths in the config at `path` start from.
fn base(path: &Path) -> PathBuf {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf())
}

/// What `tokenkeeper status` needs — `state_dir` and the clients' names —
/// from parsing and validation alone: no secret, CA bundle or template is
/// read, so it works for a user who may not read them.
pub fn load_names(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(PathBuf, Vec<String>), ConfigError> {
    let text = read_text(path)?;
    let fail = |diagnostics| ConfigError::new(path, &text, diagnostics);
    let (plan, diagnostics) = plan(path, &text, env).map_err(fail)?;
    if !diagnostics.is_empty() {
        return Err(fail(diagnostics));
    }
    let names = plan.clients.into_iter().map(|c| c.name).collect();
    Ok((plan.daemon.state_dir, names))
}

/// Where the systemd unit's directories are when tokenkeeper runs outside
/// it (`check`, `once`, `token`, `status` by hand): the unit's own
/// `RuntimeDirectory=`, `StateDirectory=`, and the directory its
/// `LoadCredential=` lines read from.
pub const UNIT_DIRECTORIES: [(&str, &str); 3] = [
    ("RUNTIME_DIRECTORY", "/run/tokenkeeper"),
    ("STATE_DIRECTORY", "/var/lib/tokenkeeper"),
    ("CREDENTIALS_DIRECTORY", "/etc/tokenkeeper/credentials"),
];

/// The process environment, as the loader's view of it; outside the unit,
/// its directories' variables default to [`UNIT_DIRECTORIES`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        UNIT_DIRECTORIES
            .iter()
            .find(|(var, _)| *var == name)
            .map(|(_, dir)| dir.to_string())
    })
}

pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Parses, validates and builds the config from `text` (the contents of `path`).
pub fn load_str(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let fail = |diagnostics| ConfigError::new(path, text, diagnostics);
    let (plan, diagnostics) = plan(path, text, env).map_err(fail)?;
    built(path, text, env, plan, diagnostics, true, &|found| found)
}

/// What [`load_one`] found.
pub enum One {
    /// The config with that client alone.
    Found(Box<Config>),
    /// No such client; the names of those there are.
    Missing(Vec<String>),
}

/// Loads the daemon settings, the defaults and the client `name` of the
/// config at `path`, and no other client: what `token NAME` and `once
/// --client NAME` need, at a cost that does not grow with the clients
/// beside it (the file is still parsed as TOML, once).
pub fn load_one(
    path: &Path,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<One, ConfigError> {
    let text = read_text(path)?;
    let fail = |diagnostics| ConfigError::new(path, &text, diagnostics);
    let (plan, diagnostics, others, view) =
        plan_only(path, &text, env, Some(name)).map_err(fail)?;
    if plan.clients.is_empty() && diagnostics.is_empty() {
        return Ok(One::Missing(others));
    }
    // what is wrong was found in the view: its places are moved to the file
    let remap = |found| match &view {
        Some(view) => view.remap(found),
        None => found,
    };
    built(path, &text, env, plan, diagnostics, false, &remap).map(|c| One::Found(Box::new(c)))
}

/// The config built from `plan`, unless there are `diagnostics` or
/// building finds more; with its digest and [`Index`] when `indexed` (what
/// a reload needs). `remap` moves what is wrong from the view of `text` the
/// plan was made from (one client's, [`load_one`]) to `text`.
fn built(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    validate::Plan { daemon, clients }: validate::Plan,
    mut diagnostics: Vec<Diagnostic>,
    indexed: bool,
    remap: &dyn Fn(Vec<Diagnostic>) -> Vec<Diagnostic>,
) -> Result<Config, ConfigError> {
    let fail = |diagnostics| ConfigError::new(path, text, remap(diagnostics));
    let index = indexed.then(|| Index::new(text, &clients));
    let cluster = match daemon.cluster {
        None => None,
        Some(plan) => match build::cluster(plan, env) {
            Ok(spec) => Some(Arc::new(spec)),
            Err(found) => {
                diagnostics.extend(found);
                None
            }
        },
    };
    let (clients, index) = match build::build(clients, env, &[]) {
        Ok((clients, files)) if diagnostics.is_empty() => (
            clients,
            index.map(|i| i.with_files(files)).unwrap_or_default(),
        ),
        Ok(_) => return Err(fail(diagnostics)),
        Err(unbuildable) => {
            diagnostics.extend(unbuildable);
            return Err(fail(diagnostics));
        }
    };
    Ok(Config {
        path: path.to_path_buf(),
        daemon: DaemonSettings {
            state_dir: daemon.state_dir,
            log_format: daemon.log_format,
            listen: daemon.listen,
            ready_timeout: daemon.ready_timeout,
            check_outputs: daemon.check_outputs,
            cluster,
        },
        clients,
        // what a reload compares: only a config that is reloaded needs it
        digest: if indexed {
            digest(text.as_bytes())
        } else {
            [0; 32]
        },
        index,
    })
}

/// Reads and loads the config file at `path`.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    load_str(path, &read_text(path)?, env)
}

/// The config file's text (a regular file, bounded, UTF-8).
fn read_text(path: &Path) -> Result<String, ConfigError> {
    let bytes = crate::fsread::read_limited(path, crate::fsread::MAX_CONFIG_BYTES)
        .map_err(|e| ConfigError::io(path, format!("cannot read the config file: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| ConfigError::io(path, "the config file is not UTF-8".into()))
}

#[cfg(test)]
mod tests;
