//! Telling consumers: an `exec` hook (an argv, no shell, killed at its
//! timeout) and a `signal` hook (a signal to the pid in a pid file, re-read at
//! every use). Both run only after a write that changed something, and only
//! once the write is durable.

use crate::token::{Token, rfc3339};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hooks {
    pub exec: Option<ExecHook>,
    pub signal: Option<SignalHook>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecHook {
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Also pass the token as TOKENKEEPER_ACCESS_TOKEN (off unless asked).
    pub pass_token: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalName(pub nix::sys::signal::Signal);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalHook {
    pub signal: SignalName,
    pub pid_file: PathBuf,
}

/// Parses `HUP`, `SIGHUP`, `usr1`, ...
pub fn parse_signal(name: &str) -> Option<SignalName> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(SignalName)
}

impl ExecHook {
    /// Runs the command; an error says what went wrong (exit status, timeout).
    pub async fn run(&self, client: &str, output: &str, token: &Token) -> Result<(), String> {
        let (program, args) = self.argv.split_first().ok_or("exec is empty")?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env("TOKENKEEPER_CLIENT", client)
            .env("TOKENKEEPER_OUTPUT", output)
            .env("TOKENKEEPER_EXPIRES_AT", rfc3339(token.expires_at))
            .env_remove("TOKENKEEPER_ACCESS_TOKEN")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if self.pass_token {
            command.env("TOKENKEEPER_ACCESS_TOKEN", token.access_token.expose());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
            Ok(Err(e)) => Err(format!("{program}: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                Err(format!(
                    "{program} did not finish within {}; killed",
                    humantime::format_duration(self.timeout)
                ))
            }
        }
    }
}

impl SignalHook {
    /// Sends the signal to the pid in the pid file, read now.
    pub fn send(&self) -> Result<i32, String> {
        let text = crate::fsread::read_to_string(&self.pid_file)
            .map_err(|e| format!("cannot read pid_file {}: {e}", self.pid_file.display()))?;
        let pid: i32 =
            text.trim().parse().ok().filter(|p| *p > 1).ok_or_else(|| {
                format!("pid_file {} holds no usable pid", self.pid_file.display())
            })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), self.signal.0)
            .map_err(|e| format!("cannot send {} to pid {pid}: {e}", self.signal.0))?;
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(
            parse_signal("HUP").unwrap().0,
            nix::sys::signal::Signal::SIGHUP
        );
        assert_eq!(
            parse_signal("sigusr1").unwrap().0,
            nix::sys::signal::Signal::SIGUSR1
        );
        assert!(parse_signal("NOPE").is_none());
    }
}
