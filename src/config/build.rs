//! Building: turns a validated [`Plan`] into runtime specs. This is where
//! secret files, CA bundles and template files are read and user names
//! resolved; every failure is collected, with the key that caused it.

use super::validate::{
    BackendPlan, ClientPlan, ClusterPlan, FormatPlan, GrantPlan, KubeApiPlan, Located,
    OutputKindPlan, OutputPlan, SecretSource,
};
use super::{ClientSpec, Diagnostic};
use crate::cluster::kubernetes::KubeSpec;
use crate::cluster::seal::SealKey;
use crate::cluster::{BackendSpec, ClusterSpec, EtcdSpec};
use crate::grant::{CaBundle, ClientIdentity, GrantSpec, TokenRequestSpec};
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
        };
        let ca_pem = self.ca(&plan.ca_file);
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
                endpoint: plan.endpoint,
                allow_insecure_http: plan.allow_insecure_http,
                token_type: plan.token_type,
                grant: grant?,
                client_id: plan.client_id,
                client_secret: client_secret.map(|s| s.ok_or(())).transpose().ok()?,
                auth: plan.auth,
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
