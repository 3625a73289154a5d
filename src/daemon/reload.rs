//! Reload: the diff between two sets of clients (pure), and the watcher that
//! notices edits of the config file.

use crate::config::ClientSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Which clients were added, changed (any setting, secret or output), removed
/// or left alone between `old` and `new`.
pub fn diff(
    old: &BTreeMap<String, Arc<ClientSpec>>,
    new: &BTreeMap<String, Arc<ClientSpec>>,
) -> Diff {
    let mut d = Diff::default();
    for (name, spec) in new {
        match old.get(name) {
            None => d.added.push(name.clone()),
            Some(prev) if prev == spec => d.unchanged.push(name.clone()),
            Some(_) => d.changed.push(name.clone()),
        }
    }
    d.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect();
    d
}

/// Watches the directory of `config` (editors and Kubernetes ConfigMaps
/// replace files by rename, which a watch on the file itself would lose) and
/// sends `()` on `tx` when something that may be the config changes: the file
/// itself, or a `..data`-style entry of a ConfigMap volume. The receiver
/// debounces and compares a digest before reloading.
pub fn watch_config(
    config: &Path,
    tx: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let name = config
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| match p.file_name() {
            Some(n) => n == name || n.to_string_lossy().starts_with(".."),
            None => false,
        });
        if relevant {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn clients(toml: &str) -> BTreeMap<String, Arc<ClientSpec>> {
        load_str(Path::new("/etc/tk/config.toml"), toml, &|_| None)
            .unwrap()
            .clients
    }

    fn client(name: &str, scope: &str) -> String {
        format!(
            "[clients.{name}]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nscope = \"{scope}\"\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"/run/tk/{name}\"\n"
        )
    }

    #[test]
    fn added_changed_removed_unchanged() {
        let old = clients(&(client("a", "x") + &client("b", "x") + &client("c", "x")));
        let new = clients(&(client("a", "x") + &client("b", "y") + &client("d", "x")));
        assert_eq!(
            diff(&old, &new),
            Diff {
                added: vec!["d".into()],
                changed: vec!["b".into()],
                removed: vec!["c".into()],
                unchanged: vec!["a".into()],
            }
        );
        assert!(diff(&old, &old).is_empty());
    }
}
