//! A real Kubernetes API server on loopback: the kube-apiserver that
//! scripts/build-kube-apiserver builds from Debian's source package
//! (`KUBE_APISERVER`, else the project's cache), on a one-node etcd, RBAC
//! on. A namespace with the shipped cluster-mode RBAC
//! (packaging/kubernetes/cluster/rbac.yaml) applied, and a TokenRequest
//! token of its ServiceAccount, as a pod would have.

use super::{EtcdCluster, free_port, repo, wait_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const NAMESPACE: &str = "tk-cluster";

pub struct KubeApiServer {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub ca: PathBuf,
    /// The ServiceAccount's token (the shipped RBAC's subject).
    pub token: PathBuf,
    child: Child,
    pub etcd: EtcdCluster,
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kube_apiserver_bin() -> PathBuf {
    let bin = std::env::var_os("KUBE_APISERVER").map_or_else(
        || repo().join(".cache/platform/kube-build/bin/kube-apiserver"),
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "no kube-apiserver at {}: scripts/build-kube-apiserver builds it (scripts/check-kubernetes runs these tests)",
        bin.display()
    );
    bin
}

impl KubeApiServer {
    pub fn start() -> KubeApiServer {
        KubeApiServer::start_at("127.0.0.1")
    }

    /// One that listens on `host` (an address of this host's).
    pub fn start_at(host: &str) -> KubeApiServer {
        let bin = kube_apiserver_bin();
        let etcd = EtcdCluster::start(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let script = format!("set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.crt
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout api.key -out api.csr
printf 'subjectAltName=IP:{host},DNS:localhost\\n' > san.ext
openssl x509 -req -in api.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out api.crt
openssl genrsa -out sa.key 2048; openssl rsa -in sa.key -pubout -out sa.pub
echo 'admin-token,admin,1,\"system:masters\"' > tokens.csv");
        let ok = Command::new("bash")
            .args(["-c", &script])
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl failed");
        let port = free_port();
        let at = |f: &str| dir.path().join(f).display().to_string();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                &format!("--etcd-servers={}", etcd.endpoints()[0]),
                &format!("--bind-address={host}"),
                &format!("--advertise-address={host}"),
                &format!("--secure-port={port}"),
                &format!("--tls-cert-file={}", at("api.crt")),
                &format!("--tls-private-key-file={}", at("api.key")),
                &format!("--client-ca-file={}", at("ca.crt")),
                &format!("--token-auth-file={}", at("tokens.csv")),
                "--authorization-mode=RBAC",
                &format!("--service-account-key-file={}", at("sa.pub")),
                &format!("--service-account-signing-key-file={}", at("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc",
                "--api-audiences=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--enable-priority-and-fairness=false",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        let api = KubeApiServer {
            url: format!("https://{host}:{port}"),
            ca: dir.path().join("ca.crt"),
            token: dir.path().join("sa.token"),
            dir,
            child,
            etcd,
        };
        wait_until("the API server is ready", Duration::from_secs(120), || {
            api.admin("GET", "/readyz", None).is_some()
        });
        api.setup();
        api
    }

    /// A call as the cluster's admin; the JSON answer (`None` when it
    /// did not answer or did not answer JSON).
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "10", "--cacert"])
            .arg(&self.ca)
            .args(["-H", "Authorization: Bearer admin-token", "-X", method])
            .args(["-H", "Content-Type: application/json"])
            .arg(format!("{}{path}", self.url));
        if let Some(b) = body {
            cmd.args(["--data-binary", &b.to_string()]);
        }
        let out = cmd.output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if path == "/readyz" {
            return (text.trim() == "ok").then(|| serde_json::json!("ok"));
        }
        serde_json::from_str(&text).ok()
    }

    /// The namespace, the shipped RBAC in it, the ServiceAccount's token.
    fn setup(&self) {
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        self.create("/api/v1/namespaces", &ns);
        let py = repo().join("tests/upstreams/venv/bin/python");
        let out = Command::new(&py)
            .args([
                "-c",
                "import sys, yaml, json\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    print(json.dumps(d)) if d else None",
            ])
            .arg(repo().join("packaging/kubernetes/cluster/rbac.yaml"))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-test-deps)", py.display()));
        assert!(out.status.success(), "cannot read rbac.yaml");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let d: serde_json::Value = serde_json::from_str(line).unwrap();
            let path = match d["kind"].as_str().unwrap() {
                "ServiceAccount" => format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts"),
                "Secret" => format!("/api/v1/namespaces/{NAMESPACE}/secrets"),
                "Role" => {
                    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles")
                }
                "RoleBinding" => format!(
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings"
                ),
                k => panic!("rbac.yaml holds a {k}"),
            };
            let mut d = d;
            for s in d["subjects"].as_array_mut().into_iter().flatten() {
                s["namespace"] = serde_json::json!(NAMESPACE);
            }
            self.create(&path, &d);
        }
        let request = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 7200}});
        let answer = self
            .admin(
                "POST",
                &format!(
                    "/api/v1/namespaces/{NAMESPACE}/serviceaccounts/tokenkeeper-cluster/token"
                ),
                Some(&request),
            )
            .expect("a TokenRequest answer");
        let token = answer["status"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {answer}"));
        std::fs::write(&self.token, token).unwrap();
    }

    fn create(&self, path: &str, body: &serde_json::Value) {
        let answer = self.admin("POST", path, Some(body)).expect("an answer");
        assert!(
            answer["kind"] != "Status",
            "creating {path} was refused: {answer}"
        );
    }

    /// The `[cluster]` keys that reach this API server as the
    /// ServiceAccount.
    pub fn cluster_toml(&self) -> String {
        format!(
            "backend = \"kubernetes\"\nnamespace = \"{NAMESPACE}\"\napi_server = \"{}\"\ntoken_file = {:?}\nca_file = {:?}\n",
            self.url, self.token, self.ca
        )
    }

    /// Every Lease of the namespace.
    pub fn leases(&self) -> Vec<serde_json::Value> {
        self.admin(
            "GET",
            &format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"),
            None,
        )
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
    }

    /// The holder of a client's Lease, if its member's Lease is there.
    pub fn owner(&self, prefix: &str, client: &str) -> Option<String> {
        let leases = self.leases();
        let name = |l: &serde_json::Value| l["metadata"]["name"].as_str().unwrap_or("").to_string();
        let lease = leases
            .iter()
            .find(|l| name(l) == format!("{prefix}client-{client}"))?;
        let holder = lease["spec"]["holderIdentity"].as_str()?.to_string();
        let epoch = lease["metadata"]["annotations"]["tokenkeeper.io/epoch"].as_str()?;
        leases
            .iter()
            .any(|l| {
                name(l) == format!("{prefix}member-{holder}")
                    && l["metadata"]["annotations"]["tokenkeeper.io/epoch"].as_str() == Some(epoch)
            })
            .then_some(holder)
    }

    /// A Secret's data, decoded.
    pub fn secret(&self, name: &str) -> Option<serde_json::Value> {
        self.admin(
            "GET",
            &format!("/api/v1/namespaces/{NAMESPACE}/secrets/{name}"),
            None,
        )
    }
}
