//! `[cluster]`: the backend, this member's name, the lease, the encryption
//! key, and the backend's connection.

use super::*;
use crate::config::raw::{ClusterBackend, RawCluster};
use url::Url;

/// The shortest lease (etcd grants no less than 1.5 election timeouts).
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

pub(super) fn validate_cluster(
    v: &mut Validator<'_>,
    raw: &Spanned<RawCluster>,
) -> Option<ClusterPlan> {
    let span = raw.span();
    let c = raw.get_ref();
    let key = |k: &str| format!("cluster.{k}");
    let lease_ttl = v.duration(
        &c.lease_ttl,
        None,
        "cluster.lease_ttl",
        Duration::from_secs(15),
    );
    if lease_ttl < MIN_LEASE_TTL {
        v.error(
            c.lease_ttl.as_ref().map(|t| t.span()),
            "cluster.lease_ttl",
            "must be at least 1s",
        );
    }
    let name = match &c.name {
        Some(n) => {
            let text = n.get_ref().trim();
            if text.is_empty() || text.contains('/') || text.len() > 253 {
                v.error(
                    n.span(),
                    "cluster.name",
                    "must be 1 to 253 characters, without `/`",
                );
            }
            Some(text.to_string())
        }
        None => None,
    };
    let encryption_key = match &c.encryption_key_file {
        Some(f) => v.path(f, &key("encryption_key_file")).map(|p| Located {
            value: p,
            span: f.span(),
            key: key("encryption_key_file"),
        }),
        None => {
            v.error(
                span.clone(),
                "cluster.encryption_key_file",
                "is required: 32 random bytes (e.g. `head -c 32 /dev/urandom > cluster.key`); tokens and refresh tokens are encrypted with it before they enter the store",
            );
            None
        }
    };
    let located = |v: &mut Validator<'_>, f: &S<String>, k: &str| {
        f.as_ref().and_then(|f| {
            v.path(f, &key(k)).map(|p| Located {
                value: p,
                span: f.span(),
                key: key(k),
            })
        })
    };
    let backend = match c.backend.as_ref().map(|b| *b.get_ref()) {
        None => {
            v.error(
                span.clone(),
                "cluster.backend",
                "is required: \"etcd\" or \"kubernetes\"",
            );
            None
        }
        Some(ClusterBackend::Kubernetes) => {
            for (given, k) in [
                (c.endpoints.as_ref().map(|s| s.span()), "endpoints"),
                (c.cert_file.as_ref().map(|s| s.span()), "cert_file"),
                (c.key_file.as_ref().map(|s| s.span()), "key_file"),
                (c.username.as_ref().map(|s| s.span()), "username"),
                (c.password_file.as_ref().map(|s| s.span()), "password_file"),
                (c.prefix.as_ref().map(|s| s.span()), "prefix"),
            ] {
                if let Some(at) = given {
                    v.error(
                        at,
                        &key(k),
                        "does not apply to backend = \"kubernetes\" (it names etcd's connection)",
                    );
                }
            }
            let dns = |t: &str| {
                t.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            };
            let namespace = c.namespace.as_ref().map(|n| {
                let text = n.get_ref().trim();
                if text.is_empty() || text.len() > 63 || !dns(text) || text.starts_with('-') {
                    v.error(
                        n.span(),
                        &key("namespace"),
                        "must be a namespace's name: lowercase letters, digits and `-`",
                    );
                }
                text.to_string()
            });
            let lease_prefix = c.lease_prefix.as_ref().map_or_else(
                || "tokenkeeper-".to_string(),
                |p| {
                    let text = p.get_ref();
                    if text.is_empty()
                        || text.len() > 200
                        || !dns(text)
                        || !text.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    {
                        v.error(
                            p.span(),
                            &key("lease_prefix"),
                            "must start a Lease's name: lowercase letters, digits and `-`, starting with a letter or digit",
                        );
                    }
                    text.clone()
                },
            );
            let ca_file = located(v, &c.ca_file, "ca_file");
            let api = output::direct_kube_api(
                v,
                (&c.api_server, &c.token_file, ca_file),
                span.clone(),
                &key,
                "give api_server, token_file and ca_file",
            );
            Some(BackendPlan::Kubernetes {
                api: api?,
                namespace,
                lease_prefix,
            })
        }
        Some(ClusterBackend::Etcd) => {
            for (given, k) in [
                (c.namespace.as_ref().map(|s| s.span()), "namespace"),
                (c.api_server.as_ref().map(|s| s.span()), "api_server"),
                (c.token_file.as_ref().map(|s| s.span()), "token_file"),
                (c.lease_prefix.as_ref().map(|s| s.span()), "lease_prefix"),
            ] {
                if let Some(at) = given {
                    v.error(at, &key(k), "does not apply to backend = \"etcd\"");
                }
            }
            let endpoints = match &c.endpoints {
                Some(list) if !list.get_ref().is_empty() => {
                    let mut urls = Vec::new();
                    for e in list.get_ref() {
                        match Url::parse(e) {
                            Ok(u)
                                if matches!(u.scheme(), "http" | "https") && u.host().is_some() =>
                            {
                                urls.push(u)
                            }
                            _ => v.error(
                                list.span(),
                                &key("endpoints"),
                                format!("{e:?} is not an http:// or https:// URL"),
                            ),
                        }
                    }
                    let plain = urls.iter().any(|u| u.scheme() == "http");
                    let remote = urls.iter().any(|u| {
                        u.scheme() == "http"
                            && !matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
                    });
                    if plain && remote {
                        v.error(
                            list.span(),
                            &key("endpoints"),
                            "plain http:// is only for loopback: the store holds the tokens (encrypted) and the leases that decide who refreshes; use https://",
                        );
                    }
                    Some(urls)
                }
                _ => {
                    v.error(
                        c.endpoints.as_ref().map_or(span.clone(), |e| e.span()),
                        &key("endpoints"),
                        "is required: the etcd endpoints, e.g. [\"https://etcd-1:2379\"]",
                    );
                    None
                }
            };
            let (cert, client_key) = (
                located(v, &c.cert_file, "cert_file"),
                located(v, &c.key_file, "key_file"),
            );
            together(
                v,
                (&c.cert_file, "cert_file"),
                (&c.key_file, "key_file"),
                "cert_file and key_file come together (a client certificate and its key)",
            );
            together(
                v,
                (&c.username, "username"),
                (&c.password_file, "password_file"),
                "username and password_file come together",
            );
            let password = located(v, &c.password_file, "password_file");
            let username = c.username.as_ref().map(|u| u.get_ref().clone());
            let prefix = c
                .prefix
                .as_ref()
                .map_or("/tokenkeeper/".to_string(), |p| p.get_ref().clone());
            if prefix.is_empty() {
                v.error(
                    c.prefix.as_ref().map(|p| p.span()),
                    &key("prefix"),
                    "must not be empty: the members of one cluster share every key under it",
                );
            }
            Some(BackendPlan::Etcd {
                endpoints: endpoints?,
                ca_file: located(v, &c.ca_file, "ca_file"),
                client_cert: cert.zip(client_key),
                login: username.zip(password),
                prefix,
            })
        }
    };
    Some(ClusterPlan {
        name,
        lease_ttl,
        encryption_key: encryption_key?,
        backend: backend?,
    })
}

/// Two keys given together or not at all: the one missing is named.
fn together(v: &mut Validator<'_>, a: (&S<String>, &str), b: (&S<String>, &str), why: &str) {
    if a.0.is_some() != b.0.is_some() {
        let (given, missing) = if a.0.is_some() {
            (a.0, b.1)
        } else {
            (b.0, a.1)
        };
        v.error(
            given.as_ref().map(|s| s.span()),
            &format!("cluster.{missing}"),
            why,
        );
    }
}
