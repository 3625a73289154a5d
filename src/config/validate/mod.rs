//! Validation: from the raw config to a [`Plan`] in one pure pass that
//! reports every error at once. No file is read here; the environment is
//! passed in (for `$CREDENTIALS_DIRECTORY` and friends).

//!
//! * [`plan`]: what validation makes.
//! * [`client`]: one client: endpoint, authentication, grant, request, policy.
//! * [`output`]: one output, by kind; [`hooks`]: its hooks.

mod client;
mod cluster;
mod hooks;
mod output;
mod plan;

pub use plan::*;

use client::{ClientDefaults, validate_client};
use hooks::validate_hooks;
pub use output::file_identity;
use output::validate_output;

use super::Diagnostic;
use super::raw::{RawConfig, RawMode, S};
use crate::schedule::Policy;
use crate::secret::Secret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

struct Validator<'a> {
    diagnostics: Vec<Diagnostic>,
    env: &'a dyn Fn(&str) -> Option<String>,
    base: &'a Path,
}

impl Validator<'_> {
    /// An error at `span` (or at the config file as a whole).
    fn error(
        &mut self,
        span: impl Into<Option<Range<usize>>>,
        key: &str,
        message: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            span: span.into(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        value: &S<String>,
        fallback: Option<Duration>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = value else {
            return fallback.unwrap_or(default);
        };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "{:?} is not a duration ({e}); write e.g. \"90s\", \"5m\", \"1h\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// Expands path variables and makes a relative path relative to the config file's directory.
    fn path(&mut self, value: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let mut text = value.get_ref().clone();
        for var in PATH_VARIABLES {
            for pattern in [format!("${{{var}}}"), format!("${var}")] {
                if text.contains(&pattern) {
                    match (self.env)(var) {
                        Some(dir) if !dir.is_empty() => {
                            // systemd may list several directories; the first is ours
                            let first = dir.split(':').next().unwrap_or_default().to_string();
                            text = text.replace(&pattern, &first);
                        }
                        _ => {
                            self.error(
                                value.span(),
                                key,
                                format!("uses ${var}, which is not set in the environment (systemd sets it for the unit's matching directive)"),
                            );
                            return None;
                        }
                    }
                }
            }
        }
        if text.is_empty() {
            self.error(value.span(), key, "must not be empty");
            return None;
        }
        let path = Path::new(&text);
        Some(normalize(&if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }))
    }

    fn secret_source(
        &mut self,
        file: &S<String>,
        env: &S<String>,
        inline: &S<String>,
        key_prefix: &str,
        client_key: &str,
    ) -> Option<Located<SecretSource>> {
        let mut given: Vec<(&Spanned<String>, &str)> =
            [(file, "_file"), (env, "_env"), (inline, "")]
                .into_iter()
                .filter_map(|(v, suffix)| v.as_ref().map(|v| (v, suffix)))
                .collect();
        given.sort_by_key(|(v, _)| v.span().start);
        if given.len() > 1 {
            self.error(
                given[1].0.span(),
                &format!("{client_key}.{key_prefix}{}", given[1].1),
                format!("set only one of {key_prefix}_file, {key_prefix}_env, {key_prefix}"),
            );
        }
        let (value, suffix) = given.first()?;
        let key = format!("{client_key}.{key_prefix}{suffix}");
        let source = match *suffix {
            "_file" => SecretSource::File(self.path(value, &key)?),
            "_env" => {
                if value.get_ref().is_empty() {
                    self.error(value.span(), &key, "must name an environment variable");
                    return None;
                }
                SecretSource::Env(value.get_ref().clone())
            }
            _ => {
                if value.get_ref().is_empty() {
                    self.error(value.span(), &key, "must not be empty");
                    return None;
                }
                SecretSource::Inline(Secret::new(value.get_ref().clone()))
            }
        };
        Some(Located {
            value: source,
            span: value.span(),
            key,
        })
    }
}

/// Lexical normalization (`a/./b/../c` → `a/c`) so that two spellings of one
/// output path are caught as duplicates.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_mode(mode: &RawMode) -> Result<u32, String> {
    let bits = match mode {
        RawMode::Text(s) => {
            let digits = s.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .map_err(|_| format!("{s:?} is not an octal mode; write e.g. \"0640\""))?
        }
        RawMode::Number(n) => u32::try_from(*n).map_err(|_| format!("{n} is not a mode"))?,
    };
    if bits > 0o777 {
        return Err(match mode {
            RawMode::Number(n) => format!(
                "{n} is not a mode (a TOML integer is decimal); write it as a string, e.g. \"0640\""
            ),
            RawMode::Text(s) => format!(
                "{s:?} is not a permission mode (at most \"0777\"; no setuid, setgid or sticky bits)"
            ),
        });
    }
    if bits & 0o400 == 0 {
        return Err(format!(
            "{bits:04o} leaves the owner unable to read the file"
        ));
    }
    Ok(bits)
}

fn header_name_ok(name: &str) -> bool {
    reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

fn header_value_ok(value: &str) -> bool {
    reqwest::header::HeaderValue::from_str(value).is_ok()
}

/// What the outputs of clients outside a validation write to (their
/// [`OutputPlan::identity`]), by the output's key: a reload of the clients
/// an edit touched checks them against the clients it left alone.
pub type Taken = HashMap<String, String>;

/// Validates `raw`. `base` is the config file's directory; `env` looks up
/// environment variables; `taken`, what other clients' outputs write to.
/// Returns the plan of every client that validated (so that building can
/// still report its problems) and every error found; the config is valid
/// only when the list is empty.
pub fn validate(
    raw: &RawConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    taken: Taken,
) -> (Plan, Vec<Diagnostic>) {
    let mut v = Validator {
        diagnostics: Vec::new(),
        env,
        base,
    };

    let state_dir = match &raw.daemon.state_dir {
        Some(dir) => v.path(dir, "daemon.state_dir"),
        None => Some(match env("STATE_DIRECTORY") {
            Some(dir) if !dir.is_empty() => {
                PathBuf::from(dir.split(':').next().unwrap_or(DEFAULT_STATE_DIR))
            }
            _ => PathBuf::from(DEFAULT_STATE_DIR),
        }),
    };
    let listen = match &raw.daemon.listen {
        Some(addr) => match addr.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                v.error(
                    addr.span(),
                    "daemon.listen",
                    format!(
                        "{:?} is not an address like \"127.0.0.1:9464\"",
                        addr.get_ref()
                    ),
                );
                None
            }
        },
        None => None,
    };
    let daemon = DaemonPlan {
        state_dir: state_dir.unwrap_or_default(),
        log_format: raw
            .daemon
            .log_format
            .as_ref()
            .map(|f| *f.get_ref())
            .unwrap_or_default(),
        listen,
        ready_timeout: v.duration(
            &raw.daemon.ready_timeout,
            None,
            "daemon.ready_timeout",
            Duration::from_secs(60),
        ),
        check_outputs: v.duration(
            &raw.daemon.check_outputs,
            None,
            "daemon.check_outputs",
            Duration::from_secs(10),
        ),
        cluster: raw
            .cluster
            .as_ref()
            .and_then(|c| cluster::validate_cluster(&mut v, c)),
    };

    let defaults = &raw.defaults;
    let base_policy = Policy::default();
    // what every client inherits: `[defaults]`, else the built-in policy
    let mut inherited = |value: &S<String>, k: &str, default: Duration| {
        v.duration(value, None, &format!("defaults.{k}"), default)
    };
    let client_defaults = ClientDefaults {
        ratio: defaults
            .refresh_ratio
            .as_ref()
            .map(|r| (*r.get_ref(), r.span(), "defaults.refresh_ratio".to_string())),
        before: inherited(
            &defaults.refresh_before,
            "refresh_before",
            base_policy.refresh_before,
        ),
        min: inherited(
            &defaults.min_interval,
            "min_interval",
            base_policy.min_interval,
        ),
        timeout: inherited(&defaults.timeout, "timeout", Duration::from_secs(30)),
        binit: inherited(
            &defaults.backoff_initial,
            "backoff_initial",
            base_policy.backoff_initial,
        ),
        bmax: inherited(
            &defaults.backoff_max,
            "backoff_max",
            base_policy.backoff_max,
        ),
        lifetime: inherited(
            &defaults.default_lifetime,
            "default_lifetime",
            Duration::from_secs(3600),
        ),
        max_lifetime: inherited(
            &defaults.max_lifetime,
            "max_lifetime",
            base_policy.max_lifetime,
        ),
        state_dir: daemon.state_dir.clone(),
    };

    if raw.clients.is_empty() && raw.unreadable_clients == 0 {
        v.error(
            None,
            "clients",
            "no client is configured; add a [clients.NAME] table",
        );
    }

    let mut clients = Vec::new();
    let mut output_paths = taken;
    for (name, c) in &raw.clients {
        let ck = format!("clients.{}", name.get_ref());
        if !valid_client_name(name.get_ref()) {
            v.error(
                name.span(),
                &ck,
                "client names may use only letters, digits, `_` and `-`",
            );
        }
        let plan = validate_client(&mut v, name.get_ref(), &ck, c, &client_defaults);
        if let Some(plan) = plan {
            for (i, out) in plan.outputs.iter().enumerate() {
                if let Some(first) = output_paths.get(&out.identity) {
                    let raw_out = c.outputs.as_ref().and_then(|o| o.get_ref().get(i));
                    let span = raw_out
                        .and_then(|o| {
                            o.get_ref()
                                .path
                                .as_ref()
                                .or(o.get_ref().name.as_ref())
                                .map(|p| p.span())
                        })
                        .or(raw_out.map(|o| o.span()))
                        .unwrap_or_default();
                    let what = match &out.kind {
                        OutputKindPlan::File { .. } => "path",
                        OutputKindPlan::Vault { .. } => "path",
                        OutputKindPlan::Kubernetes { .. } => "name",
                        OutputKindPlan::Aws { .. } => "secret_id",
                    };
                    let shown = match &out.kind {
                        OutputKindPlan::File { path, .. } => path.display().to_string(),
                        _ => out.identity.clone(),
                    };
                    v.error(
                        span,
                        &format!("{}.{what}", out.key),
                        format!(
                            "{shown} is also written by {first}; two outputs cannot share a {}",
                            if what == "path" { "path" } else { "secret key" }
                        ),
                    );
                } else {
                    output_paths.insert(out.identity.clone(), out.key.clone());
                }
            }
            if plan.outputs.iter().any(|o| matches!(&o.kind, OutputKindPlan::File { path, .. } if path.starts_with(&daemon.state_dir))) {
                v.error(None, &format!("{ck}.outputs"), format!(
                        "an output path lies inside state_dir {}, which tokenkeeper owns",
                        daemon.state_dir.display()
                    ));
            }
            if daemon.cluster.is_some()
                && let Some((_, None)) = &plan.dpop
            {
                v.error(
                    c.dpop.as_ref().map(|d| d.span()),
                    &format!("{ck}.dpop"),
                    "the members of a [cluster] publish one token, bound to one key: set dpop_key_file to the same key file on every member",
                );
            }
            clients.push(plan);
        }
    }

    (Plan { daemon, clients }, v.diagnostics)
}
