//! Validation: from the raw config to a [`Plan`] in one pure pass that
//! reports every error at once. No file is read here; the environment is
//! passed in (for `$CREDENTIALS_DIRECTORY` and friends).

use super::Diagnostic;
use super::presets::Preset;
use super::raw::{
    FormatKind, GrantKind, LayoutKind, LogFormat, OutputType, RawClient, RawConfig, RawMode,
    RawOutput, S,
};
use crate::grant::http::acceptable_scheme;
use crate::grant::{ClientAuth, Encoding, Endpoint, ResponseMapping};
use crate::output::Layout;
use crate::output::hooks::{ExecHook, Hooks, SignalHook, parse_signal};
use crate::output::kubernetes::SERVICE_ACCOUNT;
use crate::output::render::{Format, Template};
use crate::output::vault::VaultAuth;
use crate::schedule::Policy;
use crate::secret::Secret;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use url::Url;

/// Where a value came from in the file, for errors found while building.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
    Env(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum GrantPlan {
    ClientCredentials,
    Password {
        username: String,
        password: Located<SecretSource>,
    },
    RefreshToken {
        initial: Located<SecretSource>,
    },
    Static,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FormatPlan {
    Ready(Format),
    TemplateFile(Located<PathBuf>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputPlan {
    pub key: String,
    /// What the output writes to, to catch two outputs writing the same thing.
    pub identity: String,
    pub kind: OutputKindPlan,
    pub hooks: Hooks,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OutputKindPlan {
    File {
        path: PathBuf,
        format: FormatPlan,
        mode: u32,
        owner: Option<Located<String>>,
        group: Option<Located<String>>,
        layout: Layout,
    },
    Vault {
        address: Url,
        mount: String,
        path: String,
        namespace: Option<String>,
        auth: VaultAuth,
        ca_file: Option<Located<PathBuf>>,
    },
    Aws {
        secret_id: String,
        region: String,
        endpoint: Url,
        ca_file: Option<Located<PathBuf>>,
    },
    Kubernetes {
        api_server: Url,
        /// `None`: the pod's, read from the service account at build.
        namespace: Option<String>,
        name: String,
        key: String,
        format: Format,
        token_file: PathBuf,
        ca_file: Option<Located<PathBuf>>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClientPlan {
    pub name: String,
    pub endpoint: Endpoint,
    pub allow_insecure_http: bool,
    pub token_type: Option<String>,
    pub grant: GrantPlan,
    pub client_id: Option<String>,
    pub client_secret: Option<Located<SecretSource>>,
    pub auth: ClientAuth,
    pub encoding: Encoding,
    pub scope: Option<String>,
    pub scope_param: Cow<'static, str>,
    pub refresh_token_param: Cow<'static, str>,
    pub params: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub response: ResponseMapping,
    pub timeout: Duration,
    pub ca_file: Option<Located<PathBuf>>,
    pub default_lifetime: Duration,
    pub policy: Policy,
    pub outputs: Vec<OutputPlan>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DaemonPlan {
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    pub listen: Option<SocketAddr>,
    pub ready_timeout: Duration,
    pub check_outputs: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub daemon: DaemonPlan,
    pub clients: Vec<ClientPlan>,
}

/// Variables that may appear in paths, as `$NAME` or `${NAME}`; systemd sets
/// them for `LoadCredential=`, `RuntimeDirectory=` and `StateDirectory=`.
pub const PATH_VARIABLES: &[&str] = &[
    "CREDENTIALS_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY",
];

pub const DEFAULT_STATE_DIR: &str = "/var/lib/tokenkeeper";

struct Validator<'a> {
    diagnostics: Vec<Diagnostic>,
    env: &'a dyn Fn(&str) -> Option<String>,
    base: &'a Path,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            span: Some(span),
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

/// Validates `raw`. `base` is the config file's directory; `env` looks up
/// environment variables. Returns the plan of every client that validated
/// (so that building can still report its problems) and every error found;
/// the config is valid only when the list is empty.
pub fn validate(
    raw: &RawConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
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
    };

    let defaults = &raw.defaults;
    let base_policy = Policy::default();
    let d_ratio = defaults
        .refresh_ratio
        .as_ref()
        .map(|r| (*r.get_ref(), r.span(), "defaults.refresh_ratio".to_string()));
    let d_before = v.duration(
        &defaults.refresh_before,
        None,
        "defaults.refresh_before",
        base_policy.refresh_before,
    );
    let d_min = v.duration(
        &defaults.min_interval,
        None,
        "defaults.min_interval",
        base_policy.min_interval,
    );
    let d_timeout = v.duration(
        &defaults.timeout,
        None,
        "defaults.timeout",
        Duration::from_secs(30),
    );
    let d_binit = v.duration(
        &defaults.backoff_initial,
        None,
        "defaults.backoff_initial",
        base_policy.backoff_initial,
    );
    let d_bmax = v.duration(
        &defaults.backoff_max,
        None,
        "defaults.backoff_max",
        base_policy.backoff_max,
    );
    let d_lifetime = v.duration(
        &defaults.default_lifetime,
        None,
        "defaults.default_lifetime",
        Duration::from_secs(3600),
    );
    let d_max_lifetime = v.duration(
        &defaults.max_lifetime,
        None,
        "defaults.max_lifetime",
        base_policy.max_lifetime,
    );

    if raw.clients.is_empty() && raw.unreadable_clients == 0 {
        v.diagnostics.push(Diagnostic {
            span: None,
            key: "clients".into(),
            message: "no client is configured; add a [clients.NAME] table".into(),
        });
    }

    let mut clients = Vec::new();
    let mut output_paths: HashMap<String, String> = HashMap::new();
    for (name, c) in &raw.clients {
        let ck = format!("clients.{}", name.get_ref());
        if !valid_client_name(name.get_ref()) {
            v.error(
                name.span(),
                &ck,
                "client names may use only letters, digits, `_` and `-`",
            );
        }
        let plan = validate_client(
            &mut v,
            name.get_ref(),
            &ck,
            c,
            ClientDefaults {
                ratio: d_ratio.clone(),
                before: d_before,
                min: d_min,
                timeout: d_timeout,
                binit: d_binit,
                bmax: d_bmax,
                lifetime: d_lifetime,
                max_lifetime: d_max_lifetime,
            },
        );
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
                v.diagnostics.push(Diagnostic {
                    span: None,
                    key: format!("{ck}.outputs"),
                    message: format!(
                        "an output path lies inside state_dir {}, which tokenkeeper owns",
                        daemon.state_dir.display()
                    ),
                });
            }
            clients.push(plan);
        }
    }

    (Plan { daemon, clients }, v.diagnostics)
}

struct ClientDefaults {
    ratio: Option<(f64, Range<usize>, String)>,
    before: Duration,
    min: Duration,
    timeout: Duration,
    binit: Duration,
    bmax: Duration,
    lifetime: Duration,
    max_lifetime: Duration,
}

fn validate_client(
    v: &mut Validator<'_>,
    name: &str,
    ck: &str,
    c: &RawClient,
    d: ClientDefaults,
) -> Option<ClientPlan> {
    let key = |k: &str| format!("{ck}.{k}");

    let preset = c.preset.as_ref().map(|p| *p.get_ref());
    let grant_kind = c
        .grant_type
        .as_ref()
        .map(|g| *g.get_ref())
        .or(preset.map(Preset::default_grant))
        .unwrap_or(GrantKind::ClientCredentials);
    let pd = preset.map(|p| p.defaults(grant_kind)).unwrap_or_default();
    // "is required" messages name the preset's reason when there is one
    let required = |k: &str, generic: String| match preset.and_then(|p| p.explain(grant_kind, k)) {
        Some(why) => format!("is required: {why}"),
        None => generic,
    };
    let grant_span = c
        .grant_type
        .as_ref()
        .map(|g| g.span())
        .or(c.preset.as_ref().map(|p| p.span()));

    let allow_http = c.allow_insecure_http.as_ref().is_some_and(|a| *a.get_ref());
    let check_url = |v: &mut Validator<'_>,
                     value: &str,
                     span: Option<Range<usize>>,
                     k: &str|
     -> Option<Url> {
        let complain = |v: &mut Validator<'_>, message: String| {
            v.diagnostics.push(Diagnostic {
                span: span.clone(),
                key: key(k),
                message,
            });
        };
        match Url::parse(value) {
            Ok(url) if acceptable_scheme(&url, allow_http) => Some(url),
            Ok(url) if url.scheme() == "http" => {
                complain(v, "plain http:// would send credentials in the clear; use https://, or set allow_insecure_http = true (loopback hosts are always allowed)".into());
                None
            }
            Ok(url) => {
                complain(
                    v,
                    format!("scheme {:?} is not supported; use https://", url.scheme()),
                );
                None
            }
            Err(e) => {
                complain(v, format!("not a URL: {e}"));
                None
            }
        }
    };
    let endpoint = if grant_kind == GrantKind::Static {
        for (field, k) in [(&c.token_url, "token_url"), (&c.issuer, "issuer")] {
            if let Some(f) = field {
                v.error(
                    f.span(),
                    &key(k),
                    "a static token is read from token_file; it has no endpoint",
                );
            }
        }
        match &c.token_file {
            Some(f) => v.path(f, &key("token_file")).map(Endpoint::StaticFile),
            None => {
                v.diagnostics.push(Diagnostic {
                    span: grant_span.clone(),
                    key: key("token_file"),
                    message: "is required with grant_type = \"static\" (the file holding the key)"
                        .into(),
                });
                None
            }
        }
    } else {
        if let Some(f) = &c.token_file {
            v.error(
                f.span(),
                &key("token_file"),
                "applies only to grant_type = \"static\"",
            );
        }
        match (&c.token_url, &c.issuer) {
            (Some(_), Some(i)) => {
                v.error(
                    i.span(),
                    &key("issuer"),
                    "set only one of token_url, issuer",
                );
                None
            }
            (Some(u), None) => {
                check_url(v, u.get_ref(), Some(u.span()), "token_url").map(Endpoint::TokenUrl)
            }
            (None, Some(i)) => {
                check_url(v, i.get_ref(), Some(i.span()), "issuer").map(Endpoint::Issuer)
            }
            (None, None) => match pd.token_url {
                Some(default) => check_url(v, default, None, "token_url").map(Endpoint::TokenUrl),
                None => {
                    let message = required("token_url", "token_url (or issuer) is required".into());
                    v.diagnostics.push(Diagnostic {
                        span: c.preset.as_ref().map(|p| p.span()),
                        key: key("token_url"),
                        message,
                    });
                    None
                }
            },
        }
    };

    let auth = c
        .auth
        .as_ref()
        .map(|a| *a.get_ref())
        .or(pd.auth)
        .unwrap_or(ClientAuth::Body);
    let encoding = c
        .encoding
        .as_ref()
        .map(|e| *e.get_ref())
        .or(pd.encoding)
        .unwrap_or(Encoding::Form);
    let client_secret = v.secret_source(
        &c.client_secret_file,
        &c.client_secret_env,
        &c.client_secret,
        "client_secret",
        ck,
    );
    let client_id = c
        .client_id
        .as_ref()
        .map(|s| s.get_ref().clone())
        .or(pd.client_id.map(str::to_string));
    match (auth, grant_kind) {
        (_, GrantKind::Static) => {}
        (ClientAuth::Body | ClientAuth::Basic, _) => {
            let auth_name = if auth == ClientAuth::Basic {
                "basic"
            } else {
                "body"
            };
            if client_id.is_none() {
                let message = required(
                    "client_id",
                    format!("is required with auth = \"{auth_name}\""),
                );
                v.diagnostics.push(Diagnostic {
                    span: c.auth.as_ref().map(|a| a.span()).or(grant_span.clone()),
                    key: key("client_id"),
                    message,
                });
            }
            if c.client_secret_file.is_none()
                && c.client_secret_env.is_none()
                && c.client_secret.is_none()
            {
                let message = required("client_secret", "one of client_secret_file, client_secret_env or client_secret is required (or auth = \"none\" for a public client)".into());
                v.diagnostics.push(Diagnostic {
                    span: c
                        .client_id
                        .as_ref()
                        .map(|s| s.span())
                        .or(grant_span.clone()),
                    key: key("client_secret"),
                    message,
                });
            }
        }
        (ClientAuth::None, _) => {
            if let Some(s) = &client_secret {
                v.error(s.span.clone(), &s.key, "auth = \"none\" never sends a client secret; remove it or choose auth = \"body\" or \"basic\"");
            }
        }
    }

    let password = v.secret_source(
        &c.password_file,
        &c.password_env,
        &c.password,
        "password",
        ck,
    );
    let grant = match grant_kind {
        GrantKind::ClientCredentials => Some(GrantPlan::ClientCredentials),
        GrantKind::Static => Some(GrantPlan::Static),
        GrantKind::Password => match (&c.username, password.clone()) {
            (Some(u), Some(p)) => Some(GrantPlan::Password {
                username: u.get_ref().clone(),
                password: p,
            }),
            (u, p) => {
                if u.is_none() {
                    let message = required(
                        "username",
                        "is required with grant_type = \"password\"".into(),
                    );
                    v.diagnostics.push(Diagnostic {
                        span: grant_span.clone(),
                        key: key("username"),
                        message,
                    });
                }
                if p.is_none()
                    && c.password_file.is_none()
                    && c.password_env.is_none()
                    && c.password.is_none()
                {
                    let message = required("password", "one of password_file, password_env or password is required with grant_type = \"password\"".into());
                    v.diagnostics.push(Diagnostic {
                        span: grant_span.clone(),
                        key: key("password"),
                        message,
                    });
                }
                None
            }
        },
        GrantKind::RefreshToken => {
            match &c.refresh_token_file {
                Some(f) => v
                    .path(f, &key("refresh_token_file"))
                    .map(|p| GrantPlan::RefreshToken {
                        initial: Located {
                            value: SecretSource::File(p),
                            span: f.span(),
                            key: key("refresh_token_file"),
                        },
                    }),
                None => {
                    let message = required("refresh_token_file", "is required with grant_type = \"refresh_token\" (the initial refresh token)".into());
                    v.diagnostics.push(Diagnostic {
                        span: grant_span.clone(),
                        key: key("refresh_token_file"),
                        message,
                    });
                    None
                }
            }
        }
    };
    if grant_kind != GrantKind::Password {
        for (field, k) in [
            (&c.username, "username"),
            (&c.password_file, "password_file"),
            (&c.password_env, "password_env"),
            (&c.password, "password"),
        ] {
            if let Some(f) = field {
                v.error(
                    f.span(),
                    &key(k),
                    "applies only to grant_type = \"password\"",
                );
            }
        }
    }
    if grant_kind != GrantKind::RefreshToken {
        if let Some(f) = &c.refresh_token_file {
            v.error(
                f.span(),
                &key("refresh_token_file"),
                "applies only to grant_type = \"refresh_token\"",
            );
        }
    }
    if pd.scope_required && c.scope.is_none() {
        let message = required("scope", "is required".into());
        v.diagnostics.push(Diagnostic {
            span: c.preset.as_ref().map(|p| p.span()),
            key: key("scope"),
            message,
        });
    }
    let token_type = match &c.token_type {
        Some(t) if crate::grant::response::is_token68(t.get_ref()) => Some(t.get_ref().clone()),
        Some(t) => {
            v.error(
                t.span(),
                &key("token_type"),
                format!(
                    "{:?} is not an HTTP authorization scheme (letters, digits, -._~+/)",
                    t.get_ref()
                ),
            );
            None
        }
        None => None,
    };

    let nonempty = |v: &mut Validator<'_>,
                    s: &S<String>,
                    k: &str,
                    default: &'static str|
     -> Cow<'static, str> {
        match s {
            Some(x) if x.get_ref().trim().is_empty() => {
                v.error(x.span(), &key(k), "must not be empty");
                default.into()
            }
            Some(x) => x.get_ref().clone().into(),
            None => default.into(),
        }
    };
    let scope_param = nonempty(
        v,
        &c.scope_param,
        "scope_param",
        pd.scope_param.unwrap_or("scope"),
    );
    let refresh_token_param = nonempty(
        v,
        &c.refresh_token_param,
        "refresh_token_param",
        pd.refresh_token_param.unwrap_or("refresh_token"),
    );
    let params = c
        .params
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_default();
    if let Some(p) = &c.params {
        if p.get_ref().keys().any(|k| k.is_empty()) {
            v.error(
                p.span(),
                &key("params"),
                "parameter names must not be empty",
            );
        }
    }
    let mut headers: BTreeMap<String, String> = pd
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(h) = &c.headers {
        for (name, value) in h.get_ref() {
            headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(h) = &c.headers {
        for (n, val) in h.get_ref() {
            if !header_name_ok(n) {
                v.error(
                    h.span(),
                    &key("headers"),
                    format!("{n:?} is not a valid HTTP header name"),
                );
            } else if !header_value_ok(val) {
                v.error(h.span(), &key("headers"), format!("the value of {n} is not a valid HTTP header value (no line breaks or control characters)"));
            }
        }
    }

    let mut response = ResponseMapping::default();
    for (field, pointer) in pd.response {
        let target = match *field {
            "access_token" => &mut response.access_token,
            "expires_in" => &mut response.expires_in,
            "expires_at" => &mut response.expires_at,
            "refresh_token" => &mut response.refresh_token,
            _ => &mut response.token_type,
        };
        *target = Cow::Borrowed(pointer);
    }
    if let Some(r) = &c.response {
        let r = r.get_ref();
        for (field, target, k) in [
            (&r.access_token, &mut response.access_token, "access_token"),
            (&r.expires_in, &mut response.expires_in, "expires_in"),
            (&r.expires_at, &mut response.expires_at, "expires_at"),
            (
                &r.refresh_token,
                &mut response.refresh_token,
                "refresh_token",
            ),
            (&r.token_type, &mut response.token_type, "token_type"),
        ] {
            if let Some(p) = field {
                if !p.get_ref().starts_with('/') {
                    v.error(
                        p.span(),
                        &key(&format!("response.{k}")),
                        format!(
                            "{:?} is not a JSON Pointer; write e.g. \"/{}\"",
                            p.get_ref(),
                            p.get_ref().trim_start_matches('/')
                        ),
                    );
                }
                *target = p.get_ref().clone().into();
            }
        }
    }

    let policy_base = Policy::default();
    let refresh_ratio = match (&c.refresh_ratio, &d.ratio) {
        (Some(r), _) => Some((*r.get_ref(), r.span(), key("refresh_ratio"))),
        (None, Some(dr)) => Some(dr.clone()),
        (None, None) => None,
    };
    let refresh_ratio = match refresh_ratio {
        Some((r, span, k)) => {
            if !(r > 0.0 && r < 1.0) {
                v.error(
                    span,
                    &k,
                    format!(
                        "{r} must lie strictly between 0 and 1 (a share of the token's lifetime)"
                    ),
                );
            }
            r
        }
        None => policy_base.refresh_ratio,
    };
    let policy = Policy {
        refresh_ratio,
        refresh_before: v.duration(
            &c.refresh_before,
            Some(d.before),
            &key("refresh_before"),
            d.before,
        ),
        min_interval: v.duration(&c.min_interval, Some(d.min), &key("min_interval"), d.min),
        backoff_initial: v.duration(
            &c.backoff_initial,
            Some(d.binit),
            &key("backoff_initial"),
            d.binit,
        ),
        backoff_max: v.duration(&c.backoff_max, Some(d.bmax), &key("backoff_max"), d.bmax),
        min_valid: v.duration(&c.min_valid, None, &key("min_valid"), Duration::ZERO),
        max_lifetime: v.duration(
            &c.max_lifetime,
            Some(d.max_lifetime),
            &key("max_lifetime"),
            d.max_lifetime,
        ),
    };
    let timeout = v.duration(&c.timeout, Some(d.timeout), &key("timeout"), d.timeout);
    let default_lifetime = v.duration(
        &c.default_lifetime,
        Some(d.lifetime),
        &key("default_lifetime"),
        d.lifetime,
    );
    let span_of = |own: &S<String>| own.as_ref().map(|s| s.span());
    if !policy.min_valid.is_zero() && policy.min_valid >= default_lifetime {
        v.diagnostics.push(Diagnostic {
            span: span_of(&c.min_valid),
            key: key("min_valid"),
            message: format!(
                "{} is not shorter than default_lifetime {}: no token of that lifetime could ever be written",
                humantime::format_duration(policy.min_valid),
                humantime::format_duration(default_lifetime)
            ),
        });
    }
    if policy.min_interval.is_zero() {
        v.diagnostics.push(Diagnostic { span: span_of(&c.min_interval), key: key("min_interval"), message: "must be more than zero: it is what keeps a short-lived token from turning into a tight loop".into() });
    }
    if policy.backoff_initial.is_zero() {
        v.diagnostics.push(Diagnostic {
            span: span_of(&c.backoff_initial),
            key: key("backoff_initial"),
            message: "must be more than zero".into(),
        });
    }
    if policy.backoff_max < policy.backoff_initial {
        v.diagnostics.push(Diagnostic {
            span: span_of(&c.backoff_max),
            key: key("backoff_max"),
            message: format!(
                "{} is less than backoff_initial {}",
                humantime::format_duration(policy.backoff_max),
                humantime::format_duration(policy.backoff_initial)
            ),
        });
    }
    if timeout.is_zero() {
        v.diagnostics.push(Diagnostic {
            span: span_of(&c.timeout),
            key: key("timeout"),
            message: "must be more than zero".into(),
        });
    }
    if default_lifetime.is_zero() {
        v.diagnostics.push(Diagnostic {
            span: span_of(&c.default_lifetime),
            key: key("default_lifetime"),
            message: "must be more than zero".into(),
        });
    } else if policy.min_interval >= default_lifetime {
        v.diagnostics.push(Diagnostic {
            span: span_of(&c.min_interval).or(span_of(&c.default_lifetime)),
            key: key("min_interval"),
            message: format!(
                "{} is not shorter than default_lifetime {}: a token of that lifetime would always expire before its refresh",
                humantime::format_duration(policy.min_interval),
                humantime::format_duration(default_lifetime)
            ),
        });
    }

    let ca_file = c.ca_file.as_ref().and_then(|f| {
        v.path(f, &key("ca_file")).map(|p| Located {
            value: p,
            span: f.span(),
            key: key("ca_file"),
        })
    });

    let mut outputs = Vec::new();
    match &c.outputs {
        Some(list) if !list.get_ref().is_empty() => {
            for (i, o) in list.get_ref().iter().enumerate() {
                if let Some(plan) = validate_output(v, &format!("{ck}.outputs[{i}]"), o) {
                    outputs.push(plan);
                }
            }
        }
        Some(list) => v.error(
            list.span(),
            &key("outputs"),
            "at least one output is required",
        ),
        None => v.diagnostics.push(Diagnostic {
            span: None,
            key: key("outputs"),
            message: "at least one [[clients.NAME.outputs]] table is required".into(),
        }),
    }

    // (a client with errors still has a plan, built from what is valid and
    // defaults for the rest: `build` then checks what it can — groups,
    // secret files — so every error shows at once. Such a plan never runs:
    // the diagnostics refuse the config.)
    Some(ClientPlan {
        name: name.to_string(),
        endpoint: endpoint?,
        allow_insecure_http: allow_http,
        token_type,
        grant: grant?,
        client_id,
        client_secret,
        auth,
        encoding,
        scope: c.scope.as_ref().map(|s| s.get_ref().clone()),
        scope_param,
        refresh_token_param,
        params,
        headers,
        response,
        timeout,
        ca_file,
        default_lifetime,
        policy,
        outputs,
    })
}

fn validate_output(v: &mut Validator<'_>, ok: &str, o: &Spanned<RawOutput>) -> Option<OutputPlan> {
    let span = o.span();
    let o = o.get_ref();
    let key = |k: &str| format!("{ok}.{k}");
    let kind = *o.kind.get_ref();
    let type_name = match kind {
        OutputType::File => "file",
        OutputType::VaultKv => "vault_kv",
        OutputType::KubernetesSecret => "kubernetes_secret",
        OutputType::AwsSecretsManager => "aws_secrets_manager",
    };
    // keys that belong to other output types
    let foreign: Vec<(Option<Range<usize>>, &str)> = {
        let f = |x: &S<String>| x.as_ref().map(|s| s.span());
        let mut list = Vec::new();
        if kind != OutputType::File {
            list.extend([
                (o.mode.as_ref().map(|s| s.span()), "mode"),
                (f(&o.owner), "owner"),
                (f(&o.group), "group"),
                (o.extra_headers.as_ref().map(|s| s.span()), "extra_headers"),
                (f(&o.template), "template"),
                (f(&o.template_file), "template_file"),
                (o.layout.as_ref().map(|s| s.span()), "layout"),
            ]);
        }
        if kind != OutputType::VaultKv {
            list.extend([
                (f(&o.address), "address"),
                (f(&o.mount), "mount"),
                (f(&o.token_env), "token_env"),
                (f(&o.approle_mount), "approle_mount"),
                (f(&o.role_id_file), "role_id_file"),
                (f(&o.secret_id_file), "secret_id_file"),
            ]);
        }
        if kind != OutputType::KubernetesSecret {
            list.extend([
                (f(&o.name), "name"),
                (f(&o.key), "key"),
                (f(&o.api_server), "api_server"),
            ]);
        }
        if kind == OutputType::File {
            list.extend([
                (f(&o.namespace), "namespace"),
                (f(&o.ca_file), "ca_file"),
                (f(&o.token_file), "token_file"),
            ]);
        }
        if kind == OutputType::KubernetesSecret {
            list.push((f(&o.path), "path"));
        }
        list
    };
    for (s, k) in foreign {
        if let Some(s) = s {
            v.error(
                s,
                &key(k),
                format!("does not apply to type = \"{type_name}\""),
            );
        }
    }

    let format_kind = o
        .format
        .as_ref()
        .map(|f| *f.get_ref())
        .unwrap_or(FormatKind::Raw);
    if format_kind != FormatKind::Header {
        if let Some(h) = &o.extra_headers {
            v.error(
                h.span(),
                &key("extra_headers"),
                "applies only to format = \"header\"",
            );
        }
    }
    if format_kind != FormatKind::Template {
        for (f, k) in [
            (&o.template, "template"),
            (&o.template_file, "template_file"),
        ] {
            if let Some(f) = f {
                v.error(f.span(), &key(k), "applies only to format = \"template\"");
            }
        }
    }
    let mut extra = Vec::new();
    if let Some(h) = &o.extra_headers {
        for (n, val) in h.get_ref() {
            if !header_name_ok(n) {
                v.error(
                    h.span(),
                    &key("extra_headers"),
                    format!("{n:?} is not a valid HTTP header name"),
                );
            } else if !header_value_ok(val) || val.contains(['\n', '\r']) {
                v.error(
                    h.span(),
                    &key("extra_headers"),
                    format!("the value of {n} is not a valid HTTP header value"),
                );
            } else if n.eq_ignore_ascii_case("authorization") {
                v.error(
                    h.span(),
                    &key("extra_headers"),
                    "Authorization is written by tokenkeeper itself",
                );
            }
            extra.push((n.clone(), val.clone()));
        }
    }
    let format = match format_kind {
        FormatKind::Raw => Some(FormatPlan::Ready(Format::Raw)),
        FormatKind::Json => Some(FormatPlan::Ready(Format::Json)),
        FormatKind::Env => Some(FormatPlan::Ready(Format::Env)),
        FormatKind::Header => Some(FormatPlan::Ready(Format::Header {
            extra_headers: extra,
        })),
        FormatKind::Template => match (&o.template, &o.template_file) {
            (Some(t), None) => match Template::parse(t.get_ref()) {
                Ok(t) => Some(FormatPlan::Ready(Format::Template(t))),
                Err(e) => {
                    v.error(t.span(), &key("template"), e);
                    None
                }
            },
            (None, Some(f)) if kind == OutputType::File => {
                v.path(f, &key("template_file")).map(|p| {
                    FormatPlan::TemplateFile(Located {
                        value: p,
                        span: f.span(),
                        key: key("template_file"),
                    })
                })
            }
            (None, Some(f)) => {
                v.error(
                    f.span(),
                    &key("template_file"),
                    "use an inline template with this output type",
                );
                None
            }
            (Some(_), Some(f)) => {
                v.error(
                    f.span(),
                    &key("template_file"),
                    "set only one of template, template_file",
                );
                None
            }
            (None, None) => {
                v.error(
                    span.clone(),
                    &key("template"),
                    "format = \"template\" needs template or template_file",
                );
                None
            }
        },
    };

    let hooks = validate_hooks(v, ok, o);
    let required = |v: &mut Validator<'_>, value: &S<String>, k: &str| -> Option<String> {
        match value {
            Some(x) if !x.get_ref().trim().is_empty() => Some(x.get_ref().trim().to_string()),
            Some(x) => {
                v.error(x.span(), &key(k), "must not be empty");
                None
            }
            None => {
                v.error(
                    span.clone(),
                    &key(k),
                    format!("is required for type = \"{type_name}\""),
                );
                None
            }
        }
    };
    let ca_file = |v: &mut Validator<'_>| {
        o.ca_file.as_ref().and_then(|f| {
            v.path(f, &key("ca_file")).map(|p| Located {
                value: p,
                span: f.span(),
                key: key("ca_file"),
            })
        })
    };

    let (identity, plan_kind) = match kind {
        OutputType::File => {
            let path =
                required(v, &o.path, "path").and_then(|_| v.path(o.path.as_ref()?, &key("path")));
            let mode = match &o.mode {
                Some(m) => match parse_mode(m.get_ref()) {
                    Ok(bits) => bits,
                    Err(e) => {
                        v.error(m.span(), &key("mode"), e);
                        0o600
                    }
                },
                None => 0o600,
            };
            let layout = match o.layout.as_ref().map(|l| *l.get_ref()) {
                Some(LayoutKind::AtomicDir) => {
                    if !matches!(format_kind, FormatKind::Raw | FormatKind::Header) {
                        v.error(o.format.as_ref().map(|f| f.span()).unwrap_or(span.clone()), &key("format"), "layout = \"atomic_dir\" writes every format as its own file (token, expires_at, header, token.json, token.env); leave format out, or \"header\" for extra_headers");
                    }
                    Layout::AtomicDir
                }
                _ => Layout::File,
            };
            let located = |s: &S<String>, k: &str| {
                s.as_ref().map(|s| Located {
                    value: s.get_ref().clone(),
                    span: s.span(),
                    key: key(k),
                })
            };
            let path = path?;
            (
                format!("file:{}", path.display()),
                OutputKindPlan::File {
                    path,
                    format: format?,
                    mode,
                    owner: located(&o.owner, "owner"),
                    group: located(&o.group, "group"),
                    layout,
                },
            )
        }
        OutputType::VaultKv => {
            let address_text = match &o.address {
                Some(a) => Some((a.get_ref().clone(), Some(a.span()))),
                None => (v.env)("VAULT_ADDR")
                    .filter(|a| !a.is_empty())
                    .map(|a| (a, None)),
            };
            let address = match address_text {
                Some((text, at)) => {
                    match Url::parse(&text) {
                        Ok(u) if acceptable_scheme(&u, false) => Some(u),
                        Ok(_) => {
                            v.diagnostics.push(Diagnostic { span: at, key: key("address"), message: format!("{text:?}: use https:// (plain http:// only to a loopback address)") });
                            None
                        }
                        Err(e) => {
                            v.diagnostics.push(Diagnostic {
                                span: at,
                                key: key("address"),
                                message: format!("{text:?} is not a URL: {e}"),
                            });
                            None
                        }
                    }
                }
                None => {
                    v.error(
                        span.clone(),
                        &key("address"),
                        "is required for type = \"vault_kv\" (or set VAULT_ADDR)",
                    );
                    None
                }
            };
            let mount = o
                .mount
                .as_ref()
                .map(|m| m.get_ref().trim_matches('/').to_string())
                .unwrap_or_else(|| "secret".into());
            let path = required(v, &o.path, "path").map(|p| p.trim_matches('/').to_string());
            let auth = match (
                &o.token_file,
                &o.token_env,
                &o.role_id_file,
                &o.secret_id_file,
            ) {
                (None, None, Some(r), Some(s)) => {
                    let role = v.path(r, &key("role_id_file"));
                    let secret = v.path(s, &key("secret_id_file"));
                    let mount = o
                        .approle_mount
                        .as_ref()
                        .map(|m| m.get_ref().clone())
                        .unwrap_or_else(|| "approle".into());
                    role.zip(secret)
                        .map(|(role_id_file, secret_id_file)| VaultAuth::AppRole {
                            mount,
                            role_id_file,
                            secret_id_file,
                        })
                }
                (Some(f), None, None, None) => {
                    v.path(f, &key("token_file")).map(VaultAuth::TokenFile)
                }
                (None, Some(e), None, None) => Some(VaultAuth::TokenEnv(e.get_ref().clone())),
                (None, None, None, None) => Some(VaultAuth::TokenEnv("VAULT_TOKEN".into())),
                _ => {
                    v.error(span.clone(), &key("token_file"), "authenticate with one of token_file, token_env, or role_id_file + secret_id_file");
                    None
                }
            };
            let ca = ca_file(v);
            let namespace = o.namespace.as_ref().map(|n| n.get_ref().clone());
            let (address, path, auth) = (address?, path?, auth?);
            (
                format!("vault:{}{}/{}", address, mount, path),
                OutputKindPlan::Vault {
                    address,
                    mount,
                    path,
                    namespace,
                    auth,
                    ca_file: ca,
                },
            )
        }
        OutputType::AwsSecretsManager => {
            let secret_id = required(v, &o.secret_id, "secret_id");
            let region = match &o.region {
                Some(r) => Some(r.get_ref().clone()),
                None => (v.env)("AWS_REGION")
                    .or((v.env)("AWS_DEFAULT_REGION"))
                    .filter(|r| !r.is_empty()),
            };
            if region.is_none() {
                v.error(
                    span.clone(),
                    &key("region"),
                    "is required for type = \"aws_secrets_manager\" (or set AWS_REGION)",
                );
            }
            let endpoint = match (&o.endpoint_url, &region) {
                (Some(e), _) => match Url::parse(e.get_ref()) {
                    Ok(u) if acceptable_scheme(&u, false) => Some(u),
                    _ => {
                        v.error(e.span(), &key("endpoint_url"), format!("{:?} is not an https:// URL (plain http:// only to a loopback address)", e.get_ref()));
                        None
                    }
                },
                (None, Some(r)) => {
                    Url::parse(&format!("https://secretsmanager.{r}.amazonaws.com/")).ok()
                }
                (None, None) => None,
            };
            let ca = ca_file(v);
            let (secret_id, region, endpoint) = (secret_id?, region?, endpoint?);
            (
                format!("aws:{endpoint}{secret_id}"),
                OutputKindPlan::Aws {
                    secret_id,
                    region,
                    endpoint,
                    ca_file: ca,
                },
            )
        }
        OutputType::KubernetesSecret => {
            let api_server = match &o.api_server {
                Some(a) => match Url::parse(a.get_ref()) {
                    Ok(u) if acceptable_scheme(&u, false) => Some(u),
                    _ => {
                        v.error(
                            a.span(),
                            &key("api_server"),
                            format!("{:?} is not an https:// URL", a.get_ref()),
                        );
                        None
                    }
                },
                None => match (
                    (v.env)("KUBERNETES_SERVICE_HOST"),
                    (v.env)("KUBERNETES_SERVICE_PORT"),
                ) {
                    (Some(host), port) => {
                        let host = if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host
                        };
                        Url::parse(&format!(
                            "https://{host}:{}",
                            port.unwrap_or_else(|| "443".into())
                        ))
                        .ok()
                    }
                    _ => {
                        v.error(
                            span.clone(),
                            &key("api_server"),
                            "is required outside a pod (KUBERNETES_SERVICE_HOST is not set)",
                        );
                        None
                    }
                },
            };
            let name = required(v, &o.name, "name");
            let key_name = o
                .key
                .as_ref()
                .map(|k| k.get_ref().clone())
                .unwrap_or_else(|| "token".into());
            if !key_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                || key_name.is_empty()
            {
                v.error(
                    o.key.as_ref().map(|k| k.span()).unwrap_or(span.clone()),
                    &key("key"),
                    format!("{key_name:?} is not a valid Secret key (letters, digits, -, _, .)"),
                );
            }
            let token_file = match &o.token_file {
                Some(f) => v.path(f, &key("token_file")),
                None => Some(PathBuf::from(SERVICE_ACCOUNT).join("token")),
            };
            let ca = ca_file(v).or_else(|| {
                o.api_server.is_none().then(|| Located {
                    value: PathBuf::from(SERVICE_ACCOUNT).join("ca.crt"),
                    span: span.clone(),
                    key: key("ca_file"),
                })
            });
            let namespace = o.namespace.as_ref().map(|n| n.get_ref().clone());
            let format = match format? {
                FormatPlan::Ready(f) => f,
                FormatPlan::TemplateFile(_) => return None,
            };
            let (api_server, name, token_file) = (api_server?, name?, token_file?);
            (
                format!(
                    "k8s:{}/{}/{}/{}",
                    api_server,
                    namespace.clone().unwrap_or_default(),
                    name,
                    key_name
                ),
                OutputKindPlan::Kubernetes {
                    api_server,
                    namespace,
                    name,
                    key: key_name,
                    format,
                    token_file,
                    ca_file: ca,
                },
            )
        }
    };
    // (with errors, a plan all the same: see validate_client)
    Some(OutputPlan {
        key: ok.to_string(),
        identity,
        kind: plan_kind,
        hooks: hooks?,
    })
}

fn validate_hooks(v: &mut Validator<'_>, ok: &str, o: &RawOutput) -> Option<Hooks> {
    let key = |k: &str| format!("{ok}.{k}");
    let before = v.diagnostics.len();
    let exec = match &o.exec {
        Some(argv) if argv.get_ref().is_empty() || argv.get_ref()[0].is_empty() => {
            v.error(
                argv.span(),
                &key("exec"),
                "must name a program: exec = [\"/usr/bin/systemctl\", \"reload\", \"app\"]",
            );
            None
        }
        Some(argv) => Some(ExecHook {
            argv: argv.get_ref().clone(),
            timeout: v.duration(
                &o.exec_timeout,
                None,
                &key("exec_timeout"),
                Duration::from_secs(10),
            ),
            pass_token: o.exec_pass_token.as_ref().is_some_and(|p| *p.get_ref()),
        }),
        None => {
            for (f, k) in [
                (o.exec_timeout.as_ref().map(|s| s.span()), "exec_timeout"),
                (
                    o.exec_pass_token.as_ref().map(|s| s.span()),
                    "exec_pass_token",
                ),
            ] {
                if let Some(f) = f {
                    v.error(f, &key(k), "applies only with exec");
                }
            }
            None
        }
    };
    let signal = match (&o.signal, &o.pid_file) {
        (Some(s), Some(p)) => match parse_signal(s.get_ref()) {
            Some(signal) => v
                .path(p, &key("pid_file"))
                .map(|pid_file| SignalHook { signal, pid_file }),
            None => {
                v.error(
                    s.span(),
                    &key("signal"),
                    format!(
                        "{:?} is not a signal name; write e.g. \"HUP\" or \"USR1\"",
                        s.get_ref()
                    ),
                );
                None
            }
        },
        (Some(s), None) => {
            v.error(
                s.span(),
                &key("pid_file"),
                "is required with signal (the file holding the consumer's pid)",
            );
            None
        }
        (None, Some(p)) => {
            v.error(p.span(), &key("pid_file"), "applies only with signal");
            None
        }
        (None, None) => None,
    };
    (v.diagnostics.len() == before).then_some(Hooks { exec, signal })
}
