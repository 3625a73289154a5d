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
    #[cfg(test)]
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

/// What happened to the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigEvent {
    /// Renamed into place — the file itself or a ConfigMap's `..data` —
    /// as editors and Kubernetes replace files: it is whole, read it now.
    Replaced,
    /// Written in place, created, removed or re-moded: it may be
    /// half-written, so it is read after a quiet moment.
    Touched,
}

/// Whether `event` concerns the config file named `name` (or a
/// `..data`-style entry of a ConfigMap volume), and how.
pub fn classify(event: &notify::Event, name: &std::ffi::OsStr) -> Option<ConfigEvent> {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    let ours = |p: &PathBuf| match p.file_name() {
        Some(n) => n == name || n.to_string_lossy().starts_with(".."),
        None => false,
    };
    match event.kind {
        EventKind::Access(_) => None,
        // the destination of a rename: the last path (`Both` has two)
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
            if event.paths.last().is_some_and(ours) {
                Some(ConfigEvent::Replaced)
            } else if event.paths.iter().any(ours) {
                // renamed away (vim moves the old file to its backup first)
                Some(ConfigEvent::Touched)
            } else {
                None
            }
        }
        _ => event.paths.iter().any(ours).then_some(ConfigEvent::Touched),
    }
}

/// Watches the directory of `config` (editors and Kubernetes ConfigMaps
/// replace files by rename, which a watch on the file itself would lose) and
/// sends what happened on `tx`. The receiver debounces a [`ConfigEvent::Touched`]
/// and compares a digest before reloading.
pub fn watch_config(
    config: &Path,
    tx: mpsc::Sender<ConfigEvent>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
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
        // other events in the directory are not logged, even at trace: a
        // log file there would log its own writes, without end
        if let Some(change) = classify(&event, &name) {
            let _ = tx.try_send(change);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use notify::EventKind;
    use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};

    #[test]
    fn a_rename_into_place_is_read_at_once_anything_else_after_a_quiet_moment() {
        let event = |kind, paths: &[&str]| {
            paths.iter().fold(notify::Event::new(kind), |e, p| {
                e.add_path(PathBuf::from(p))
            })
        };
        let name = std::ffi::OsStr::new("config.toml");
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let create = EventKind::Create(CreateKind::File);
        for (kind, paths, expected) in [
            (
                to,
                &["/etc/tk/config.toml"][..],
                Some(ConfigEvent::Replaced),
            ),
            (
                both,
                &["/etc/tk/.config.toml.swp", "/etc/tk/config.toml"],
                Some(ConfigEvent::Replaced),
            ),
            (to, &["/etc/tk/..data"], Some(ConfigEvent::Replaced)),
            // vim: the old file renamed to its backup, then a new one written
            (
                both,
                &["/etc/tk/config.toml", "/etc/tk/config.toml~"],
                Some(ConfigEvent::Touched),
            ),
            (from, &["/etc/tk/config.toml"], Some(ConfigEvent::Touched)),
            (create, &["/etc/tk/config.toml"], Some(ConfigEvent::Touched)),
            (data, &["/etc/tk/config.toml"], Some(ConfigEvent::Touched)),
            (to, &["/etc/tk/other.toml"], None),
            (data, &["/etc/tk/other.toml"], None),
            (
                EventKind::Access(notify::event::AccessKind::Any),
                &["/etc/tk/config.toml"],
                None,
            ),
        ] {
            assert_eq!(
                classify(&event(kind, paths), name),
                expected,
                "{kind:?} {paths:?}"
            );
        }
    }

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
