//! A real etcd cluster on loopback (Debian's `etcd-server`): three nodes,
//! each of which a test may kill and start again, and a look at what the
//! store holds through the JSON gateway (curl).

use super::{free_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// Client TLS: the CA, and a client certificate and key it signed
    /// (etcd asks for one: `--client-cert-auth`).
    pub tls: Option<EtcdTls>,
    /// The address clients use (etcd listens on 127.0.0.1 too).
    host: String,
}

pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
}

struct Node {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// `n` nodes, started, with a leader.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, false, "127.0.0.1")
    }

    /// The same, clients over TLS with client certificates.
    pub fn start_tls(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, true, "127.0.0.1")
    }

    /// Over TLS, and reached at `host` (an address of this machine's, e.g.
    /// the host side of a test's veth pair).
    pub fn start_tls_at(n: usize, host: &str) -> EtcdCluster {
        EtcdCluster::start_with(n, true, host)
    }

    fn start_with(n: usize, tls: bool, host: &str) -> EtcdCluster {
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("etcd{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls.then(|| {
            // a CA, etcd's certificate (etcd's gateway dials etcd itself
            // with it, so it is a client's too) and tokenkeeper's
            let script = "set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=etcd-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
for who in etcd tokenkeeper; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who
  case $who in
    etcd) printf 'subjectAltName=IP:127.0.0.1,IP:HOST\\nextendedKeyUsage=serverAuth,clientAuth\\n' > $who.ext ;;
    *) printf 'extendedKeyUsage=clientAuth\\n' > $who.ext ;;
  esac
  openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $who.ext -out $who.crt
done";
            let script = script.replace("HOST", host);
            let ok = Command::new("bash")
                .args(["-c", &script])
                .current_dir(dir.path())
                .stderr(Stdio::null())
                .status()
                .expect("openssl")
                .success();
            assert!(ok, "openssl failed");
            let at = |f: &str| dir.path().join(f);
            EtcdTls {
                ca: at("ca.crt"),
                cert: at("tokenkeeper.crt"),
                key: at("tokenkeeper.key"),
                server_cert: at("etcd.crt"),
                server_key: at("etcd.key"),
            }
        });
        let mut c = EtcdCluster {
            dir,
            nodes,
            tls,
            host: host.to_string(),
        };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_healthy();
        c
    }

    fn initial(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}=http://127.0.0.1:{}", n.name, n.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start_node(&mut self, i: usize) {
        let initial = self.initial();
        let dir = self.dir.path().join(&self.nodes[i].name);
        let log =
            std::fs::File::create(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
                .expect("etcd log");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(t) = &self.tls {
            tls_args.extend(["--cert-file".into(), t.server_cert.clone().into()]);
            tls_args.extend(["--key-file".into(), t.server_key.clone().into()]);
            tls_args.extend(["--trusted-ca-file".into(), t.ca.clone().into()]);
            tls_args.push("--client-cert-auth".into());
        }
        let host = self.host.clone();
        let n = &mut self.nodes[i];
        let mut listen = format!("{scheme}://127.0.0.1:{}", n.client);
        if host != "127.0.0.1" {
            listen.push_str(&format!(",{scheme}://{host}:{}", n.client));
        }
        let child = Command::new("etcd")
            .args(&tls_args)
            .args(["--name", &n.name, "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{}", n.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", n.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", n.peer),
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (scripts/install-test-deps installs Debian's etcd-server)");
        n.child = Some(child);
    }

    /// kill -9 of node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://{}:{}", self.host, n.client))
            .collect()
    }

    /// The `endpoints = [...]` value of a config.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// A gateway call to the first node that answers: its JSON.
    pub fn call(&self, path: &str, body: &serde_json::Value) -> Option<serde_json::Value> {
        for e in self.endpoints() {
            let mut curl = Command::new("curl");
            if let Some(t) = &self.tls {
                curl.arg("--cacert")
                    .arg(&t.ca)
                    .arg("--cert")
                    .arg(&t.cert)
                    .arg("--key")
                    .arg(&t.key);
            }
            let out = curl
                .args([
                    "-s",
                    "-m",
                    "2",
                    "-X",
                    "POST",
                    &format!("{e}{path}"),
                    "-d",
                    &body.to_string(),
                ])
                .output()
                .ok()?;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                && v.get("header").is_some()
            {
                return Some(v);
            }
        }
        None
    }

    /// Every key and value under `prefix`.
    pub fn dump(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let v = self
            .call(
                "/v3/kv/range",
                &serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end)}),
            )
            .expect("etcd answers");
        v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| {
                        let key = b64.decode(kv["key"].as_str().unwrap()).unwrap();
                        let value = b64.decode(kv["value"].as_str().unwrap_or("")).unwrap();
                        (String::from_utf8(key).unwrap(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Who owns `client` under `prefix` (the owner key's value).
    pub fn owner(&self, prefix: &str, client: &str) -> Option<String> {
        let key = format!("{prefix}owners/{client}");
        self.dump(&format!("{prefix}owners/"))
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| String::from_utf8(v).unwrap())
    }

    pub fn wait_healthy(&self) {
        wait_until("etcd has a leader", Duration::from_secs(30), || {
            self.call("/v3/kv/range", &serde_json::json!({"key": "AA=="}))
                .is_some()
        });
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
