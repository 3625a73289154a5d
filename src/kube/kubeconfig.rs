//! A kubeconfig file, read the way kubectl reads it: one context (the
//! named one, else `current-context`) picks a cluster and a user; relative
//! paths are relative to the kubeconfig's directory. Pure: the caller reads
//! the file and whatever files the result names.
//!
//! Supported: `server`, `certificate-authority(-data)`, `token`,
//! `tokenFile`, `client-certificate(-data)` + `client-key(-data)`, `exec`
//! credential plugins (token answers), the context's `namespace`. Anything
//! that changes how the server is reached or who we are and is not
//! supported (`insecure-skip-tls-verify`, `proxy-url`, `tls-server-name`,
//! `auth-provider`, `username`/`password`, impersonation) is refused by
//! name rather than ignored.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use url::Url;

/// Bytes given inline (`…-data`, base64) or by a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File(PathBuf),
    Data(Vec<u8>),
}

/// How requests authenticate, besides a client certificate.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential {
    None,
    Token(crate::secret::Secret),
    TokenFile(PathBuf),
    Exec(ExecPlugin),
}

/// An `exec` credential plugin (client.authentication.k8s.io).
#[derive(Clone, Debug, PartialEq)]
pub struct ExecPlugin {
    pub api_version: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What one context of a kubeconfig resolves to.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub context: String,
    pub server: Url,
    pub ca: Option<Source>,
    pub client_cert: Option<(Source, Source)>,
    pub credential: Credential,
    pub namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: Option<String>,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    proxy_url: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<Exec>,
    auth_provider: Option<serde::de::IgnoredAny>,
    username: Option<String>,
    password: Option<String>,
    #[serde(rename = "as")]
    impersonate: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Exec {
    api_version: Option<String>,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
    namespace: Option<String>,
}

/// Resolves `context` (or the current context) of the kubeconfig `text`
/// read from `path`. The error says which entry and key is wrong; it never
/// quotes a value (a token or key may be inline).
pub fn resolve(path: &Path, text: &str, context: Option<&str>) -> Result<Resolved, String> {
    let file: File = serde_saphyr::from_str(text).map_err(|e| {
        // the parser's message may quote the text around the error, which
        // may be a key or token: keep only its first line's location part
        let first = e.to_string();
        let first = first.lines().next().unwrap_or_default().to_string();
        format!("is not a kubeconfig file: {}", scrub(&first))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let relative = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let chosen = match context {
        Some(c) => c.to_string(),
        None => file
            .current_context
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or("has no current-context: set `context` to one of its contexts")?,
    };
    let ctx = file
        .contexts
        .iter()
        .find(|c| c.name == chosen)
        .ok_or_else(|| {
            format!(
                "has no context {chosen:?} (it has: {})",
                names(file.contexts.iter().map(|c| &c.name))
            )
        })?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == ctx.context.cluster)
        .ok_or_else(|| {
            format!(
                "contexts[{chosen:?}] names cluster {:?}, which it does not have",
                ctx.context.cluster
            )
        })?;
    let at = format!("clusters[{:?}].cluster", cluster.name);
    let c = &cluster.cluster;
    for (set, key, why) in [
        (
            c.insecure_skip_tls_verify,
            "insecure-skip-tls-verify",
            "tokenkeeper always verifies the API server: give its CA in certificate-authority",
        ),
        (
            c.proxy_url.is_some(),
            "proxy-url",
            "is not supported: reach the API server directly",
        ),
        (
            c.tls_server_name.is_some(),
            "tls-server-name",
            "is not supported: use a server URL whose host name the certificate names",
        ),
    ] {
        if set {
            return Err(format!("{at}.{key}: {why}"));
        }
    }
    let server = c
        .server
        .as_deref()
        .ok_or_else(|| format!("{at}.server: is missing"))?;
    let server = Url::parse(server)
        .ok()
        .filter(|u| u.scheme() == "https" && u.host().is_some())
        .ok_or_else(|| format!("{at}.server: {server:?} is not an https:// URL"))?;
    let ca = source(
        &at,
        "certificate-authority",
        c.certificate_authority.as_deref(),
        c.certificate_authority_data.as_deref(),
        &relative,
    )?;
    let (client_cert, credential) = match &ctx.context.user {
        None => (None, Credential::None),
        Some(name) => {
            let user = file.users.iter().find(|u| &u.name == name).ok_or_else(|| {
                format!("contexts[{chosen:?}] names user {name:?}, which it does not have")
            })?;
            user_auth(&user.name, &user.user, &relative)?
        }
    };
    Ok(Resolved {
        context: chosen,
        server,
        ca,
        client_cert,
        credential,
        namespace: ctx.context.namespace.clone().filter(|n| !n.is_empty()),
    })
}

type Auth = (Option<(Source, Source)>, Credential);

fn user_auth(name: &str, u: &User, relative: &dyn Fn(&str) -> PathBuf) -> Result<Auth, String> {
    let at = format!("users[{name:?}].user");
    for (set, key, why) in [
        (
            u.auth_provider.is_some(),
            "auth-provider",
            "is not supported (kubectl dropped it too): use an exec plugin",
        ),
        (
            u.username.is_some() || u.password.is_some(),
            "username",
            "basic authentication is not supported (Kubernetes removed it in 1.19)",
        ),
        (
            u.impersonate.is_some(),
            "as",
            "impersonation is not supported",
        ),
    ] {
        if set {
            return Err(format!("{at}.{key}: {why}"));
        }
    }
    let cert = source(
        &at,
        "client-certificate",
        u.client_certificate.as_deref(),
        u.client_certificate_data.as_deref(),
        relative,
    )?;
    let key = source(
        &at,
        "client-key",
        u.client_key.as_deref(),
        u.client_key_data.as_deref(),
        relative,
    )?;
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return Err(format!("{at}: client-certificate without client-key")),
        (None, Some(_)) => return Err(format!("{at}: client-key without client-certificate")),
    };
    let given = [u.token.is_some(), u.token_file.is_some(), u.exec.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(format!("{at}: give one of token, tokenFile and exec"));
    }
    let credential = if let Some(t) = &u.token {
        Credential::Token(crate::secret::Secret::new(t.trim()))
    } else if let Some(f) = &u.token_file {
        Credential::TokenFile(relative(f))
    } else if let Some(e) = &u.exec {
        let api_version = e
            .api_version
            .clone()
            .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
        if !api_version.starts_with("client.authentication.k8s.io/") {
            return Err(format!(
                "{at}.exec.apiVersion: {api_version:?} is not client.authentication.k8s.io/…"
            ));
        }
        // kubectl looks a bare command up in PATH; a relative one with a
        // slash is relative to the kubeconfig
        let command = if e.command.contains('/') {
            relative(&e.command)
        } else {
            PathBuf::from(&e.command)
        };
        Credential::Exec(ExecPlugin {
            api_version,
            command,
            args: e.args.clone(),
            env: e
                .env
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
        })
    } else {
        Credential::None
    };
    if client_cert.is_none() && credential == Credential::None {
        return Err(format!(
            "{at}: has no credentials (token, tokenFile, exec, or client-certificate + client-key)"
        ));
    }
    Ok((client_cert, credential))
}

fn source(
    at: &str,
    key: &str,
    file: Option<&str>,
    data: Option<&str>,
    relative: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<Source>, String> {
    use base64::Engine;
    match (file, data) {
        (Some(_), Some(_)) => Err(format!("{at}: give {key} or {key}-data, not both")),
        (Some(f), None) => Ok(Some(Source::File(relative(f)))),
        (None, Some(d)) => base64::engine::general_purpose::STANDARD
            .decode(d.split_whitespace().collect::<String>())
            .map(|b| Some(Source::Data(b)))
            .map_err(|_| format!("{at}.{key}-data: is not base64")),
        (None, None) => Ok(None),
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<String> = it.map(|n| format!("{n:?}")).collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// Keeps a parser message's words and positions, dropping quoted text.
fn scrub(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for ch in message.chars() {
        match ch {
            '"' | '`' | '\'' => {
                if !quoted {
                    out.push_str("\"…\"");
                }
                quoted = !quoted;
            }
            _ if !quoted => out.push(ch),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/home/me/.kube/config";

    fn sample(user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: c1
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority: ca.crt
- name: c2
  cluster:
    server: https://k8s.example.com
    certificate-authority-data: aGVsbG8=
contexts:
- name: dev
  context: {{cluster: c1, user: u1, namespace: team-a}}
- name: prod
  context:
    cluster: c2
    user: u1
users:
- name: u1
  user:
{user}
preferences: {{}}
"
        )
    }

    #[test]
    fn the_current_context_picks_cluster_user_and_namespace() {
        let r = resolve(Path::new(PATH), &sample("    tokenFile: tok"), None).unwrap();
        assert_eq!(r.context, "dev");
        assert_eq!(r.server.as_str(), "https://10.0.0.1:6443/");
        assert_eq!(r.ca, Some(Source::File("/home/me/.kube/ca.crt".into())));
        assert_eq!(
            r.credential,
            Credential::TokenFile("/home/me/.kube/tok".into())
        );
        assert_eq!(r.namespace.as_deref(), Some("team-a"));
        let p = resolve(Path::new(PATH), &sample("    token: abc"), Some("prod")).unwrap();
        assert_eq!(p.ca, Some(Source::Data(b"hello".to_vec())));
        assert_eq!(p.namespace, None);
        assert_eq!(
            p.credential,
            Credential::Token(crate::secret::Secret::new("abc"))
        );
    }

    #[test]
    fn client_certificates_and_exec_plugins_resolve() {
        let r = resolve(
            Path::new(PATH),
            &sample("    client-certificate: /pki/me.crt\n    client-key-data: a2V5"),
            None,
        )
        .unwrap();
        assert_eq!(
            r.client_cert,
            Some((
                Source::File("/pki/me.crt".into()),
                Source::Data(b"key".to_vec())
            ))
        );
        let e = resolve(
            Path::new(PATH),
            &sample(
                "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: ./bin/creds\n      args: [get-token, --cluster, x]\n      env:\n      - {name: A, value: b}",
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            e.credential,
            Credential::Exec(ExecPlugin {
                api_version: "client.authentication.k8s.io/v1beta1".into(),
                command: "/home/me/.kube/./bin/creds".into(),
                args: vec!["get-token".into(), "--cluster".into(), "x".into()],
                env: vec![("A".into(), "b".into())],
            })
        );
    }

    #[test]
    fn what_is_not_supported_is_refused_by_name() {
        let cases = [
            (
                sample("    tokenFile: t").replace(
                    "https://10.0.0.1:6443\n",
                    "https://10.0.0.1:6443\n    insecure-skip-tls-verify: true\n",
                ),
                None,
                "clusters[\"c1\"].cluster.insecure-skip-tls-verify: tokenkeeper always verifies",
            ),
            (
                sample("    auth-provider: {name: gcp}"),
                None,
                "users[\"u1\"].user.auth-provider: is not supported",
            ),
            (
                sample("    username: a\n    password: b"),
                None,
                "users[\"u1\"].user.username: basic authentication",
            ),
            (
                sample("    token: a\n    tokenFile: b"),
                None,
                "give one of token, tokenFile and exec",
            ),
            (
                sample("    client-certificate: a"),
                None,
                "client-certificate without client-key",
            ),
            (
                sample("    {}"),
                None,
                "users[\"u1\"].user: has no credentials",
            ),
            (
                sample("    token: a"),
                Some("qa"),
                "has no context \"qa\" (it has: \"dev\", \"prod\")",
            ),
            (
                sample("    token: a").replace("cluster: c2", "cluster: c3"),
                Some("prod"),
                "names cluster \"c3\", which it does not have",
            ),
            (
                sample("    token: a").replace("https://k8s.example.com", "http://k8s.example.com"),
                Some("prod"),
                "server: \"http://k8s.example.com\" is not an https:// URL",
            ),
            (
                sample("    token: a").replace("current-context: dev\n", ""),
                None,
                "has no current-context",
            ),
        ];
        for (text, ctx, want) in cases {
            let err = resolve(Path::new(PATH), &text, ctx).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn a_parse_error_does_not_quote_the_file() {
        let text = sample("    token: s3cr3t-t0ken\n  - broken: [");
        let err = resolve(Path::new(PATH), &text, None).unwrap_err();
        assert!(err.starts_with("is not a kubeconfig file"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
