//! An output's hooks: `exec` and `signal`.

use crate::config::raw::RawOutput;
use crate::output::hooks::{ExecHook, Hooks, SignalHook, parse_signal};
use std::time::Duration;

use super::*;

pub(super) fn validate_hooks(v: &mut Validator<'_>, ok: &str, o: &RawOutput) -> Option<Hooks> {
    let key = |k: &str| format!("{ok}.{k}");
    let before = v.diagnostics.len();
    let exec = match &o.exec {
        Some(argv) if argv.get_ref().is_empty() || argv.get_ref()[0].is_empty() => {
            v.error(
                argv.span(),
                &key("exec"),
                "must name a program: exec = [\"/usr/bin/systemctl\", \"reload\", \"app\"]",
            );
            None
        }
        Some(argv) => Some(ExecHook {
            argv: argv.get_ref().clone(),
            timeout: v.duration(
                &o.exec_timeout,
                None,
                &key("exec_timeout"),
                Duration::from_secs(10),
            ),
            pass_token: o.exec_pass_token.as_ref().is_some_and(|p| *p.get_ref()),
        }),
        None => {
            for (f, k) in [
                (o.exec_timeout.as_ref().map(|s| s.span()), "exec_timeout"),
                (
                    o.exec_pass_token.as_ref().map(|s| s.span()),
                    "exec_pass_token",
                ),
            ] {
                if let Some(f) = f {
                    v.error(f, &key(k), "applies only with exec");
                }
            }
            None
        }
    };
    let signal = match (&o.signal, &o.pid_file) {
        (Some(s), Some(p)) => match parse_signal(s.get_ref()) {
            Some(signal) => v
                .path(p, &key("pid_file"))
                .map(|pid_file| SignalHook { signal, pid_file }),
            None => {
                v.error(
                    s.span(),
                    &key("signal"),
                    format!(
                        "{:?} is not a signal name; write e.g. \"HUP\" or \"USR1\"",
                        s.get_ref()
                    ),
                );
                None
            }
        },
        (Some(s), None) => {
            v.error(
                s.span(),
                &key("pid_file"),
                "is required with signal (the file holding the consumer's pid)",
            );
            None
        }
        (None, Some(p)) => {
            v.error(p.span(), &key("pid_file"), "applies only with signal");
            None
        }
        (None, None) => None,
    };
    (v.diagnostics.len() == before).then_some(Hooks { exec, signal })
}
