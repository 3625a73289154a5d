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
use super::one::{self, Sections};
use super::validate::{self, ClientPlan, Taken};
use super::{ClientSpec, Config, ConfigError, raw};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What a loaded config keeps of its file to reload an edit by the clients
/// it touched (about 300 bytes per client).
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// `None`: not the plain layout; every reload reads the whole file.
    sections: Option<Sections>,
    outputs: HashMap<String, Outputs>,
}

/// One client's outputs, as the checks across clients see them.
#[derive(Clone, Debug, Default)]
struct Outputs {
    /// (key, what it writes to): validation's check.
    identities: Vec<(String, String)>,
    /// Its file outputs: building's check.
    files: Vec<FileSeen>,
}

impl Index {
    /// The index of `text`, whose validated clients are `plans` (before
    /// they are built; see [`Index::with_files`]).
    pub(super) fn new(text: &str, plans: &[ClientPlan]) -> Index {
        Index {
            sections: one::sections(text),
            outputs: plans
                .iter()
                .map(|c| (c.name.clone(), Outputs::of(c)))
                .collect(),
        }
    }

    /// With the file outputs building saw.
    pub(super) fn with_files(mut self, files: Vec<FileSeen>) -> Index {
        add_files(&mut self.outputs, files);
        self
    }
}

fn add_files(outputs: &mut HashMap<String, Outputs>, files: Vec<FileSeen>) {
    for f in files {
        outputs.entry(f.client.clone()).or_default().files.push(f);
    }
}

impl Outputs {
    fn of(plan: &ClientPlan) -> Outputs {
        Outputs {
            identities: plan
                .outputs
                .iter()
                .map(|o| (o.key.clone(), o.identity.clone()))
                .collect(),
            files: Vec::new(),
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
    sections: Sections,
    outputs: HashMap<String, Outputs>,
}

impl Config {
    /// Reads the config file again: by the clients an edit touched when
    /// only clients' tables changed (see the module), else whole.
    pub fn reload(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Reload, ConfigError> {
        let text = super::read_text(&self.path)?;
        let whole = || super::load_str(&self.path, &text, env).map(Reload::Whole);
        let (Some(old), Some(new)) = (&self.index.sections, one::sections(&text)) else {
            return whole();
        };
        if old.shared != new.shared || new.clients.is_empty() {
            return whole();
        }
        let touched: HashSet<&str> = new
            .clients
            .iter()
            .filter(|(name, digest)| old.clients.get(*name) != Some(digest))
            .map(|(name, _)| name.as_str())
            .collect();
        if touched.len() * 2 > new.clients.len() {
            return whole();
        }
        let removed: Vec<String> = old
            .clients
            .keys()
            .filter(|name| !new.clients.contains_key(*name))
            .cloned()
            .collect();
        // what the clients left alone write to
        let left = self.index.outputs.iter().filter(|(name, _)| {
            new.clients.contains_key(*name) && !touched.contains(name.as_str())
        });
        let taken: Taken = left
            .clone()
            .flat_map(|(_, o)| o.identities.iter().map(|(k, i)| (i.clone(), k.clone())))
            .collect();
        let known: Vec<FileSeen> = left.flat_map(|(_, o)| o.files.iter().cloned()).collect();

        let mut edit = Edit {
            clients: BTreeMap::new(),
            removed,
            digest: super::digest(text.as_bytes()),
            sections: new.clone(),
            outputs: HashMap::new(),
        };
        if touched.is_empty() {
            return Ok(Reload::Edit(edit));
        }
        let Some((view, _)) = one::view(&text, |name| touched.contains(name)) else {
            return whole();
        };
        let fail = |diagnostics| ConfigError::new(&self.path, &text, view.remap(diagnostics));
        let (raw, mut diagnostics) = raw::parse_only(&view.text, None);
        if raw.not_toml {
            return Err(fail(diagnostics));
        }
        let (plan, invalid) = validate::validate(&raw, &super::base(&self.path), env, taken);
        diagnostics.extend(invalid);
        let mut outputs: HashMap<String, Outputs> = plan
            .clients
            .iter()
            .map(|c| (c.name.clone(), Outputs::of(c)))
            .collect();
        let (clients, files) = match super::build::build(plan.clients, env, &known) {
            Ok(built) if diagnostics.is_empty() => built,
            Ok(_) => return Err(fail(diagnostics)),
            Err(unbuildable) => {
                diagnostics.extend(unbuildable);
                return Err(fail(diagnostics));
            }
        };
        add_files(&mut outputs, files);
        edit.clients = clients;
        edit.outputs = outputs;
        Ok(Reload::Edit(edit))
    }

    /// Takes in `edit` (once its clients are running): the index and the
    /// digest now describe the edited file.
    pub fn commit(&mut self, edit: Edit) {
        let Edit {
            removed,
            digest,
            sections,
            outputs,
            ..
        } = edit;
        for name in &removed {
            self.index.outputs.remove(name);
        }
        self.index.outputs.extend(outputs);
        self.index.sections = Some(sections);
        self.digest = digest;
    }
}
