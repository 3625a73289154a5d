//! One `[[clients.NAME.outputs]]` table, by kind.

use crate::config::raw::{FormatKind, LayoutKind, OutputType, RawOutput, S};
use crate::grant::http::acceptable_scheme;
use crate::kube::SERVICE_ACCOUNT;
use crate::output::Layout;
use crate::output::render::{Format, Template};
use crate::output::vault::VaultAuth;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;
use url::Url;

use super::*;

pub(super) fn validate_output(
    v: &mut Validator<'_>,
    ok: &str,
    o: &Spanned<RawOutput>,
    dpop: Option<&std::sync::Arc<crate::grant::dpop::DpopKey>>,
) -> Option<OutputPlan> {
    let ox = Ox::new(ok, o, dpop);
    check_foreign_keys(v, &ox);
    let format = check_format(v, &ox);
    let hooks = validate_hooks(v, ok, ox.o);
    let (identity, plan_kind) = match ox.kind {
        OutputType::File => check_file(v, &ox, format)?,
        OutputType::VaultKv => check_vault(v, &ox)?,
        OutputType::AwsSecretsManager => check_aws(v, &ox)?,
        OutputType::KubernetesSecret => check_kubernetes(v, &ox, format)?,
    };
    // (with errors, a plan all the same: see validate_client)
    Some(OutputPlan {
        key: ok.to_string(),
        identity,
        kind: plan_kind,
        hooks: hooks?,
    })
}

/// What every check of one output's table knows.
struct Ox<'o> {
    /// `clients.NAME.outputs[i]`
    ok: &'o str,
    o: &'o RawOutput,
    /// The whole table.
    span: Range<usize>,
    kind: OutputType,
    type_name: &'static str,
    format_kind: FormatKind,
    /// The client's DPoP proof key (`format = "dpop"` writes it).
    dpop: Option<&'o std::sync::Arc<crate::grant::dpop::DpopKey>>,
}

/// What a file output at `path` writes to, as [`OutputPlan::identity`]
/// says it.
pub fn file_identity(path: &std::path::Path) -> String {
    format!("file:{}", path.display())
}

/// What an output kind's check makes: the identity (to catch two outputs
/// writing one thing) and the plan.
type KindPlan = (String, OutputKindPlan);

impl<'o> Ox<'o> {
    fn new(
        ok: &'o str,
        o: &'o Spanned<RawOutput>,
        dpop: Option<&'o std::sync::Arc<crate::grant::dpop::DpopKey>>,
    ) -> Ox<'o> {
        let kind = *o.get_ref().kind.get_ref();
        Ox {
            ok,
            span: o.span(),
            o: o.get_ref(),
            kind,
            type_name: match kind {
                OutputType::File => "file",
                OutputType::VaultKv => "vault_kv",
                OutputType::KubernetesSecret => "kubernetes_secret",
                OutputType::AwsSecretsManager => "aws_secrets_manager",
            },
            format_kind: o
                .get_ref()
                .format
                .as_ref()
                .map(|f| *f.get_ref())
                .unwrap_or(FormatKind::Raw),
            dpop,
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.ok)
    }

    /// A required, non-empty value of this output's type.
    fn required(&self, v: &mut Validator<'_>, value: &S<String>, k: &str) -> Option<String> {
        match value {
            Some(x) if !x.get_ref().trim().is_empty() => Some(x.get_ref().trim().to_string()),
            Some(x) => {
                v.error(x.span(), &self.key(k), "must not be empty");
                None
            }
            None => {
                v.error(
                    self.span.clone(),
                    &self.key(k),
                    format!("is required for type = \"{}\"", self.type_name),
                );
                None
            }
        }
    }

    fn ca_file(&self, v: &mut Validator<'_>) -> Option<Located<PathBuf>> {
        self.o.ca_file.as_ref().and_then(|f| {
            v.path(f, &self.key("ca_file")).map(|p| Located {
                value: p,
                span: f.span(),
                key: self.key("ca_file"),
            })
        })
    }
}

/// Keys that belong to other output types.
fn check_foreign_keys(v: &mut Validator<'_>, ox: &Ox<'_>) {
    let (o, kind, type_name) = (ox.o, ox.kind, ox.type_name);
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
                (f(&o.kubeconfig), "kubeconfig"),
                (f(&o.context), "context"),
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
                &ox.key(k),
                format!("does not apply to type = \"{type_name}\""),
            );
        }
    }
}

/// `format` and what goes with it: `extra_headers`, `template`,
/// `template_file`.
fn check_format(v: &mut Validator<'_>, ox: &Ox<'_>) -> Option<FormatPlan> {
    let (o, kind, format_kind) = (ox.o, ox.kind, ox.format_kind);
    if format_kind != FormatKind::Header {
        if let Some(h) = &o.extra_headers {
            v.error(
                h.span(),
                &ox.key("extra_headers"),
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
                v.error(
                    f.span(),
                    &ox.key(k),
                    "applies only to format = \"template\"",
                );
            }
        }
    }
    let mut extra = Vec::new();
    if let Some(h) = &o.extra_headers {
        for (n, val) in h.get_ref() {
            if !header_name_ok(n) {
                v.error(
                    h.span(),
                    &ox.key("extra_headers"),
                    format!("{n:?} is not a valid HTTP header name"),
                );
            } else if !header_value_ok(val) || val.contains(['\n', '\r']) {
                v.error(
                    h.span(),
                    &ox.key("extra_headers"),
                    format!("the value of {n} is not a valid HTTP header value"),
                );
            } else if n.eq_ignore_ascii_case("authorization") {
                v.error(
                    h.span(),
                    &ox.key("extra_headers"),
                    "Authorization is written by tokenkeeper itself",
                );
            }
            extra.push((n.clone(), val.clone()));
        }
    }
    match format_kind {
        FormatKind::Raw => Some(FormatPlan::Ready(Format::Raw)),
        FormatKind::Json => Some(FormatPlan::Ready(Format::Json)),
        FormatKind::Env => Some(FormatPlan::Ready(Format::Env)),
        FormatKind::Dpop => match ox.dpop {
            Some(key) => Some(FormatPlan::Ready(Format::Dpop(key.clone()))),
            None => {
                v.error(
                    o.format.as_ref().map(|f| f.span()).unwrap_or(ox.span.clone()),
                    &ox.key("format"),
                    "needs dpop = true on the client: it writes the token with the DPoP proof key it is bound to",
                );
                None
            }
        },
        FormatKind::Header => Some(FormatPlan::Ready(Format::Header {
            extra_headers: extra,
        })),
        FormatKind::Template => match (&o.template, &o.template_file) {
            (Some(t), None) => match Template::parse(t.get_ref()) {
                Ok(t) => Some(FormatPlan::Ready(Format::Template(t))),
                Err(e) => {
                    v.error(t.span(), &ox.key("template"), e);
                    None
                }
            },
            (None, Some(f)) if kind == OutputType::File => {
                v.path(f, &ox.key("template_file")).map(|p| {
                    FormatPlan::TemplateFile(Located {
                        value: p,
                        span: f.span(),
                        key: ox.key("template_file"),
                    })
                })
            }
            (None, Some(f)) => {
                v.error(
                    f.span(),
                    &ox.key("template_file"),
                    "use an inline template with this output type",
                );
                None
            }
            (Some(_), Some(f)) => {
                v.error(
                    f.span(),
                    &ox.key("template_file"),
                    "set only one of template, template_file",
                );
                None
            }
            (None, None) => {
                v.error(
                    ox.span.clone(),
                    &ox.key("template"),
                    "format = \"template\" needs template or template_file",
                );
                None
            }
        },
    }
}

/// `type = "file"`: a path, its mode, owner and group, and its layout.
fn check_file(v: &mut Validator<'_>, ox: &Ox<'_>, format: Option<FormatPlan>) -> Option<KindPlan> {
    let (o, format_kind) = (ox.o, ox.format_kind);
    let path = ox
        .required(v, &o.path, "path")
        .and_then(|_| v.path(o.path.as_ref()?, &ox.key("path")));
    let mode = match &o.mode {
        Some(m) => match parse_mode(m.get_ref()) {
            Ok(bits) => bits,
            Err(e) => {
                v.error(m.span(), &ox.key("mode"), e);
                0o600
            }
        },
        None => 0o600,
    };
    let layout = match o.layout.as_ref().map(|l| *l.get_ref()) {
        Some(LayoutKind::AtomicDir) => {
            if !matches!(format_kind, FormatKind::Raw | FormatKind::Header) {
                v.error(o.format.as_ref().map(|f| f.span()).unwrap_or(ox.span.clone()), &ox.key("format"), "layout = \"atomic_dir\" writes every format as its own file (token, expires_at, header, token.json, token.env); leave format out, or \"header\" for extra_headers");
            }
            Layout::AtomicDir
        }
        _ => Layout::File,
    };
    let located = |s: &S<String>, k: &str| {
        s.as_ref().map(|s| Located {
            value: s.get_ref().clone(),
            span: s.span(),
            key: ox.key(k),
        })
    };
    let path = path?;
    Some((
        file_identity(&path),
        OutputKindPlan::File {
            path,
            format: format?,
            mode,
            owner: located(&o.owner, "owner"),
            group: located(&o.group, "group"),
            layout,
        },
    ))
}

/// `type = "vault_kv"`: the address, mount and path, and how to log in.
fn check_vault(v: &mut Validator<'_>, ox: &Ox<'_>) -> Option<KindPlan> {
    let o = ox.o;
    let address_text = match &o.address {
        Some(a) => Some((a.get_ref().clone(), Some(a.span()))),
        None => (v.env)("VAULT_ADDR")
            .filter(|a| !a.is_empty())
            .map(|a| (a, None)),
    };
    let address = match address_text {
        Some((text, at)) => match Url::parse(&text) {
            Ok(u) if acceptable_scheme(&u, false) => Some(u),
            Ok(_) => {
                v.error(
                    at,
                    &ox.key("address"),
                    format!("{text:?}: use https:// (plain http:// only to a loopback address)"),
                );
                None
            }
            Err(e) => {
                v.error(
                    at,
                    &ox.key("address"),
                    format!("{text:?} is not a URL: {e}"),
                );
                None
            }
        },
        None => {
            v.error(
                ox.span.clone(),
                &ox.key("address"),
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
    let path = ox
        .required(v, &o.path, "path")
        .map(|p| p.trim_matches('/').to_string());
    let auth = match (
        &o.token_file,
        &o.token_env,
        &o.role_id_file,
        &o.secret_id_file,
    ) {
        (None, None, Some(r), Some(s)) => {
            let role = v.path(r, &ox.key("role_id_file"));
            let secret = v.path(s, &ox.key("secret_id_file"));
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
        (Some(f), None, None, None) => v.path(f, &ox.key("token_file")).map(VaultAuth::TokenFile),
        (None, Some(e), None, None) => Some(VaultAuth::TokenEnv(e.get_ref().clone())),
        (None, None, None, None) => Some(VaultAuth::TokenEnv("VAULT_TOKEN".into())),
        _ => {
            v.error(
                ox.span.clone(),
                &ox.key("token_file"),
                "authenticate with one of token_file, token_env, or role_id_file + secret_id_file",
            );
            None
        }
    };
    let ca = ox.ca_file(v);
    let namespace = o.namespace.as_ref().map(|n| n.get_ref().clone());
    let (address, path, auth) = (address?, path?, auth?);
    Some((
        format!("vault:{}{}/{}", address, mount, path),
        OutputKindPlan::Vault {
            address,
            mount,
            path,
            namespace,
            auth,
            ca_file: ca,
        },
    ))
}

/// `type = "aws_secrets_manager"`: the secret, its region and endpoint.
fn check_aws(v: &mut Validator<'_>, ox: &Ox<'_>) -> Option<KindPlan> {
    let o = ox.o;
    let secret_id = ox.required(v, &o.secret_id, "secret_id");
    let region = match &o.region {
        Some(r) => Some(r.get_ref().clone()),
        None => (v.env)("AWS_REGION")
            .or((v.env)("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty()),
    };
    if region.is_none() {
        v.error(
            ox.span.clone(),
            &ox.key("region"),
            "is required for type = \"aws_secrets_manager\" (or set AWS_REGION)",
        );
    }
    let endpoint = match (&o.endpoint_url, &region) {
        (Some(e), _) => {
            match Url::parse(e.get_ref()) {
                Ok(u) if acceptable_scheme(&u, false) => Some(u),
                _ => {
                    v.error(e.span(), &ox.key("endpoint_url"), format!("{:?} is not an https:// URL (plain http:// only to a loopback address)", e.get_ref()));
                    None
                }
            }
        }
        (None, Some(r)) => Url::parse(&format!("https://secretsmanager.{r}.amazonaws.com/")).ok(),
        (None, None) => None,
    };
    let ca = ox.ca_file(v);
    let (secret_id, region, endpoint) = (secret_id?, region?, endpoint?);
    Some((
        format!("aws:{endpoint}{secret_id}"),
        OutputKindPlan::Aws {
            secret_id,
            region,
            endpoint,
            ca_file: ca,
        },
    ))
}

/// `type = "kubernetes_secret"`: the API server, namespace, name and key.
fn check_kubernetes(
    v: &mut Validator<'_>,
    ox: &Ox<'_>,
    format: Option<FormatPlan>,
) -> Option<KindPlan> {
    let o = ox.o;
    let api = check_kube_api(v, ox);
    let name = ox.required(v, &o.name, "name");
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
            o.key.as_ref().map(|k| k.span()).unwrap_or(ox.span.clone()),
            &ox.key("key"),
            format!("{key_name:?} is not a valid Secret key (letters, digits, -, _, .)"),
        );
    }
    let namespace = o.namespace.as_ref().map(|n| n.get_ref().clone());
    let format = match format? {
        FormatPlan::Ready(f) => f,
        FormatPlan::TemplateFile(_) => return None,
    };
    let (api, name) = (api?, name?);
    let server = match &api {
        KubeApiPlan::Direct { api_server, .. } => api_server.to_string(),
        KubeApiPlan::Kubeconfig { path, context } => format!(
            "kubeconfig:{}#{}",
            path.value.display(),
            context.as_deref().unwrap_or_default()
        ),
    };
    Some((
        format!(
            "k8s:{server}/{}/{}/{}",
            namespace.clone().unwrap_or_default(),
            name,
            key_name
        ),
        OutputKindPlan::Kubernetes {
            api,
            namespace,
            name,
            key: key_name,
            format,
        },
    ))
}

/// Where the API server is: a kubeconfig file (alone), or `api_server`,
/// `token_file` and `ca_file`, each defaulting to the pod's.
fn check_kube_api(v: &mut Validator<'_>, ox: &Ox<'_>) -> Option<KubeApiPlan> {
    let o = ox.o;
    if let Some(k) = &o.kubeconfig {
        for (given, key) in [
            (o.api_server.as_ref().map(|s| s.span()), "api_server"),
            (o.token_file.as_ref().map(|s| s.span()), "token_file"),
            (o.ca_file.as_ref().map(|s| s.span()), "ca_file"),
        ] {
            if let Some(span) = given {
                v.error(
                    span,
                    &ox.key(key),
                    "the kubeconfig file names the API server, its CA and the credentials: give either kubeconfig or this",
                );
            }
        }
        let path = v.path(k, &ox.key("kubeconfig"))?;
        return Some(KubeApiPlan::Kubeconfig {
            path: Located {
                value: path,
                span: k.span(),
                key: ox.key("kubeconfig"),
            },
            context: o.context.as_ref().map(|c| c.get_ref().clone()),
        });
    }
    if let Some(c) = &o.context {
        v.error(
            c.span(),
            &ox.key("context"),
            "names a context of a kubeconfig file: set kubeconfig too",
        );
    }
    let ca_file = ox.ca_file(v);
    direct_kube_api(
        v,
        (&o.api_server, &o.token_file, ca_file),
        ox.span.clone(),
        &|k| ox.key(k),
        "give api_server, token_file and ca_file, or kubeconfig",
    )
}

/// The API server in a pod (its service account), or `api_server` +
/// `token_file` + `ca_file` out of one; `what` says what to give outside.
pub(super) fn direct_kube_api(
    v: &mut Validator<'_>,
    (api_server, token_file, ca_file): (&S<String>, &S<String>, Option<Located<PathBuf>>),
    span: Range<usize>,
    key: &dyn Fn(&str) -> String,
    what: &str,
) -> Option<KubeApiPlan> {
    let given = api_server.is_some();
    let api_server = match api_server {
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
                    format!(
                        "is required outside a pod (KUBERNETES_SERVICE_HOST is not set): {what}"
                    ),
                );
                None
            }
        },
    };
    let token_file = match token_file {
        Some(f) => v.path(f, &key("token_file")),
        None => Some(PathBuf::from(SERVICE_ACCOUNT).join("token")),
    };
    let ca_file = ca_file.or_else(|| {
        (!given).then(|| Located {
            value: PathBuf::from(SERVICE_ACCOUNT).join("ca.crt"),
            span: span.clone(),
            key: key("ca_file"),
        })
    });
    Some(KubeApiPlan::Direct {
        api_server: api_server?,
        token_file: token_file?,
        ca_file,
    })
}
