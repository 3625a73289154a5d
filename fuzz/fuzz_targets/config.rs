//! The config parser and validator (pure: no file is read) over arbitrary
//! text: never a panic, every error points into the file, and printing the
//! errors (`file:line:column: key: message`) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tokenkeeper::internals::{ConfigError, raw, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (raw, mut diagnostics) = raw::parse(text);
    if !raw.not_toml {
        let env = |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| "/run/creds".to_string());
        let (_plan, invalid) = validate::validate(&raw, Path::new("/etc/tokenkeeper"), &env, Default::default());
        diagnostics.extend(invalid);
    }
    for d in &diagnostics {
        if let Some(span) = &d.span {
            assert!(
                span.start <= span.end && span.end <= text.len(),
                "span {span:?} outside a {}-byte file: {}: {}",
                text.len(),
                d.key,
                d.message
            );
        }
        assert!(!d.message.is_empty(), "an empty message for {}", d.key);
    }
    let errors = diagnostics.len();
    let shown = ConfigError {
        path: "/etc/tokenkeeper/config.toml".into(),
        text: text.to_string(),
        diagnostics,
    }
    .to_string();
    assert_eq!(shown.lines().count() >= errors, true, "{shown}");
});
