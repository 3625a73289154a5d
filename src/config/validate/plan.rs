//! What validation makes: the plan `build` turns into the running specs.

use crate::config::raw::LogFormat;
use crate::grant::{ClientAuth, Encoding, Endpoint, ResponseMapping};
use crate::output::Layout;
use crate::output::hooks::Hooks;
use crate::output::render::Format;
use crate::output::vault::VaultAuth;
use crate::schedule::Policy;
use crate::secret::Secret;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
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
    JwtBearer {
        key: JwtKeyPlan,
        /// `iss` (default: the client id, or the service account's email).
        issuer: Option<String>,
        subject: Option<String>,
        audience: Option<String>,
        /// The scopes go in the assertion's `scope` claim (Google), not
        /// the request's `scope` field.
        scope_claim: bool,
        /// The endpoint is the service account file's `token_uri` (no
        /// `token_url` was given).
        endpoint_from_file: bool,
    },
    TokenExchange(crate::grant::TokenExchange),
}

/// What signs the JWT bearer grant's assertion.
#[derive(Clone, Debug, PartialEq)]
pub enum JwtKeyPlan {
    Private {
        file: Located<PathBuf>,
        alg: Option<crate::grant::assertion::Alg>,
        kid: Option<String>,
    },
    /// A Google service account key file (JSON), read at build.
    ServiceAccount(Located<PathBuf>),
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
        api: KubeApiPlan,
        /// `None`: the kubeconfig context's, else the pod's (read from the
        /// service account at build).
        namespace: Option<String>,
        name: String,
        key: String,
        format: Format,
    },
}

/// How a Kubernetes API server is reached.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeApiPlan {
    /// In a pod, or `api_server` + `token_file` + `ca_file`.
    Direct {
        api_server: Url,
        token_file: PathBuf,
        ca_file: Option<Located<PathBuf>>,
    },
    /// A kubeconfig file, read at build.
    Kubeconfig {
        path: Located<PathBuf>,
        context: Option<String>,
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
    /// `private_key_jwt`, `client_secret_jwt`.
    pub assertion: Option<AssertionPlan>,
    /// `tls_client_auth`, `self_signed_tls_client_auth`: certificate, key.
    pub tls_client: Option<(Located<PathBuf>, Located<PathBuf>)>,
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
    /// `dpop = true`: the proof key, and the configured key file (read at
    /// build; none for the key made in `state_dir`).
    pub dpop: Option<(Arc<crate::grant::dpop::DpopKey>, Option<Located<PathBuf>>)>,
}

/// What signs a client assertion, and its `aud`.
#[derive(Clone, Debug, PartialEq)]
pub struct AssertionPlan {
    pub key: AssertionKeyPlan,
    pub audience: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AssertionKeyPlan {
    /// `private_key_file` (PEM), read at build.
    Private {
        file: Located<PathBuf>,
        alg: Option<crate::grant::assertion::Alg>,
        kid: Option<String>,
        certificate: Option<Located<PathBuf>>,
    },
    /// The client secret (HS256).
    Secret,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonPlan {
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    pub listen: Option<SocketAddr>,
    pub ready_timeout: Duration,
    pub check_outputs: Duration,
    pub cluster: Option<ClusterPlan>,
}

/// `[cluster]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    /// `None`: the host's name, read at build.
    pub name: Option<String>,
    pub lease_ttl: Duration,
    pub encryption_key: Located<PathBuf>,
    pub backend: BackendPlan,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BackendPlan {
    Etcd {
        endpoints: Vec<Url>,
        ca_file: Option<Located<PathBuf>>,
        client_cert: Option<(Located<PathBuf>, Located<PathBuf>)>,
        login: Option<(String, Located<PathBuf>)>,
        prefix: String,
    },
    Kubernetes {
        api: KubeApiPlan,
        /// `None`: the pod's (read from the service account at build).
        namespace: Option<String>,
        lease_prefix: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
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
