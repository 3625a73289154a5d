//! The command line: parse arguments, load the config, dispatch. A command
//! that ends badly returns an [`Exit`], printed and turned into the
//! contract's status (1 failure, 2 invalid config) in one place, `main`.

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, LogFormat};
use crate::daemon;
use crate::exit::Exit;
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
    /// Fetch a token for every client (or one), write every output, and exit.
    Once {
        /// Only this client, as in [clients.NAME]; the others are not read.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
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
    Status {
        /// The same as JSON (`/status`'s form), for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a DPoP proof (RFC 9449) for one request with the token of a
    /// `format = "dpop"` output: `curl -H "DPoP: $(tokenkeeper proof FILE GET URL)"`.
    ///
    /// Signed with the proof key the file holds, for METHOD and URL, with
    /// the token's hash (`ath`); each proof is for one request. Needs no
    /// config and no daemon: whoever may read the file may prove.
    Proof {
        /// A `format = "dpop"` output file.
        file: std::path::PathBuf,
        /// The request's method (GET, POST, ...).
        method: String,
        /// The request's URL (its query and fragment are left out of the proof).
        url: String,
        /// The nonce the resource server gave in `DPoP-Nonce`.
        #[arg(long)]
        nonce: Option<String>,
    },
    /// Run a demo: a local token issuer and the daemon writing to ./tokenkeeper-dev/.
    Dev(crate::dev::DevArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        // file writes are short and fsync-bound: a few threads do; thousands
        // of clients refreshing together must not spawn hundreds
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|e| Exit::failed(format!("tokenkeeper: cannot start the async runtime: {e}")))
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

/// The config, or why not: an invalid config (exit 2).
fn load(arg: &ConfigArg) -> Result<Config, Exit> {
    config::load(&arg.config, &config::process_env).map_err(|e| Exit::Config(e.to_string()))
}

/// The process: malloc and TLS set up, then one command.
pub fn main() -> ExitCode {
    default_crash_signals();
    crate::daemon::trim::tune_malloc();
    crate::install_crypto_provider();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Dev(_)) {
        default_pipe_signal();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            let message = exit.to_string();
            if !message.is_empty() {
                eprintln!("{message}");
            }
            exit.code()
        }
    }
}

/// SIGSEGV and SIGBUS end the process, as crash signals do: Rust's runtime
/// catches them to tell a stack overflow, and one that only `kill` sent (an
/// operator asking for a crash and its core dump, or checking that systemd
/// restarts the daemon) was then passed over, the process running on. A
/// real fault still ends it (a stack overflow without the runtime's
/// message; a release build aborts on a panic anyway).
fn default_crash_signals() {
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: sets a disposition to the default, first thing in main,
        // before any other thread exists; no code of ours becomes a handler.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// A command's output piped into `head` ends it quietly, as any Unix
/// tool's does (Rust ignores SIGPIPE, and printing would panic); the daemon
/// keeps ignoring it (a peer gone is an error it handles).
fn default_pipe_signal() {
    // SAFETY: sets a disposition to the default before any other thread
    // exists; no code of ours becomes a handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs one command; every way it can end badly is an [`Exit`].
pub fn run(cli: Cli) -> Result<(), Exit> {
    let rt = runtime()?;
    match cli.command {
        Command::Run(arg) => {
            catch_early_signals(&rt);
            let config = load(&arg)?;
            logging::init(config.daemon.log_format);
            rt.block_on(daemon::run(config, CancellationToken::new()))
                .map_err(|e| {
                    tracing::error!("{e:#}");
                    Exit::Logged
                })
        }
        Command::Check(arg) => {
            let c = load(&arg)?;
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
            Ok(())
        }
        Command::Once { client, config } => {
            let arg = config;
            let config = match &client {
                Some(name) => load_client(name, &arg)?.0,
                None => load(&arg)?,
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
            let source = Arc::new(HttpTokenSource::new());
            let ok = rt.block_on(daemon::once::once(&config, source, state, clock));
            if ok { Ok(()) } else { Err(Exit::Logged) }
        }
        Command::Token { name, config } => rt.block_on(token(&name, &config)),
        Command::Refresh {
            name,
            timeout,
            config,
        } => rt.block_on(refresh(&name, timeout.into(), &config)),
        Command::Status { json, config } => rt.block_on(status_command(&config, json)),
        Command::Proof {
            file,
            method,
            url,
            nonce,
        } => {
            let text = crate::fsread::read_to_string(&file).map_err(|e| {
                Exit::failed(format!("tokenkeeper: cannot read {}: {e}", file.display()))
            })?;
            let proof = crate::grant::dpop::proof_for(
                &text,
                &method,
                &url,
                nonce.as_deref(),
                SystemClock.now(),
            )
            .map_err(|e| Exit::failed(format!("tokenkeeper: {}: {e}", file.display())))?;
            println!("{}", proof.expose());
            Ok(())
        }
        Command::Dev(args) => {
            catch_early_signals(&rt);
            rt.block_on(crate::dev::run(args))
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "tokenkeeper", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            crate::man::render(command, &mut std::io::stdout())
                .map_err(|e| Exit::failed(format!("tokenkeeper: {e}")))
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
fn no_such_client<'a>(name: &str, arg: &ConfigArg, names: impl Iterator<Item = &'a str>) -> Exit {
    const SHOWN: usize = 20;
    let names: Vec<&str> = names.collect();
    let mut list = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    Exit::failed(format!(
        "tokenkeeper: no client named {name:?} in {} (clients: {list})",
        arg.config.display(),
    ))
}

/// The config with `name`'s spec alone in it (the other clients are not
/// read), for `token`, `refresh` and `once --client`.
fn load_client(name: &str, arg: &ConfigArg) -> Result<(Config, Arc<config::ClientSpec>), Exit> {
    let found = config::load_one(&arg.config, name, &config::process_env)
        .map_err(|e| Exit::Config(e.to_string()))?;
    let config = match found {
        config::One::Found(config) => *config,
        config::One::Missing(names) => {
            return Err(no_such_client(name, arg, names.iter().map(String::as_str)));
        }
    };
    match config.clients.get(name).cloned() {
        Some(spec) => Ok((config, spec)),
        None => Err(no_such_client(name, arg, std::iter::empty())),
    }
}

/// Logs for `token` and `refresh` only when asked (`RUST_LOG`): their
/// stdout is a token, their stderr a script's.
fn logs_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        logging::init(LogFormat::Text);
    }
}

async fn token(name: &str, arg: &ConfigArg) -> Result<(), Exit> {
    // (an invalid config is exit 1 here: `token`'s callers check for 0 or not)
    let (config, spec) = load_client(name, arg).map_err(Exit::into_failure)?;
    logs_if_asked();
    // without the lock first: a reader needs no more, and may not be the daemon's user
    let now = SystemClock.now();
    let resume = StateStore::at(&config.daemon.state_dir)
        .resume(&spec.request, name, now)
        .unwrap_or_default();
    if let Some(token) = resume.token.filter(|t| reusable(&spec, t, now)) {
        println!("{}", token.access_token.expose());
        return Ok(());
    }
    if config.daemon.cluster.is_some() && spec.request.grant.uses_refresh_tokens() {
        return Err(Exit::failed(format!(
            "tokenkeeper: {name}: no valid token in state_dir; {}",
            daemon::once::CLUSTER_CHAIN
        )));
    }
    let reuse = |t: &crate::token::Token| reusable(&spec, t, SystemClock.now());
    fetch_here(&config, &spec, reuse).await
}

/// `tokenkeeper refresh NAME`: asks the daemon; without one, fetches here a
/// token issued after the command started.
async fn refresh(name: &str, wait: Duration, arg: &ConfigArg) -> Result<(), Exit> {
    use daemon::control::{Reply, Unreachable, ask};
    let since = SystemClock.now();
    // no secret is needed to ask the daemon
    let (state_dir, names) = config::load_names(&arg.config, &config::process_env)
        .map_err(|e| Exit::Failed(e.to_string()))?;
    if !names.iter().any(|n| n == name) {
        return Err(no_such_client(name, arg, names.iter().map(String::as_str)));
    }
    let asked = tokio::time::timeout(wait, ask(&state_dir, name, since))
        .await
        .map_err(|_| {
            Exit::failed(format!(
                "tokenkeeper: {name}: no new token within {}",
                humantime::format_duration(wait)
            ))
        })?;
    match asked {
        Ok(Reply::Token { access_token, .. }) => {
            println!("{access_token}");
            Ok(())
        }
        Ok(Reply::Error { error }) => Err(Exit::failed(format!("tokenkeeper: {name}: {error}"))),
        Err(Unreachable::NoDaemon) => {
            let (config, spec) = load_client(name, arg).map_err(Exit::into_failure)?;
            logs_if_asked();
            tracing::info!(client = %name, "no daemon answers for this state_dir; fetching here");
            let min_valid = spec.policy.min_valid;
            let reuse = |t: &crate::token::Token| {
                t.issued_at >= since && t.remaining(SystemClock.now()) > min_valid
            };
            fetch_here(&config, &spec, reuse).await
        }
        Err(Unreachable::Other(e)) => Err(Exit::failed(format!(
            "tokenkeeper: {name}: cannot ask the daemon: {e}"
        ))),
    }
}

/// A token for `spec` fetched by this process under the chain's lock (or
/// one in state_dir that `reuse` accepts), printed.
async fn fetch_here(
    config: &Config,
    spec: &Arc<config::ClientSpec>,
    reuse: impl Fn(&crate::token::Token) -> bool,
) -> Result<(), Exit> {
    let name = &spec.name;
    let store = StateStore::open(&config.daemon.state_dir);
    let source = HttpTokenSource::new();
    match daemon::once::get(&source, spec, store.as_ref().ok(), &SystemClock, reuse).await {
        Ok(got) => {
            println!("{}", got.token().access_token.expose());
            Ok(())
        }
        Err(e) => {
            let e = match &store {
                Err(open) => format!("{e} ({open})"),
                Ok(_) => e,
            };
            Err(Exit::failed(format!("tokenkeeper: {name}: {e}")))
        }
    }
}

async fn status_command(arg: &ConfigArg, json: bool) -> Result<(), Exit> {
    // no secret is needed to show the status, nor read
    let (state_dir, names) = config::load_names(&arg.config, &config::process_env)
        .map_err(|e| Exit::Config(e.to_string()))?;
    let store = StateStore::at(&state_dir);
    let now = unix_seconds(SystemClock.now());
    // the running daemon's board, asked; else the file it left when it stopped
    let live = daemon::control::status(&state_dir).await.ok();
    let file = match live {
        Some(_) => None,
        None => status::read_status(&store.status_path()).ok(),
    };
    let header = match (&live, &file) {
        (Some(f), _) => format!("daemon running (pid {})", f.pid),
        // a daemon that does not answer (an earlier version) writes the file
        (None, Some(f)) if std::path::Path::new(&format!("/proc/{}", f.pid)).exists() => format!(
            "daemon running (pid {}), status as of {}",
            f.pid,
            status::relative(f.written_at, now)
        ),
        (None, Some(f)) => format!(
            "daemon not running; last status from {}",
            rfc3339(crate::token::from_unix_millis(f.written_at * 1000))
        ),
        (None, None) => format!(
            "no status from a running daemon in {}; showing cached tokens",
            store.dir().display()
        ),
    };
    let board = live.as_ref().or(file.as_ref());
    let clients: Vec<(String, status::ClientStatus)> = names
        .into_iter()
        .map(|name| {
            let s = board
                .and_then(|f| f.clients.get(&name))
                .cloned()
                .unwrap_or_else(|| {
                    let mut s = status::ClientStatus::default();
                    if let Ok(Some(c)) = store.load(&name) {
                        s.last_refresh = Some(unix_seconds(c.token.issued_at));
                        s.expires_at = Some(unix_seconds(c.token.expires_at));
                    }
                    s
                });
            (name, s)
        })
        .collect();
    if json {
        let shown = status::StatusFile {
            pid: board.map_or(0, |f| f.pid),
            written_at: board.map_or(now, |f| f.written_at),
            clients: clients
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
            cluster: board.and_then(|f| f.cluster.clone()),
        };
        let text = serde_json::to_string_pretty(&shown).map_err(Exit::failed)?;
        println!("{text}");
        return Ok(());
    }
    println!("{header}");
    if let Some(c) = board.and_then(|f| f.cluster.as_ref()) {
        let owned = c
            .owners
            .values()
            .filter(|o| o.as_deref() == Some(&*c.member))
            .count();
        let orphans = c.owners.values().filter(|o| o.is_none()).count();
        println!(
            "cluster: member {} of {} live ({}); owns {owned} of {} clients, {orphans} without an owner; {} lease transitions, {} store errors",
            c.member,
            c.members.len(),
            c.members.join(", "),
            c.owners.len(),
            c.lease_transitions,
            c.store_errors
        );
    }
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    print!("{}", status::table(&clients, now, colour));
    Ok(())
}
