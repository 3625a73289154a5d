//! The command line: parse arguments, load the config, dispatch. Exit
//! statuses follow the contract: 0 success, 1 failure, 2 invalid config.

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, LogFormat};
use crate::daemon;
use crate::grant::http::HttpTokenSource;
use crate::state::StateStore;
use crate::telemetry::{logging, status};
use crate::token::{rfc3339, unix_seconds};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tokenkeeper",
    version,
    about = "Keeps OAuth 2.0 access tokens fresh in files"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(
        long,
        short = 'c',
        env = "TOKENKEEPER_CONFIG",
        default_value = "/etc/tokenkeeper/config.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Keep every client's token fresh in its outputs until SIGTERM/SIGINT.
    Run(ConfigArg),
    /// Fetch a token for every client, write every output, and exit.
    Once(ConfigArg),
    /// Validate the config (and that secret files are readable) without network.
    Check(ConfigArg),
    /// Print a currently valid access token for one client.
    Token {
        /// The client's name, as in [clients.NAME].
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask the running daemon for a new token for one client now, wait until
    /// every output of the client holds it, and print it.
    ///
    /// For a consumer the endpoint just refused (HTTP 401): a hundred callers
    /// asking at once cause one request. Without a running daemon it fetches
    /// a new token itself, as `token` would (outputs are left alone).
    Refresh {
        /// The client's name, as in [clients.NAME].
        name: String,
        /// How long to wait for the new token.
        #[arg(long, default_value = "60s")]
        timeout: humantime::Duration,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show every client's last refresh, expiry, next refresh and last error.
    Status(ConfigArg),
    /// Run a demo: a local token issuer and the daemon writing to ./tokenkeeper-dev/.
    Dev(DevArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the demo's config, state and token files go.
    #[arg(long, default_value = "tokenkeeper-dev")]
    pub dir: PathBuf,
    /// Lifetime of the demo tokens.
    #[arg(long, default_value = "30s")]
    pub lifetime: humantime::Duration,
}

const OK: u8 = 0;
const FAILED: u8 = 1;
const INVALID_CONFIG: u8 = 2;

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        // file writes are short and fsync-bound: a few threads do; thousands
        // of clients refreshing together must not spawn hundreds
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("tokenkeeper: cannot start the async runtime: {e}");
            ExitCode::from(FAILED)
        })
}

/// SIGHUP and SIGUSR1 end a process that handles neither, and the daemon
/// sets up its own handlers only once the config is loaded and the state
/// opened — most of a second at 10,000 clients, when a `systemctl reload`
/// right after start would kill it. From here on they are caught; until the
/// daemon listens, they have nothing to do (there is no config to reload,
/// and every client fetches as it starts).
fn catch_early_signals(rt: &tokio::runtime::Runtime) {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = rt.enter();
    for kind in [SignalKind::hangup(), SignalKind::user_defined1()] {
        // the handler stays for the life of the process, whatever becomes
        // of this stream (tokio::signal's documented behaviour)
        if let Err(e) = signal(kind) {
            eprintln!(
                "tokenkeeper: cannot handle signal {}: {e}",
                kind.as_raw_value()
            );
        }
    }
}

fn load(arg: &ConfigArg) -> Result<Config, String> {
    config::load(&arg.config, &config::process_env).map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if matches!(cli.command, Command::Run(_) | Command::Dev(_)) {
        catch_early_signals(&rt);
    }
    match cli.command {
        Command::Run(arg) => {
            let config = match load(&arg) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(INVALID_CONFIG);
                }
            };
            logging::init(config.daemon.log_format);
            match rt.block_on(daemon::run(config, CancellationToken::new())) {
                Ok(()) => ExitCode::from(OK),
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(FAILED)
                }
            }
        }
        Command::Check(arg) => match load(&arg) {
            Ok(c) => {
                for warning in c.warnings() {
                    eprintln!("{}: warning: {warning}", arg.config.display());
                }
                let names: Vec<&str> = c.clients.keys().map(String::as_str).collect();
                println!(
                    "{}: ok, {} client(s): {}",
                    arg.config.display(),
                    names.len(),
                    names.join(", ")
                );
                ExitCode::from(OK)
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(INVALID_CONFIG)
            }
        },
        Command::Once(arg) => {
            let config = match load(&arg) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(INVALID_CONFIG);
                }
            };
            logging::init(config.daemon.log_format);
            let state = match StateStore::open(&config.daemon.state_dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("{e}; continuing without the token cache");
                    None
                }
            };
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let ok = rt.block_on(daemon::once::once(
                &config,
                Arc::new(HttpTokenSource::new()),
                state,
                clock,
            ));
            ExitCode::from(if ok { OK } else { FAILED })
        }
        Command::Token { name, config } => rt.block_on(token(&name, &config)),
        Command::Refresh {
            name,
            timeout,
            config,
        } => rt.block_on(refresh(&name, timeout.into(), &config)),
        Command::Status(arg) => status_command(&arg),
        Command::Dev(args) => rt.block_on(crate::dev::run(args)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "tokenkeeper", &mut std::io::stdout());
            ExitCode::from(OK)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::from(OK),
                Err(e) => {
                    eprintln!("tokenkeeper: {e}");
                    ExitCode::from(FAILED)
                }
            }
        }
    }
}

/// Whether a cached token is good enough for `token`: for a client whose
/// refresh token rotates, any token with more than `min_valid` (at least a
/// second) left — a new one would rotate the chain under the daemon; for
/// others, a quarter of its lifetime (at most a minute).
fn reusable(
    spec: &crate::config::ClientSpec,
    token: &crate::token::Token,
    now: SystemTime,
) -> bool {
    let left = if spec.request.grant.uses_refresh_tokens() {
        spec.policy.min_valid.max(Duration::from_secs(1))
    } else {
        (token.lifetime() / 4).min(Duration::from_secs(60))
    };
    token.remaining(now) > left
}

/// "no client named …" for `name`, which is not among `names`.
fn no_such_client<'a>(
    name: &str,
    arg: &ConfigArg,
    names: impl Iterator<Item = &'a str>,
) -> ExitCode {
    let names: Vec<&str> = names.collect();
    eprintln!(
        "tokenkeeper: no client named {name:?} in {} (clients: {})",
        arg.config.display(),
        names.join(", ")
    );
    ExitCode::from(FAILED)
}

/// The config and `name`'s spec in it, for `token` and `refresh`.
fn load_client(name: &str, arg: &ConfigArg) -> Result<(Config, Arc<config::ClientSpec>), ExitCode> {
    let config = load(arg).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(FAILED)
    })?;
    if std::env::var_os("RUST_LOG").is_some() {
        logging::init(LogFormat::Text);
    }
    match config.clients.get(name).cloned() {
        Some(spec) => Ok((config, spec)),
        None => Err(no_such_client(
            name,
            arg,
            config.clients.keys().map(String::as_str),
        )),
    }
}

async fn token(name: &str, arg: &ConfigArg) -> ExitCode {
    let (config, spec) = match load_client(name, arg) {
        Ok(found) => found,
        Err(code) => return code,
    };
    // without the lock first: a reader needs no more, and may not be the daemon's user
    let now = SystemTime::now();
    let resume = StateStore::at(&config.daemon.state_dir)
        .resume(&spec.request, name, now)
        .unwrap_or_default();
    if let Some(token) = resume.token.filter(|t| reusable(&spec, t, now)) {
        println!("{}", token.access_token.expose());
        return ExitCode::from(OK);
    }
    let reuse = |t: &crate::token::Token| reusable(&spec, t, SystemTime::now());
    fetch_here(&config, &spec, reuse).await
}

/// `tokenkeeper refresh NAME`: asks the daemon; without one, fetches here a
/// token issued after the command started.
async fn refresh(name: &str, wait: Duration, arg: &ConfigArg) -> ExitCode {
    use daemon::control::{Reply, Unreachable, ask};
    let since = SystemTime::now();
    // no secret is needed to ask the daemon
    let (state_dir, names) = match config::load_names(&arg.config, &config::process_env) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(FAILED);
        }
    };
    if !names.iter().any(|n| n == name) {
        return no_such_client(name, arg, names.iter().map(String::as_str));
    }
    match tokio::time::timeout(wait, ask(&state_dir, name, since)).await {
        Ok(Ok(Reply::Token { access_token, .. })) => {
            println!("{access_token}");
            ExitCode::from(OK)
        }
        Ok(Ok(Reply::Error { error })) => {
            eprintln!("tokenkeeper: {name}: {error}");
            ExitCode::from(FAILED)
        }
        Ok(Err(Unreachable::NoDaemon)) => {
            let (config, spec) = match load_client(name, arg) {
                Ok(found) => found,
                Err(code) => return code,
            };
            tracing::info!(client = %name, "no daemon answers for this state_dir; fetching here");
            let min_valid = spec.policy.min_valid;
            let reuse = |t: &crate::token::Token| {
                t.issued_at >= since && t.remaining(SystemTime::now()) > min_valid
            };
            fetch_here(&config, &spec, reuse).await
        }
        Ok(Err(Unreachable::Other(e))) => {
            eprintln!("tokenkeeper: {name}: cannot ask the daemon: {e}");
            ExitCode::from(FAILED)
        }
        Err(_) => {
            eprintln!(
                "tokenkeeper: {name}: no new token within {}",
                humantime::format_duration(wait)
            );
            ExitCode::from(FAILED)
        }
    }
}

/// A token for `spec` fetched by this process under the chain's lock (or
/// one in state_dir that `reuse` accepts), printed.
async fn fetch_here(
    config: &Config,
    spec: &Arc<config::ClientSpec>,
    reuse: impl Fn(&crate::token::Token) -> bool,
) -> ExitCode {
    let name = &spec.name;
    let store = StateStore::open(&config.daemon.state_dir);
    let source = HttpTokenSource::new();
    match daemon::once::get(&source, spec, store.as_ref().ok(), &SystemClock, reuse).await {
        Ok(got) => {
            println!("{}", got.token().access_token.expose());
            ExitCode::from(OK)
        }
        Err(e) => {
            let e = match &store {
                Err(open) => format!("{e} ({open})"),
                Ok(_) => e,
            };
            eprintln!("tokenkeeper: {name}: {e}");
            ExitCode::from(FAILED)
        }
    }
}

/// "3m ago", "in 12m", "now".
pub fn relative(t: i64, now: i64) -> String {
    let delta = t - now;
    let abs = delta.unsigned_abs();
    let amount = match abs {
        0..=1 => return "now".into(),
        2..=119 => format!("{abs}s"),
        120..=7199 => format!("{}m", abs / 60),
        7200..=172_799 => format!("{}h", abs / 3600),
        _ => format!("{}d", abs / 86_400),
    };
    if delta < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

fn status_command(arg: &ConfigArg) -> ExitCode {
    // no secret is needed to show the status, nor read
    let (state_dir, names) = match config::load_names(&arg.config, &config::process_env) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(INVALID_CONFIG);
        }
    };
    let store = StateStore::at(&state_dir);
    let now = unix_seconds(SystemTime::now());
    let file = status::read_status(&store.status_path()).ok();
    match &file {
        Some(f) if std::path::Path::new(&format!("/proc/{}", f.pid)).exists() => {
            println!(
                "daemon running (pid {}), status as of {}",
                f.pid,
                relative(f.written_at, now)
            )
        }
        Some(f) => println!(
            "daemon not running; last status from {}",
            rfc3339(crate::token::from_unix_millis(f.written_at * 1000))
        ),
        None => println!(
            "no status from a running daemon in {}; showing cached tokens",
            store.dir().display()
        ),
    }
    let mut rows = vec![
        [
            "CLIENT",
            "LAST REFRESH",
            "EXPIRES",
            "NEXT REFRESH",
            "FAILURES",
            "LAST ERROR",
        ]
        .map(String::from),
    ];
    for name in &names {
        let s = file
            .as_ref()
            .and_then(|f| f.clients.get(name))
            .cloned()
            .unwrap_or_else(|| {
                let mut s = status::ClientStatus::default();
                if let Ok(Some(c)) = store.load(name) {
                    s.last_refresh = Some(unix_seconds(c.token.issued_at));
                    s.expires_at = Some(unix_seconds(c.token.expires_at));
                }
                s
            });
        let show = |t: Option<i64>| t.map(|t| relative(t, now)).unwrap_or_else(|| "-".into());
        let mut error = s.last_error.clone().unwrap_or_default();
        if let Some((label, o)) = s.outputs.iter().find(|(_, o)| !o.ok) {
            error = format!("{label}: {}", o.last_error.clone().unwrap_or_default());
        }
        if s.needs_attention {
            error = format!("NEEDS ATTENTION: {error}");
        }
        rows.push([
            name.clone(),
            show(s.last_refresh),
            show(s.expires_at),
            show(s.next_refresh),
            s.consecutive_failures.to_string(),
            error,
        ]);
    }
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.into_iter().enumerate() {
        // red: needs attention or expired; yellow: failing; green: fine
        let paint = match (colour, i) {
            (false, _) | (_, 0) => "",
            _ if row[5].starts_with("NEEDS ATTENTION")
                || row[2] == "-"
                || row[2].ends_with(" ago") =>
            {
                "\x1b[31m"
            }
            _ if row[4] != "0" || !row[5].is_empty() => "\x1b[33m",
            _ => "\x1b[32m",
        };
        let mut line = String::from(paint);
        for (i, cell) in row.iter().enumerate() {
            if i < 5 {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        if !paint.is_empty() {
            line = format!("{}\x1b[0m", line.trim_end());
        }
        println!("{}", line.trim_end());
    }
    ExitCode::from(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(130, 100), "in 30s");
        assert_eq!(relative(100, 400), "5m ago");
        assert_eq!(relative(100 + 3 * 3600, 100), "in 3h");
        assert_eq!(relative(0, 3 * 86_400), "3d ago");
    }
}
