//! One client's view of a config file, for `token NAME` and `once --client
//! NAME`, and the file's sections, for a reload of the clients an edit
//! touched.
//!
//! A view is the text without the other clients' tables, so parsing it
//! costs what the clients kept cost, whatever the file's size; each run of
//! kept lines remembers where it was in the file, and [`View::remap`]
//! moves the spans of what is wrong back to the file's own lines.
//!
//! Only the plain layout is recognised — `[clients.NAME]`,
//! `[[clients.NAME.outputs]]`, `[clients.NAME.…]` headers at the start of
//! a line — and anything else (a `[clients]` table, quoted or dotted
//! `clients` keys outside a header, a header inside a multi-line string we
//! cannot follow) makes [`walk`] give up, and the caller parses the whole
//! file: a view is an optimisation, never a second reading of TOML.

use super::Diagnostic;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Whose a line of the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner<'t> {
    /// Before any table, `[daemon]` or `[defaults]`: every client's.
    Shared,
    /// In one of the tables of the client so named.
    Client(&'t str),
}

/// Calls `each` with every line of `text` (its newline included), where it
/// starts, and whose it is; `None` when the layout is not the plain one.
fn walk<'t>(text: &'t str, mut each: impl FnMut(usize, &'t str, Owner<'t>)) -> Option<()> {
    let mut at = 0;
    let mut owner = Owner::Shared;
    let mut in_tables = false;
    // inside a multi-line string: its delimiter
    let mut open: Option<&str> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if open.is_none() && trimmed.starts_with('[') {
            in_tables = true;
            let header = header(trimmed)?;
            owner = match header.split_once('.') {
                _ if header == "daemon" || header == "defaults" || header == "cluster" => {
                    Owner::Shared
                }
                Some(("defaults", _)) => Owner::Shared,
                Some(("clients", rest)) => Owner::Client(rest.split('.').next().unwrap_or(rest)),
                // `[clients]`, or a table tokenkeeper does not know (whose
                // error the full parse reports)
                _ => return None,
            };
        } else if open.is_none() && !in_tables && trimmed.starts_with("clients") {
            // a `clients` key before any header
            return None;
        }
        // one pass over most lines: only a line with three quotes in a row
        // can open or close a multi-line string
        if has_triple(line) {
            if line.contains(r#"\""""#) {
                // an escaped delimiter: not worth following
                return None;
            }
            for delimiter in [r#"""""#, "'''"] {
                let odd = line.matches(delimiter).count() % 2 == 1;
                match open {
                    Some(d) if d == delimiter && odd => open = None,
                    None if odd => open = Some(delimiter),
                    _ => {}
                }
            }
        }
        each(at, line, owner);
        at += line.len();
    }
    Some(())
}

/// Whether `line` holds three quotes of one kind in a row.
fn has_triple(line: &str) -> bool {
    let (mut quote, mut run) = (0u8, 0);
    for &b in line.as_bytes() {
        if b == b'"' || b == b'\'' {
            run = if b == quote { run + 1 } else { 1 };
            quote = b;
            if run == 3 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The lines of a file a view kept, and where they were in it.
#[derive(Debug)]
pub struct View {
    pub text: String,
    /// (offset in `text`, offset in the file) where each run of kept lines
    /// starts, ascending.
    runs: Vec<(usize, usize)>,
}

impl View {
    /// Where offset `at` of the view is in the file.
    fn original(&self, at: usize) -> usize {
        let i = self
            .runs
            .partition_point(|(v, _)| *v <= at)
            .saturating_sub(1);
        self.runs.get(i).map_or(at, |(v, o)| o + (at - v))
    }

    /// `diagnostics` found in the view, their spans moved to the file.
    pub fn remap(&self, mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
        for d in &mut diagnostics {
            if let Some(span) = &mut d.span {
                let start = self.original(span.start);
                // the end is exclusive: it may be where the next run starts
                let end = if span.end > span.start {
                    self.original(span.end - 1) + 1
                } else {
                    start
                };
                *span = start..end;
            }
        }
        diagnostics
    }
}

/// The lines of `text` outside every client's tables (`[daemon]`,
/// `[defaults]`) and those of the clients `keep` says yes to; `None` when
/// the layout is not the plain one.
pub fn view(text: &str, keep: impl Fn(&str) -> bool) -> Option<View> {
    let mut view = View {
        text: String::new(),
        runs: Vec::new(),
    };
    // where the last kept line ended in the file
    let mut next = None;
    walk(text, |at, line, owner| {
        let kept = match owner {
            Owner::Shared => true,
            Owner::Client(name) => keep(name),
        };
        if kept {
            if next != Some(at) {
                view.runs.push((view.text.len(), at));
            }
            view.text.push_str(line);
            next = Some(at + line.len());
        }
    })?;
    Some(view)
}

/// The clients' names, in the order of the file; `None` when the layout is
/// not the plain one.
pub fn names(text: &str) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    walk(text, |_, _, owner| {
        if let Owner::Client(name) = owner {
            if seen.insert(name) {
                names.push(name.to_string());
            }
        }
    })?;
    Some(names)
}

/// A file of the plain layout by its parts: a digest of everything every
/// client reads (the lines outside the clients' tables), and one of each
/// client's lines. Two files whose `shared` digests agree differ only in
/// the clients whose digests differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sections {
    pub shared: [u8; 32],
    pub clients: HashMap<String, [u8; 32]>,
}

/// The [`Sections`] of `text`; `None` when the layout is not the plain one.
pub fn sections(text: &str) -> Option<Sections> {
    let mut shared = Sha256::new();
    let mut clients: HashMap<&str, Sha256> = HashMap::new();
    walk(text, |_, line, owner| match owner {
        Owner::Shared => shared.update(line),
        Owner::Client(name) => clients.entry(name).or_default().update(line),
    })?;
    Some(Sections {
        shared: shared.finalize().into(),
        clients: clients
            .into_iter()
            .map(|(name, h)| (name.to_string(), h.finalize().into()))
            .collect(),
    })
}

/// The dotted name of a table header line (`[a.b]` or `[[a.b]]`), if it is
/// a plain one: bare keys only, and nothing after it but a comment.
fn header(line: &str) -> Option<&str> {
    let (inner, rest) = if let Some(r) = line.strip_prefix("[[") {
        let end = r.find("]]")?;
        (&r[..end], &r[end + 2..])
    } else {
        let r = line.strip_prefix('[')?;
        let end = r.find(']')?;
        (&r[..end], &r[end + 1..])
    };
    let rest = rest.trim();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    let inner = inner.trim();
    let bare = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    inner.split('.').map(str::trim).all(bare).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# tokens\n[daemon]\nstate_dir = \"/s\"\n\n[defaults]\ntimeout = \"5s\"\n\n[clients.a]\ntoken_url = \"https://a/t\"\n[[clients.a.outputs]]\npath = \"/a\"\n\n[clients.b]\nnote = \"\"\"\n[clients.x]\n\"\"\"\ntoken_url = \"https://b/t\" # ü\n[clients.b.params]\nk = \"v\"\n[[clients.b.outputs]]\npath = \"/b\"\n";

    #[test]
    fn only_the_named_client_is_left_and_every_span_finds_its_place_in_the_file() {
        let b = view(TEXT, |n| n == "b").unwrap();
        assert!(b.text.contains("[daemon]") && b.text.contains("timeout = \"5s\""));
        assert!(!b.text.contains("https://a/t") && !b.text.contains("path = \"/a\""));
        assert!(
            b.text.contains("[clients.x]"),
            "inside b's multi-line string"
        );
        assert_eq!(
            names(TEXT).unwrap(),
            ["a", "b"],
            "x is no client: it is in a string"
        );
        // a span in the view is the same text in the file
        for needle in [
            "[daemon]",
            "timeout = \"5s\"",
            "[clients.b.params]",
            "# ü\n[clients.b.params]",
            "path = \"/b\"\n",
        ] {
            let at = b.text.find(needle).unwrap();
            let d = Diagnostic {
                span: Some(at..at + needle.len()),
                key: String::new(),
                message: String::new(),
            };
            let span = b.remap(vec![d])[0].span.clone().unwrap();
            assert_eq!(&TEXT[span], needle);
        }
        let a = view(TEXT, |n| n == "a").unwrap();
        assert!(a.text.contains("https://a/t") && !a.text.contains("https://b/t"));
        assert!(!a.text.contains("[clients.x]"));
        let none = view(TEXT, |n| n == "c").unwrap();
        assert!(!none.text.contains("[clients."));
    }

    #[test]
    fn sections_change_with_their_own_lines_alone() {
        let before = sections(TEXT).unwrap();
        assert_eq!(before.clients.len(), 2, "a and b; x is in a string");
        let b_edited = sections(&TEXT.replace("k = \"v\"", "k = \"w\"")).unwrap();
        assert_eq!(b_edited.shared, before.shared);
        assert_eq!(b_edited.clients["a"], before.clients["a"]);
        assert_ne!(b_edited.clients["b"], before.clients["b"]);
        let shared_edited = sections(&TEXT.replace("5s", "6s")).unwrap();
        assert_ne!(shared_edited.shared, before.shared);
        assert_eq!(shared_edited.clients, before.clients);
    }

    #[test]
    fn any_other_layout_is_left_to_the_full_parse() {
        for text in [
            "[clients]\na = { token_url = \"x\" }\n",
            "clients.a.token_url = \"x\"\n",
            "[clients.\"a\"]\ntoken_url = \"x\"\n",
            "[clients.a] token_url = \"x\"\n",
            "[somewhere]\nx = 1\n",
        ] {
            assert!(view(text, |n| n == "a").is_none(), "{text}");
        }
    }
}
