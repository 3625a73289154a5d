//! One client's view of a config file, for `token NAME` and `once --client
//! NAME`: the text with every other client's tables blanked out (each byte
//! a space, newlines kept), so parsing it costs little more than the named
//! client, and every span still points into the original file.
//!
//! Only the plain layout is recognised — `[clients.NAME]`,
//! `[[clients.NAME.outputs]]`, `[clients.NAME.…]` headers at the start of
//! a line — and anything else (a `[clients]` table, quoted or dotted
//! `clients` keys outside a header, a header inside a multi-line string we
//! cannot follow) makes [`view`] give up, and the caller parses the whole
//! file: the view is an optimisation, never a second reading of TOML.

/// `text` with only `[daemon]`, `[defaults]` and the client `name` left, and
/// the names of the other clients; `None` when the layout is not the plain
/// one.
pub fn view(text: &str, name: &str) -> Option<(String, Vec<String>)> {
    let mut out = String::with_capacity(text.len());
    let mut others: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut keep, mut in_tables) = (true, false);
    // inside a multi-line string: its delimiter
    let mut open: Option<&str> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if open.is_none() && trimmed.starts_with('[') {
            in_tables = true;
            let header = header(trimmed)?;
            keep = match header.split_once('.') {
                _ if header == "daemon" || header == "defaults" => true,
                Some(("defaults", _)) => true,
                Some(("clients", rest)) => {
                    let client = rest.split('.').next().unwrap_or(rest);
                    if client != name && seen.insert(client) {
                        others.push(client.to_string());
                    }
                    client == name
                }
                // `[clients]`, or a table tokenkeeper does not know (whose
                // error the full parse reports)
                _ => return None,
            };
        } else if open.is_none() && !in_tables && trimmed.starts_with("clients") {
            // a `clients` key before any header
            return None;
        }
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
        if keep {
            out.push_str(line);
        } else {
            // a space per byte: every offset after it stays where it was
            out.extend(line.bytes().map(|b| if b == b'\n' { '\n' } else { ' ' }));
        }
    }
    Some((out, others))
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
    fn only_the_named_client_is_left_and_every_offset_stays() {
        let (b, others) = view(TEXT, "b").unwrap();
        assert_eq!(b.len(), TEXT.len());
        assert_eq!(b.lines().count(), TEXT.lines().count());
        assert!(b.contains("[daemon]") && b.contains("timeout = \"5s\""));
        assert!(!b.contains("https://a/t") && !b.contains("path = \"/a\""));
        let at = TEXT.find("[clients.b.params]").unwrap();
        assert_eq!(&b[at..at + 18], "[clients.b.params]");
        assert!(b.contains("[clients.x]"), "inside b's multi-line string");
        assert_eq!(others, ["a"], "x is no client: it is in a string");
        let (a, others) = view(TEXT, "a").unwrap();
        assert!(a.contains("https://a/t") && !a.contains("https://b/t"));
        assert!(!a.contains("[clients.x]"));
        assert_eq!(others, ["b"]);
        let (none, others) = view(TEXT, "c").unwrap();
        assert!(!none.contains("[clients."));
        assert_eq!(others, ["a", "b"]);
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
            assert!(view(text, "a").is_none(), "{text}");
        }
    }
}
