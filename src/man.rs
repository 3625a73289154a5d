//! The man page, tokenkeeper(1): the command line from clap (name, synopsis,
//! options, and each command with its own options, on this one page — no
//! per-command pages are shipped), then what a reader of a man page looks
//! for and the `--help` text does not say: the config file, signals, exit
//! status, files and environment.

use clap_mangen::roff::{Roff, bold, italic, roman};
use std::io::Write;

/// Writes the page to `w`.
pub fn render(cmd: clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    let mut page = Roff::new();
    commands(&mut page, &cmd);
    for (title, paragraphs) in SECTIONS {
        page.control("SH", [*title]);
        for p in *paragraphs {
            paragraph(&mut page, p);
        }
    }
    page.to_writer(w)
}

/// Each command, its summary and its own options.
fn commands(page: &mut Roff, cmd: &clap::Command) {
    page.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut usage = vec![bold(format!("tokenkeeper {}", sub.get_name()))];
        for arg in sub.get_positionals() {
            usage.push(roman(" "));
            usage.push(italic(arg.get_id().as_str().to_uppercase()));
        }
        page.control("TP", []).text(usage);
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        for (i, p) in about.split("\n\n").enumerate() {
            if i > 0 {
                page.control("IP", []);
            }
            page.text([roman(p.replace('\n', " "))]);
        }
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_positional() && !a.is_hide_set())
        {
            let mut name = Vec::new();
            if let Some(short) = arg.get_short() {
                name.push(bold(format!("-{short}")));
                name.push(roman(", "));
            }
            if let Some(long) = arg.get_long() {
                name.push(bold(format!("--{long}")));
            }
            if arg.get_action().takes_values() {
                name.push(roman(" "));
                name.push(italic(arg.get_id().as_str().to_uppercase()));
            }
            page.control("RS", []).control("TP", []).text(name);
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            page.text([roman(help)]).control("RE", []);
        }
    }
}

/// A paragraph of `text`, where `*word*` is italic and `**word**` bold;
/// a paragraph starting with `- ` is an indented item, `: ` a literal line.
fn paragraph(page: &mut Roff, text: &str) {
    if let Some(code) = text.strip_prefix(": ") {
        page.control("PP", []).control("nf", []).control("RS", []);
        for line in code.lines() {
            page.text([roman(line)]);
        }
        page.control("RE", []).control("fi", []);
        return;
    }
    let (text, item) = match text.strip_prefix("- ") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    page.control(
        if item { "IP" } else { "PP" },
        if item { vec!["\\(bu", "2"] } else { vec![] },
    );
    let mut inlines = Vec::new();
    for (i, part) in text.split("**").enumerate() {
        if i % 2 == 1 {
            inlines.push(bold(part));
            continue;
        }
        for (j, piece) in part.split('*').enumerate() {
            inlines.push(if j % 2 == 1 {
                italic(piece)
            } else {
                roman(piece)
            });
        }
    }
    page.text(inlines);
}

/// The sections after the commands: title, paragraphs.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "CONFIGURATION",
        &[
            "The config file is TOML (default */etc/tokenkeeper/config.toml*, or *$TOKENKEEPER_CONFIG*, or **--config**). Unknown keys are errors; durations are strings such as \"90s\", \"5m\", \"1h\". **tokenkeeper check** reports every error at once, each as *file:line:column: key: message*.",
            "**[daemon]** (optional): *state_dir* (default */var/lib/tokenkeeper*, or *$STATE_DIRECTORY*), *log_format* (\"text\" or \"json\"), *listen* (an address for /metrics, /healthz, /readyz and /status), *ready_timeout* (systemd READY=1 at the latest after it, default 60s), *check_outputs* (how often file outputs are checked on disk and rewritten if changed, default 10s; \"0\" never).",
            "**[defaults]** (optional): what every client inherits: *refresh_ratio* (0.75), *refresh_before* (5m), *min_interval* (10s), *timeout* (30s), *backoff_initial* (1s), *backoff_max* (5m), *default_lifetime* (1h), *max_lifetime* (24h).",
            "**[cluster]** (optional): members sharing clients through etcd or Kubernetes Leases, so that one of them refreshes each: *backend* (\"etcd\" or \"kubernetes\"), *name* (default: the host name), *lease_ttl* (15s), *encryption_key_file* (32 random bytes, the same on every member); etcd: *endpoints*, *ca_file*, *cert_file* and *key_file*, *username* and *password_file*, *prefix* (\"/tokenkeeper/\"); kubernetes: *namespace*, *api_server*, *token_file*, *ca_file* (a pod's service account by default), *lease_prefix* (\"tokenkeeper-\"). Read at start.",
            "**[clients.NAME]**: one token: *token_url* (or *issuer* for OpenID discovery, or a *preset* for a known platform), *client_id*, and *client_secret*, *client_secret_file* or *client_secret_env*; *grant_type* (\"client_credentials\", \"password\", \"refresh_token\", \"static\"; \"jwt_bearer\" with *private_key_file* or *service_account_file*, *assertion_issuer*, *assertion_subject*; \"token_exchange\" with *subject_token_file*, *subject_token_type*, *actor_token_file*, *actor_token_type*, *audience*, *resource*); *scope*; *auth* (\"body\", \"basic\", \"none\"; \"private_key_jwt\" with *private_key_file*, optional *key_id*, *signing_alg* and *assertion_audience*; \"client_secret_jwt\"; \"tls_client_auth\" or \"self_signed_tls_client_auth\" with *tls_cert_file* and *tls_key_file*); *dpop* (true: DPoP-bound tokens, RFC 9449; the proof key *dpop_key_file*, or one made in *state_dir*); *encoding* (\"form\" or \"json\"); *params* and *headers* tables; *response* (where a non-standard answer keeps the token and its expiry); and the keys of [defaults].",
            "**[[clients.NAME.outputs]]**: where the token goes, one table per output: *type* \"file\" (*path*, *format* \"raw\", \"json\", \"env\", \"header\" or \"dpop\" (or *template*, *template_file*), *mode* \"0600\", *owner*, *group*, *layout* \"file\" or \"atomic_dir\"), \"vault_kv\", \"aws_secrets_manager\" or \"kubernetes_secret\" (*name*, *key*, *namespace*; in a pod its service account, else *api_server*, *token_file* and *ca_file*, or *kubeconfig* with an optional *context*); and hooks run after each write (*exec*, *signal* with *pid_file*). A token file is replaced atomically, never left partial or empty, and never removed while valid.",
            "The whole reference, with an example of every key: */usr/share/doc/tokenkeeper/README.md* and */usr/share/doc/tokenkeeper/examples/*.",
        ],
    ),
    (
        "SIGNALS",
        &[
            "- **SIGHUP**: read the config again, the whole file and every secret file, CA bundle and template it names; an invalid config changes nothing (the error is logged). An edit of the config file is noticed without a signal, and only the clients whose tables changed are read.",
            "- **SIGUSR1**: refresh every client now (at most once a second per client).",
            "- **SIGTERM**, **SIGINT**: stop within a second; a refresh of a rotating refresh token already sent is waited for and saved first (bounded by the client's *timeout*). Token files stay.",
        ],
    ),
    (
        "EXIT STATUS",
        &[
            "- **0**: done (for **run**: stopped by a signal).",
            "- **1**: a failure, told on standard error or in the log: an endpoint refused (its *error* and *error_description* are shown), an output could not be written, no daemon answered in time.",
            "- **2**: the config is invalid (**check**, **run**, **once**); every problem is printed with its file, line and key.",
        ],
    ),
    (
        "FILES",
        &[
            "- */etc/tokenkeeper/config.toml*: the config (root:tokenkeeper, 0640).",
            "- */var/lib/tokenkeeper/* (*state_dir*, 0700): each client's last token and refresh token (*NAME.state*, written in place, fsynced before use) and its lock (*NAME.lock*); *control.sock*, where **refresh** and **status** ask the running daemon (0600, the daemon's user or root only); *status.json*, the status written when the daemon stops.",
            "- */run/tokenkeeper/*: where the shipped unit's outputs write tokens (*RuntimeDirectory=*).",
            "- */lib/systemd/system/tokenkeeper.service*: the unit (Type=notify, a watchdog, *LoadCredential=* for secrets, **systemctl reload** sends SIGHUP).",
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            "- *TOKENKEEPER_CONFIG*: the config file, when **--config** is not given.",
            "- *RUST_LOG*: the log filter, e.g. \"debug\" or \"tokenkeeper=trace\" (default \"info\"). No secret or token is logged at any level.",
            "- *CREDENTIALS_DIRECTORY*, *RUNTIME_DIRECTORY*, *STATE_DIRECTORY*: set by systemd, usable in paths as *$CREDENTIALS_DIRECTORY* and so on; outside the unit they default to the unit's own directories.",
            "- *NOTIFY_SOCKET*: set by systemd for Type=notify (READY=1, STATUS=, WATCHDOG=1).",
        ],
    ),
    (
        "EXAMPLES",
        &[
            "A client, its token in a file a shell script reads:",
            ": [clients.shop]\ntoken_url = \"https://auth.example.com/oauth/token\"\nclient_id = \"integration\"\nclient_secret_file = \"$CREDENTIALS_DIRECTORY/shop\"\n\n[[clients.shop.outputs]]\ntype = \"file\"\npath = \"$RUNTIME_DIRECTORY/shop.token\"",
            ": curl -H \"Authorization: Bearer $(cat /run/tokenkeeper/shop.token)\" https://api.example.com/",
            "After a 401 from the API, one fresh token for everyone who asks at once:",
            ": tokenkeeper refresh shop",
        ],
    ),
    (
        "SEE ALSO",
        &["**systemd.exec**(5), **systemd.service**(5), **curl**(1)"],
    ),
];
