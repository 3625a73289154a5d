//! Building: turns a validated [`Plan`] into runtime specs. This is where
//! secret files, CA bundles and template files are read and user names
//! resolved; every failure is collected, with the key that caused it.

use super::validate::{
    AssertionKeyPlan, BackendPlan, ClientPlan, ClusterPlan, FormatPlan, GrantPlan, JwtKeyPlan,
    KubeApiPlan, Located, OutputKindPlan, OutputPlan, SecretSource,
};
use super::{ClientSpec, Diagnostic};
use crate::cluster::kubernetes::KubeSpec;
use crate::cluster::seal::SealKey;
use crate::cluster::{BackendSpec, ClusterSpec, EtcdSpec};
use crate::grant::JwtBearer;
use crate::grant::assertion::{Alg, AssertionKey};
use crate::grant::{CaBundle, ClientIdentity, GrantSpec, TlsClientFiles, TokenRequestSpec};
use crate::kube::{Credential, KubeApi, kubeconfig};
use crate::output::Layout;
use crate::output::kubernetes::KubernetesOutput;
use crate::output::render::Template;
use crate::output::vault::VaultOutput;
use crate::output::{FileOutput, Format, OutputKind, OutputSpec};
use crate::secret::Secret;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

struct Builder<'a> {
    diagnostics: Vec<Diagnostic>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// CA bundles read so far, by path: read and checked once, shared by
    /// every client that names the file (or why they cannot be used).
    cas: std::collections::HashMap<PathBuf, Result<Arc<CaBundle>, String>>,
}

impl Builder<'_> {
    fn error<T>(&mut self, at: &Located<T>, message: String) {
        self.diagnostics.push(Diagnostic {
            span: Some(at.span.clone()),
            key: at.key.clone(),
            message,
        });
    }

    /// `key` named by its certificate `cert` too, which must be the
    /// certificate of `key_file`'s key.
    fn certified(
        &mut self,
        key: AssertionKey,
        cert: &Located<PathBuf>,
        key_file: &Located<PathBuf>,
    ) -> Option<AssertionKey> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let at = cert.value.display().to_string();
        let read = |f: &Located<PathBuf>| {
            crate::fsread::read(&f.value)
                .map_err(|e| format!("cannot read {}: {e}", f.value.display()))
        };
        let checked = read(cert).and_then(|c| {
            read(key_file).and_then(|k| {
                ClientIdentity::new(c.clone(), k)
                    .map_err(|e| format!("{at} and {}: {e}", key_file.value.display()))?;
                CertificateDer::from_pem_slice(&c)
                    .map_err(|_| format!("{at} holds no PEM certificate"))
            })
        });
        match checked {
            Ok(der) => Some(key.with_certificate(&der)),
            Err(e) => {
                self.error(cert, e);
                None
            }
        }
    }

    /// The JWT bearer grant's key, its issuer, and the service account
    /// file's `token_uri` (if it is one).
    fn jwt_bearer(
        &mut self,
        key: &JwtKeyPlan,
        issuer: Option<String>,
        client_id: Option<&str>,
    ) -> Option<(AssertionKey, String, Option<url::Url>)> {
        match key {
            JwtKeyPlan::Private { file, alg, kid } => {
                let key = self.private_key(file, *alg, kid.clone())?;
                match issuer.or(client_id.map(str::to_string)) {
                    Some(iss) => Some((key, iss, None)),
                    None => {
                        self.error(
                            file,
                            "the assertion needs an issuer: set assertion_issuer or client_id"
                                .to_string(),
                        );
                        None
                    }
                }
            }
            JwtKeyPlan::ServiceAccount(file) => {
                if !self.not_world_readable(file) {
                    return None;
                }
                let at = file.value.display().to_string();
                let text = match crate::fsread::read_limited(&file.value, 64 * 1024) {
                    Ok(t) => t,
                    Err(e) => {
                        self.error(file, format!("cannot read {at}: {e}"));
                        return None;
                    }
                };
                match service_account(&text, issuer) {
                    Ok(found) => Some(found),
                    Err(e) => {
                        self.error(file, format!("{at}: {e}"));
                        None
                    }
                }
            }
        }
    }

    /// A client certificate and its key: readable, the key not by every
    /// user, and the one the certificate is for.
    fn tls_client(
        &mut self,
        cert: &Located<PathBuf>,
        key: &Located<PathBuf>,
    ) -> Option<Option<TlsClientFiles>> {
        if !self.not_world_readable(key) {
            return None;
        }
        let read = |f: &Located<PathBuf>| {
            crate::fsread::read(&f.value)
                .map_err(|e| format!("cannot read {}: {e}", f.value.display()))
        };
        let pair = match (read(cert), read(key)) {
            (Ok(c), Ok(k)) => ClientIdentity::new(c, k),
            (Err(e), _) => {
                self.error(cert, e);
                return None;
            }
            (_, Err(e)) => {
                self.error(key, e);
                return None;
            }
        };
        match pair {
            Ok(_) => Some(Some(TlsClientFiles {
                cert: cert.value.clone(),
                key: key.value.clone(),
            })),
            Err(e) => {
                self.error(
                    cert,
                    format!("{} and {}: {e}", cert.value.display(), key.value.display()),
                );
                None
            }
        }
    }

    /// A key file must not be readable by every user (said, naming it).
    fn not_world_readable(&mut self, file: &Located<PathBuf>) -> bool {
        use std::os::unix::fs::PermissionsExt;
        let at = file.value.display().to_string();
        match std::fs::metadata(&file.value) {
            Ok(m) if m.permissions().mode() & 0o004 != 0 => {
                self.error(
                    file,
                    format!(
                        "{at} is readable by every user (mode {:o}): a private key must not be; chmod o-r {at}",
                        m.permissions().mode() & 0o777
                    ),
                );
                false
            }
            _ => true,
        }
    }

    /// A private key file: not readable by every user, and a key that
    /// signs as asked; errors name the file.
    fn private_key(
        &mut self,
        file: &Located<PathBuf>,
        alg: Option<Alg>,
        kid: Option<String>,
    ) -> Option<AssertionKey> {
        if !self.not_world_readable(file) {
            return None;
        }
        let at = file.value.display().to_string();
        let pem = match crate::fsread::read_limited(&file.value, 64 * 1024) {
            Ok(pem) => pem,
            Err(e) => {
                self.error(file, format!("cannot read {at}: {e}"));
                return None;
            }
        };
        match AssertionKey::private(&pem, alg, kid) {
            Ok(k) => Some(k),
            Err(e) => {
                self.error(file, format!("{at} {e}"));
                None
            }
        }
    }

    fn secret(&mut self, source: &Located<SecretSource>) -> Option<Secret> {
        let value = match &source.value {
            SecretSource::Inline(s) => return Some(s.clone()),
            SecretSource::File(path) => match crate::fsread::read_to_string(path) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    if text.is_empty() {
                        self.error(source, format!("{} is empty", path.display()));
                        return None;
                    }
                    text.to_string()
                }
                Err(e) => {
                    self.error(source, format!("cannot read {}: {e}", path.display()));
                    return None;
                }
            },
            SecretSource::Env(var) => match (self.env)(var) {
                Some(v) if !v.is_empty() => v,
                _ => {
                    self.error(
                        source,
                        format!("environment variable {var} is not set or empty"),
                    );
                    return None;
                }
            },
        };
        Some(Secret::new(value))
    }

    /// A user or group id: a number as it is, else `name` looked up.
    fn id(
        &mut self,
        name: &Located<String>,
        what: &str,
        lookup: impl FnOnce(&str) -> Option<u32>,
    ) -> Option<u32> {
        if let Ok(id) = name.value.parse::<u32>() {
            return Some(id);
        }
        let found = lookup(&name.value);
        if found.is_none() {
            self.error(name, format!("no {what} named {:?}", name.value));
        }
        found
    }

    fn user(&mut self, name: &Located<String>) -> Option<u32> {
        self.id(name, "user", |n| {
            nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        })
    }

    fn group(&mut self, name: &Located<String>) -> Option<u32> {
        self.id(name, "group", |n| {
            nix::unistd::Group::from_name(n)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        })
    }

    fn ca(&mut self, file: &Option<Located<PathBuf>>) -> Option<Option<Arc<CaBundle>>> {
        let Some(f) = file else { return Some(None) };
        let loaded = self.cas.entry(f.value.clone()).or_insert_with(|| {
            match crate::fsread::read(&f.value) {
                Ok(bytes) => match crate::grant::http::tls_config(Some(&bytes)) {
                    Ok(_) => Ok(Arc::new(CaBundle::new(bytes))),
                    Err(e) => Err(format!("{}: {e}", f.value.display())),
                },
                Err(e) => Err(format!("cannot read {}: {e}", f.value.display())),
            }
        });
        match loaded.clone() {
            Ok(bundle) => Some(Some(bundle)),
            Err(message) => {
                self.error(f, message);
                None
            }
        }
    }

    /// The API server's address, CA, and credentials; with a kubeconfig,
    /// also its context's namespace. Errors name the kubeconfig file and
    /// the entry in it.
    /// `given`, else the pod's namespace (its service account's).
    fn namespace(&mut self, given: Option<String>, key: &str) -> Option<String> {
        if given.is_some() {
            return given;
        }
        let file = PathBuf::from(crate::kube::SERVICE_ACCOUNT).join("namespace");
        match crate::fsread::read_to_string(&file) {
            Ok(ns) if !ns.trim().is_empty() => Some(ns.trim().to_string()),
            _ => {
                self.diagnostics.push(Diagnostic {
                    span: None,
                    key: key.to_string(),
                    message: format!(
                        "is required outside a pod ({} is not readable)",
                        file.display()
                    ),
                });
                None
            }
        }
    }

    fn kube_api(&mut self, plan: KubeApiPlan) -> Option<(KubeApi, Option<String>)> {
        match plan {
            KubeApiPlan::Direct {
                api_server,
                token_file,
                ca_file,
            } => Some((
                KubeApi {
                    server: api_server,
                    ca_pem: self.ca(&ca_file)?,
                    identity: None,
                    credential: Credential::TokenFile(token_file),
                },
                None,
            )),
            KubeApiPlan::Kubeconfig { path, context } => {
                let file = path.value.display().to_string();
                let text = match crate::fsread::read_to_string(&path.value) {
                    Ok(t) => t,
                    Err(e) => {
                        self.error(&path, format!("cannot read {file}: {e}"));
                        return None;
                    }
                };
                let r = match kubeconfig::resolve(&path.value, &text, context.as_deref()) {
                    Ok(r) => r,
                    Err(e) => {
                        self.error(&path, format!("{file}: {e}"));
                        return None;
                    }
                };
                let read = |source: &kubeconfig::Source, what: &str| match source {
                    kubeconfig::Source::Data(d) => Ok(d.clone()),
                    kubeconfig::Source::File(f) => crate::fsread::read(f).map_err(|e| {
                        format!("{file}: cannot read the {what} {}: {e}", f.display())
                    }),
                };
                let ca_pem = match r.ca.as_ref().map(|ca| read(ca, "certificate-authority")) {
                    None => None,
                    Some(Ok(pem)) => match crate::grant::http::tls_config(Some(&pem)) {
                        Ok(_) => Some(Arc::new(CaBundle::new(pem))),
                        Err(e) => {
                            self.error(&path, format!("{file}: certificate-authority: {e}"));
                            return None;
                        }
                    },
                    Some(Err(e)) => {
                        self.error(&path, e);
                        return None;
                    }
                };
                let identity = match &r.client_cert {
                    None => None,
                    Some((cert, key)) => {
                        let pair = read(cert, "client-certificate").and_then(|c| {
                            read(key, "client-key").and_then(|k| {
                                ClientIdentity::new(c, k).map_err(|e| format!("{file}: {e}"))
                            })
                        });
                        match pair {
                            Ok(id) => Some(Arc::new(id)),
                            Err(e) => {
                                self.error(&path, e);
                                return None;
                            }
                        }
                    }
                };
                Some((
                    KubeApi {
                        server: r.server,
                        ca_pem,
                        identity,
                        credential: r.credential,
                    },
                    r.namespace.or_else(|| Some("default".into())),
                ))
            }
        }
    }

    fn output(&mut self, plan: OutputPlan) -> Option<OutputSpec> {
        let kind = match plan.kind {
            OutputKindPlan::File {
                path,
                format,
                mode,
                owner,
                group,
                layout,
            } => {
                let format = match format {
                    FormatPlan::Ready(f) => Some(f),
                    FormatPlan::TemplateFile(file) => {
                        match crate::fsread::read_to_string(&file.value) {
                            Ok(text) => match Template::parse(&text) {
                                Ok(t) => Some(Format::Template(t)),
                                Err(e) => {
                                    self.error(&file, format!("{}: {e}", file.value.display()));
                                    None
                                }
                            },
                            Err(e) => {
                                self.error(
                                    &file,
                                    format!("cannot read {}: {e}", file.value.display()),
                                );
                                None
                            }
                        }
                    }
                };
                let owner = owner.as_ref().map(|o| self.user(o));
                let group = group.as_ref().map(|g| self.group(g));
                OutputKind::File(FileOutput {
                    path,
                    format: format?,
                    mode,
                    owner: owner.map(|o| o.ok_or(())).transpose().ok()?,
                    group: group.map(|g| g.ok_or(())).transpose().ok()?,
                    layout,
                })
            }
            OutputKindPlan::Vault {
                address,
                mount,
                path,
                namespace,
                auth,
                ca_file,
            } => OutputKind::VaultKv(Box::new(VaultOutput {
                address,
                mount,
                path,
                namespace,
                auth,
                ca_pem: self.ca(&ca_file)?,
            })),
            OutputKindPlan::Aws {
                secret_id,
                region,
                endpoint,
                ca_file,
            } => OutputKind::AwsSecretsManager(Box::new(crate::output::aws::AwsOutput {
                secret_id,
                region,
                endpoint,
                ca_pem: self.ca(&ca_file)?,
            })),
            OutputKindPlan::Kubernetes {
                api,
                namespace,
                name,
                key,
                format,
            } => {
                let (api, context_namespace) = self.kube_api(api)?;
                let namespace = self.namespace(
                    namespace.or(context_namespace),
                    &format!("{}.namespace", plan.key),
                );
                OutputKind::KubernetesSecret(Box::new(KubernetesOutput {
                    api,
                    namespace: namespace?,
                    name,
                    key,
                    format,
                }))
            }
        };
        Some(OutputSpec {
            kind,
            hooks: plan.hooks,
        })
    }

    fn client(&mut self, plan: ClientPlan) -> Option<ClientSpec> {
        let client_secret = plan.client_secret.as_ref().map(|s| self.secret(s));
        let mut endpoint_override = None;
        let grant = match &plan.grant {
            GrantPlan::ClientCredentials => Some(GrantSpec::ClientCredentials),
            GrantPlan::Password { username, password } => {
                self.secret(password).map(|password| GrantSpec::Password {
                    username: username.clone(),
                    password,
                })
            }
            GrantPlan::RefreshToken { initial } => self
                .secret(initial)
                .map(|initial| GrantSpec::RefreshToken { initial }),
            GrantPlan::Static => Some(GrantSpec::Static),
            GrantPlan::JwtBearer {
                key,
                issuer,
                subject,
                audience,
                scope_claim,
                endpoint_from_file,
            } => self
                .jwt_bearer(key, issuer.clone(), plan.client_id.as_deref())
                .map(|(key, issuer, token_uri)| {
                    if let (true, Some(uri)) = (*endpoint_from_file, token_uri) {
                        endpoint_override = Some(uri);
                    }
                    GrantSpec::JwtBearer(Arc::new(JwtBearer {
                        key,
                        issuer,
                        subject: subject.clone(),
                        audience: audience.clone(),
                        scope_claim: *scope_claim,
                    }))
                }),
            GrantPlan::TokenExchange(x) => {
                let readable = [
                    Some(&x.subject_token_file),
                    x.actor.as_ref().map(|(f, _)| f),
                ];
                let mut ok = true;
                for f in readable.into_iter().flatten() {
                    if let Err(e) = crate::fsread::read(f) {
                        self.diagnostics.push(Diagnostic {
                            span: None,
                            key: format!("clients.{}.subject_token_file", plan.name),
                            message: format!("cannot read {}: {e}", f.display()),
                        });
                        ok = false;
                    }
                }
                ok.then(|| GrantSpec::TokenExchange(Arc::new(x.clone())))
            }
        };
        let ca_pem = self.ca(&plan.ca_file);
        let assertion = match plan.assertion.as_ref().map(|a| &a.key) {
            None => Some(None),
            Some(AssertionKeyPlan::Secret) => match &client_secret {
                Some(Some(s)) => Some(Some(Arc::new(AssertionKey::secret(s)))),
                _ => None,
            },
            Some(AssertionKeyPlan::Private {
                file,
                alg,
                kid,
                certificate,
            }) => self.private_key(file, *alg, kid.clone()).and_then(|k| {
                let k = match certificate {
                    None => k,
                    Some(cert) => self.certified(k, cert, file)?,
                };
                Some(Some(Arc::new(k)))
            }),
        };
        let tls_client = match &plan.tls_client {
            None => Some(None),
            Some((cert, key)) => self.tls_client(cert, key),
        };
        // a configured proof key is read now (one made in state_dir, on
        // first use: `check` writes nothing)
        let dpop = match plan.dpop {
            None => Some(None),
            Some((key, None)) => Some(Some(key)),
            Some((key, Some(file))) => {
                let readable = self.not_world_readable(&file);
                match key.get() {
                    Ok(_) if readable => Some(Some(key)),
                    Ok(_) => None,
                    Err(e) => {
                        self.error(&file, e);
                        None
                    }
                }
            }
        };
        if let crate::grant::Endpoint::StaticFile(path) = &plan.endpoint {
            if let Err(e) = crate::fsread::read(path) {
                self.diagnostics.push(Diagnostic {
                    span: None,
                    key: format!("clients.{}.token_file", plan.name),
                    message: format!("cannot read {}: {e}", path.display()),
                });
            }
        }
        // a Vec of its own, exactly as long: collected in place from the
        // plans' Vec it would keep the plans' allocation (ten times the
        // size, for the life of the client)
        let mut outputs: Vec<Option<OutputSpec>> = Vec::with_capacity(plan.outputs.len());
        outputs.extend(plan.outputs.into_iter().map(|o| self.output(o)));
        Some(ClientSpec {
            name: plan.name,
            request: TokenRequestSpec {
                endpoint: endpoint_override.map_or(plan.endpoint, crate::grant::Endpoint::TokenUrl),
                allow_insecure_http: plan.allow_insecure_http,
                token_type: plan.token_type,
                grant: grant?,
                client_id: plan.client_id,
                client_secret: client_secret.map(|s| s.ok_or(())).transpose().ok()?,
                auth: plan.auth,
                assertion: assertion?,
                assertion_audience: plan.assertion.and_then(|a| a.audience),
                tls_client: tls_client?,
                dpop: dpop?,
                encoding: plan.encoding,
                scope: plan.scope,
                scope_param: plan.scope_param,
                refresh_token_param: plan.refresh_token_param,
                params: plan.params,
                headers: plan.headers,
                response: plan.response,
                timeout: plan.timeout,
                ca_pem: ca_pem?,
                default_lifetime: plan.default_lifetime,
            },
            policy: plan.policy,
            outputs: {
                let mut built = Vec::with_capacity(outputs.len());
                for o in outputs {
                    built.push(o?);
                }
                built
            },
        })
    }
}

/// Builds every client of `plan`, or returns every error found.
/// `path` as the filesystem has it now: its longest existing ancestor with
/// symlinks resolved, then the rest as written. Resolved ancestors are
/// cached: thousands of outputs share a few directories.
fn resolved(path: &std::path::Path, cache: &mut HashMap<PathBuf, PathBuf>) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        let found = match cache.get(at) {
            Some(r) => Some(r.clone()),
            None => std::fs::canonicalize(at).ok().inspect(|r| {
                cache.insert(at.to_path_buf(), r.clone());
            }),
        };
        if let Some(mut base) = found {
            base.extend(rest.iter().rev());
            return base;
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// A file output as the checks across clients see it: its path as
/// configured and as the filesystem had it when the output was built.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSeen {
    pub client: String,
    pub key: String,
    pub path: PathBuf,
    pub real: PathBuf,
    /// An `atomic_dir` set, which replaces the files in it.
    pub set: bool,
}

/// File outputs that meet on disk although their paths differ as written
/// (validation compares those): two that reach one file through a symlinked
/// directory, and a file inside an `atomic_dir` set, which replaces its
/// files. `known` are the file outputs of clients built before and left
/// alone (checked among themselves then); the plans' own file outputs are
/// returned, as seen.
fn overlapping_files(plans: &[ClientPlan], known: &[FileSeen]) -> (Vec<Diagnostic>, Vec<FileSeen>) {
    let mut cache = HashMap::new();
    let mine: Vec<FileSeen> = plans
        .iter()
        .flat_map(|c| c.outputs.iter().map(move |o| (&c.name, o)))
        .filter_map(|(client, o)| match &o.kind {
            OutputKindPlan::File { path, layout, .. } => Some(FileSeen {
                client: client.clone(),
                key: o.key.clone(),
                path: path.clone(),
                real: resolved(path, &mut cache),
                set: *layout == Layout::AtomicDir,
            }),
            _ => None,
        })
        .collect();
    let sets = |files: &[FileSeen]| -> HashMap<PathBuf, String> {
        files
            .iter()
            .filter(|f| f.set)
            .map(|f| (f.real.clone(), f.key.clone()))
            .collect()
    };
    let (known_sets, my_sets) = (sets(known), sets(&mine));
    let mut found = Vec::new();
    let mut inside = |f: &FileSeen, sets: &[&HashMap<PathBuf, String>]| {
        if f.set {
            return;
        }
        let set = f
            .real
            .ancestors()
            .skip(1)
            .find_map(|a| sets.iter().find_map(|s| s.get(a)));
        if let Some(set) = set {
            found.push(Diagnostic {
                span: None,
                key: format!("{}.path", f.key),
                message: format!(
                    "{} lies inside the atomic_dir set of {set}, which replaces the files in it",
                    f.path.display()
                ),
            });
        }
    };
    for f in &mine {
        inside(f, &[&known_sets, &my_sets]);
    }
    if !my_sets.is_empty() {
        // a new set around files already there
        for f in known {
            inside(f, &[&my_sets]);
        }
    }
    let mut files: HashMap<&std::path::Path, &FileSeen> =
        known.iter().map(|f| (f.real.as_path(), f)).collect();
    for f in &mine {
        match files.get(f.real.as_path()) {
            // the same path as written: validation says so already
            Some(first) if first.path == f.path => {}
            Some(first) => found.push(Diagnostic {
                span: None,
                key: format!("{}.path", f.key),
                message: format!(
                    "{} is the same file as {} of {} (both are {} on disk); two outputs cannot share a file",
                    f.path.display(),
                    first.path.display(),
                    first.key,
                    f.real.display()
                ),
            }),
            None => {
                files.insert(&f.real, f);
            }
        }
    }
    (found, mine)
}

/// What [`build`] makes: the specs, and their file outputs as seen.
pub type Built = (BTreeMap<String, Arc<ClientSpec>>, Vec<FileSeen>);

/// The plan is consumed: what validation made is moved into the specs.
/// `known`: the file outputs of the clients left out (see
/// [`overlapping_files`]).
/// `[cluster]`: reads the encryption key, the CA, the client certificate
/// and the password; the member's name defaults to the host's.
pub fn cluster(
    plan: ClusterPlan,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClusterSpec, Vec<Diagnostic>> {
    let mut b = Builder {
        diagnostics: Vec::new(),
        env,
        cas: HashMap::new(),
    };
    let name = plan.name.clone().or_else(|| {
        let host = env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .filter(|h| !h.trim().is_empty())
            .or_else(|| {
                crate::fsread::read_to_string(std::path::Path::new("/proc/sys/kernel/hostname"))
                    .ok()
            })
            .map(|h| h.trim().to_string());
        if host.is_none() {
            b.diagnostics.push(Diagnostic {
                span: None,
                key: "cluster.name".into(),
                message: "is required: the host's name cannot be read".into(),
            });
        }
        host
    });
    let key = match crate::fsread::read_limited(&plan.encryption_key.value, 4096) {
        Ok(bytes) => match SealKey::from_file_content(&bytes) {
            Ok(k) => Some(k),
            Err(e) => {
                let at = plan.encryption_key.value.display().to_string();
                b.error(&plan.encryption_key, format!("{at}: {e}"));
                None
            }
        },
        Err(e) => {
            let at = plan.encryption_key.value.display().to_string();
            b.error(&plan.encryption_key, format!("cannot read {at}: {e}"));
            None
        }
    };
    let backend = match plan.backend {
        BackendPlan::Kubernetes {
            api,
            namespace,
            lease_prefix,
        } => b.kube_api(api).and_then(|(api, _)| {
            let namespace = b.namespace(namespace, "cluster.namespace")?;
            Some(BackendSpec::Kubernetes(KubeSpec {
                api,
                namespace,
                lease_prefix,
            }))
        }),
        BackendPlan::Etcd {
            endpoints,
            ca_file,
            client_cert,
            login,
            prefix,
        } => {
            let ca_pem = b.ca(&ca_file);
            let identity = match client_cert {
                None => Some(None),
                Some((cert, key)) => {
                    let read = |f: &Located<PathBuf>| {
                        crate::fsread::read(&f.value)
                            .map_err(|e| format!("cannot read {}: {e}", f.value.display()))
                    };
                    match read(&cert)
                        .and_then(|c| read(&key).and_then(|k| ClientIdentity::new(c, k)))
                    {
                        Ok(id) => Some(Some(Arc::new(id))),
                        Err(e) => {
                            b.error(&cert, e);
                            None
                        }
                    }
                }
            };
            let login = match login {
                None => Some(None),
                Some((user, file)) => b
                    .secret(&Located {
                        value: SecretSource::File(file.value.clone()),
                        span: file.span.clone(),
                        key: file.key.clone(),
                    })
                    .map(|p| Some((user, p))),
            };
            match (ca_pem, identity, login) {
                (Some(ca_pem), Some(identity), Some(login)) => Some(BackendSpec::Etcd(EtcdSpec {
                    endpoints,
                    ca_pem,
                    identity,
                    login,
                    prefix,
                })),
                _ => None,
            }
        }
    };
    match (name, key, backend) {
        (Some(name), Some(key), Some(backend)) if b.diagnostics.is_empty() => Ok(ClusterSpec {
            name,
            lease_ttl: plan.lease_ttl,
            key,
            backend,
        }),
        _ => Err(b.diagnostics),
    }
}

pub fn build(
    plans: Vec<ClientPlan>,
    env: &dyn Fn(&str) -> Option<String>,
    known: &[FileSeen],
) -> Result<Built, Vec<Diagnostic>> {
    let (overlapping, seen) = overlapping_files(&plans, known);
    let mut b = Builder {
        diagnostics: overlapping,
        env,
        cas: std::collections::HashMap::new(),
    };
    let mut clients = BTreeMap::new();
    for c in plans {
        if let Some(spec) = b.client(c) {
            clients.insert(spec.name.clone(), Arc::new(spec));
        }
    }
    if b.diagnostics.is_empty() {
        Ok((clients, seen))
    } else {
        Err(b.diagnostics)
    }
}

/// A Google service account key file (JSON): its private key (RS256, its
/// `private_key_id` the `kid`), its `client_email` (the issuer, unless
/// `issuer` is given) and its `token_uri`. Errors never quote the file.
fn service_account(
    text: &[u8],
    issuer: Option<String>,
) -> Result<(AssertionKey, String, Option<url::Url>), String> {
    #[derive(serde::Deserialize)]
    struct Sa {
        #[serde(rename = "type")]
        kind: Option<String>,
        client_email: Option<String>,
        private_key: Option<String>,
        private_key_id: Option<String>,
        token_uri: Option<String>,
    }
    let sa: Sa = serde_json::from_slice(text)
        .map_err(|_| "is not a service account key file (JSON)".to_string())?;
    if sa.kind.as_deref().is_some_and(|k| k != "service_account") {
        return Err(format!(
            "is a {:?} file, not a service account key (\"type\": \"service_account\")",
            sa.kind.unwrap_or_default()
        ));
    }
    let pem = sa.private_key.ok_or("has no private_key")?;
    let key = AssertionKey::private(
        pem.as_bytes(),
        Some(crate::grant::assertion::Alg::RS256),
        sa.private_key_id,
    )
    .map_err(|e| format!("its private_key {e}"))?;
    let issuer = issuer
        .or(sa.client_email)
        .ok_or("has no client_email (set assertion_issuer)")?;
    let token_uri = match sa.token_uri {
        None => None,
        Some(u) => {
            Some(url::Url::parse(&u).map_err(|_| format!("its token_uri {u:?} is not a URL"))?)
        }
    };
    Ok((key, issuer, token_uri))
}
