//! Reloading an edit by the clients it touched.
//!
//! A config of the plain layout (see [`one`](super::one)) is kept with its
//! [`Index`]: a digest of the part every client reads (`[daemon]`,
//! `[defaults]`) and one of each client's lines, and what each client's
//! outputs write to. When the file changes and the shared part did not, only
//! the clients whose lines changed are parsed, validated and built — from a
//! view of the file without the others, whose errors are moved back to the
//! file's own lines — and checked against the outputs of the clients left
//! alone. Anything else (the shared part changed, another layout, most
//! clients touched) reads the whole file, as at start.

use super::build::FileSeen;
use super::one;
use super::validate::{self, ClientPlan, OutputKindPlan, Taken};
use super::{ClientSpec, Config, ConfigError, raw};
use crate::output::Layout;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// What a loaded config keeps of its file to reload an edit by the clients
/// it touched (a digest and what its outputs write to, per client).
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// The digest of the shared part; `None`: not the plain layout, and
    /// every reload reads the whole file.
    shared: Option<[u8; 32]>,
    clients: HashMap<Box<str>, Indexed>,
}

/// One client: the digest of its lines, and its outputs.
#[derive(Clone, Debug)]
struct Indexed {
    digest: [u8; 32],
    outputs: Box<[Seen]>,
}

/// One output, as the checks across clients see it (its key is
/// `clients.NAME.outputs[i]`, from its place).
#[derive(Clone, Debug)]
enum Seen {
    File {
        path: Box<Path>,
        /// Where it was on disk, when that is not `path`.
        real: Option<Box<Path>>,
        set: bool,
    },
    /// What a remote output writes to ([`ClientPlan`]'s outputs' identity).
    Remote(Box<str>),
}

impl Index {
    /// The index of `text`, whose validated clients are `plans` (before
    /// they are built; see [`Index::with_files`]).
    pub(super) fn new(text: &str, plans: &[ClientPlan]) -> Index {
        let sections = one::sections(text);
        let digest = |name: &str| {
            sections
                .as_ref()
                .and_then(|s| s.clients.get(name).copied())
                .unwrap_or_default()
        };
        Index {
            shared: sections.as_ref().map(|s| s.shared),
            clients: plans
                .iter()
                .map(|c| (c.name.as_str().into(), Indexed::of(c, digest(&c.name))))
                .collect(),
        }
    }

    /// With where building found the file outputs on disk.
    pub(super) fn with_files(mut self, files: Vec<FileSeen>) -> Index {
        add_files(&mut self.clients, files);
        self
    }

    /// What the clients `alone` write to: validation's and building's
    /// views of it.
    fn outside(&self, alone: impl Fn(&str) -> bool) -> (Taken, Vec<FileSeen>) {
        let (mut taken, mut files) = (Taken::new(), Vec::new());
        for (name, c) in self.clients.iter().filter(|(name, _)| alone(name)) {
            for (i, seen) in c.outputs.iter().enumerate() {
                let key = format!("clients.{name}.outputs[{i}]");
                match seen {
                    Seen::File { path, real, set } => {
                        taken.insert(validate::file_identity(path), key.clone());
                        files.push(FileSeen {
                            client: name.to_string(),
                            key,
                            path: path.to_path_buf(),
                            real: real.as_deref().unwrap_or(path).to_path_buf(),
                            set: *set,
                        });
                    }
                    Seen::Remote(identity) => {
                        taken.insert(identity.to_string(), key);
                    }
                }
            }
        }
        (taken, files)
    }
}

impl Indexed {
    fn of(plan: &ClientPlan, digest: [u8; 32]) -> Indexed {
        let outputs = plan
            .outputs
            .iter()
            .map(|o| match &o.kind {
                OutputKindPlan::File { path, layout, .. } => Seen::File {
                    path: path.as_path().into(),
                    real: None,
                    set: *layout == Layout::AtomicDir,
                },
                _ => Seen::Remote(o.identity.as_str().into()),
            })
            .collect();
        Indexed { digest, outputs }
    }
}

/// Notes where `files` were on disk, where that is not their path.
fn add_files(clients: &mut HashMap<Box<str>, Indexed>, files: Vec<FileSeen>) {
    for f in files.into_iter().filter(|f| f.real != f.path) {
        let Some(c) = clients.get_mut(f.client.as_str()) else {
            continue;
        };
        for seen in c.outputs.iter_mut() {
            if let Seen::File { path, real, .. } = seen {
                if **path == *f.path {
                    *real = Some(f.real.as_path().into());
                }
            }
        }
    }
}

/// What a reload found.
pub enum Reload {
    /// The file, read whole.
    Whole(Config),
    /// Only some clients' tables changed; those were read again.
    Edit(Edit),
}

/// The clients an edit touched, read again.
pub struct Edit {
    /// The touched clients still there, built: added, changed, or as they
    /// were (a comment in their table changed).
    pub clients: BTreeMap<String, Arc<ClientSpec>>,
    /// The clients whose tables are gone.
    pub removed: Vec<String>,
    digest: [u8; 32],
    indexed: HashMap<Box<str>, Indexed>,
}

impl Config {
    /// Reads the config file again: by the clients an edit touched when
    /// only clients' tables changed (see the module), else whole.
    pub fn reload(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Reload, ConfigError> {
        let text = super::read_text(&self.path)?;
        let whole = || super::load_str(&self.path, &text, env).map(Reload::Whole);
        let (Some(shared), Some(new)) = (self.index.shared, one::sections(&text)) else {
            return whole();
        };
        if shared != new.shared || new.clients.is_empty() {
            return whole();
        }
        let old = &self.index.clients;
        let touched: HashSet<&str> = new
            .clients
            .iter()
            .filter(|(name, digest)| old.get(name.as_str()).map(|c| &c.digest) != Some(digest))
            .map(|(name, _)| name.as_str())
            .collect();
        if touched.len() * 2 > new.clients.len() {
            return whole();
        }
        let removed: Vec<String> = old
            .keys()
            .filter(|name| !new.clients.contains_key(&***name))
            .map(|name| name.to_string())
            .collect();
        let mut edit = Edit {
            clients: BTreeMap::new(),
            removed,
            digest: super::digest(text.as_bytes()),
            indexed: HashMap::new(),
        };
        if touched.is_empty() {
            return Ok(Reload::Edit(edit));
        }
        let (taken, known) = self
            .index
            .outside(|name| new.clients.contains_key(name) && !touched.contains(name));
        let Some(view) = one::view(&text, |name| touched.contains(name)) else {
            return whole();
        };
        let fail = |diagnostics| ConfigError::new(&self.path, &text, view.remap(diagnostics));
        let (raw, mut diagnostics) = raw::parse_only(&view.text, None);
        if raw.not_toml {
            return Err(fail(diagnostics));
        }
        let (plan, invalid) = validate::validate(&raw, &super::base(&self.path), env, taken);
        diagnostics.extend(invalid);
        let mut indexed: HashMap<Box<str>, Indexed> = plan
            .clients
            .iter()
            .map(|c| {
                let digest = new.clients.get(&c.name).copied().unwrap_or_default();
                (c.name.as_str().into(), Indexed::of(c, digest))
            })
            .collect();
        let (clients, files) = match super::build::build(plan.clients, env, &known) {
            Ok(built) if diagnostics.is_empty() => built,
            Ok(_) => return Err(fail(diagnostics)),
            Err(unbuildable) => {
                diagnostics.extend(unbuildable);
                return Err(fail(diagnostics));
            }
        };
        add_files(&mut indexed, files);
        edit.clients = clients;
        edit.indexed = indexed;
        Ok(Reload::Edit(edit))
    }

    /// Takes in `edit` (once its clients are running): the index and the
    /// digest now describe the edited file.
    pub fn commit(&mut self, edit: Edit) {
        let Edit {
            removed,
            digest,
            indexed,
            ..
        } = edit;
        for name in &removed {
            self.index.clients.remove(name.as_str());
        }
        self.index.clients.extend(indexed);
        self.digest = digest;
    }
}
