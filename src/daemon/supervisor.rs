//! The supervisor: starts a task per client, applies config reloads as a
//! diff (SIGHUP or a file edit), fans SIGUSR1 out as "refresh now", and on
//! SIGTERM/SIGINT (or the caller's shutdown token) stops everything within a
//! bounded grace period. Startup and reload share one code path: a reload
//! from "no clients" to the first config.

use super::client::{ClientTask, Jitter, REFRESH_SLOTS, Start, random_jitter, resume};
use super::control::{self, Handle};
use super::outputs::{OutputContext, Sweep, run_output};
use super::reload::{ConfigEvent, Diff, diff, watch_config};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, ClientSpec, Config, Reload};
use crate::grant::TokenSource;
use crate::grant::http::HttpTokenSource;
use crate::state::StateStore;
use crate::telemetry::metrics::{ClientMetrics, Metrics};
use crate::telemetry::status::StatusBoard;
use crate::token::Token;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);
/// Quiet time after the config file was written in place (it may be
/// half-written) before it is re-read; a file renamed into place is read at
/// once.
const DEBOUNCE: Duration = Duration::from_millis(100);

struct Running {
    spec: Arc<ClientSpec>,
    /// Cancels the client task and its output workers.
    cancel: CancellationToken,
    client: JoinHandle<()>,
    /// Cancels the output workers alone (a reload that changes only outputs).
    outputs_cancel: CancellationToken,
    outputs: Vec<JoinHandle<()>>,
    /// The client task's token channel, for output workers started later.
    tokens: watch::Receiver<Option<Arc<Token>>>,
    /// Cluster mode: the remote outputs' channel.
    remote: Option<watch::Receiver<Option<Arc<Token>>>>,
    /// Wakes the client task for `tokenkeeper refresh`.
    ask: Arc<Notify>,
}

impl Running {
    fn tasks(self) -> impl Iterator<Item = JoinHandle<()>> {
        std::iter::once(self.client).chain(self.outputs)
    }
}

pub struct Supervisor<S: TokenSource> {
    source: Arc<S>,
    clock: Arc<dyn Clock>,
    jitter: Jitter,
    state: Option<StateStore>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    slots: Arc<crate::limiter::Limiter>,
    refresh_tx: watch::Sender<u64>,
    /// Bumped when the wall clock jumped (see [`WallWatch`]).
    wall_tx: watch::Sender<u64>,
    root: CancellationToken,
    running: BTreeMap<String, Running>,
    /// Tasks of stopped clients, joined at shutdown.
    retired: Vec<JoinHandle<()>>,
    /// What the output workers share (`[daemon] check_outputs` among it).
    outputs_ctx: Arc<OutputContext>,
    /// Cluster mode: this member.
    member: Option<Arc<crate::cluster::Member>>,
}

impl<S: TokenSource> Supervisor<S> {
    pub fn new(
        source: Arc<S>,
        clock: Arc<dyn Clock>,
        jitter: Jitter,
        state: Option<StateStore>,
        board: Arc<StatusBoard>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let outputs_ctx = OutputContext::new(clock.clone(), jitter.clone(), None);
        Supervisor {
            source,
            clock,
            jitter,
            state,
            board,
            metrics,
            slots: Arc::new(crate::limiter::Limiter::new(
                REFRESH_SLOTS,
                super::client::REFRESH_SLOTS_PER_HOST,
            )),
            refresh_tx: watch::channel(0).0,
            wall_tx: watch::channel(0).0,
            root: CancellationToken::new(),
            running: BTreeMap::new(),
            retired: Vec::new(),
            outputs_ctx,
            member: None,
        }
    }

    /// Cluster mode: clients are refreshed by their owner in the cluster.
    pub fn cluster(mut self, member: Option<Arc<crate::cluster::Member>>) -> Self {
        self.member = member;
        self
    }

    /// Checks file outputs on disk this often (zero, the default: never).
    pub fn check_outputs(mut self, every: Duration) -> Self {
        let sweep = (!every.is_zero()).then(|| {
            let sweep = Arc::new(Sweep::default());
            tokio::spawn(sweep.clone().run(every, self.root.child_token()));
            sweep
        });
        self.outputs_ctx = OutputContext::new(self.clock.clone(), self.jitter.clone(), sweep);
        self
    }

    /// Starts one worker per output of `spec` on `tokens` (remote outputs
    /// on `remote`, in cluster mode: the tokens this member fetched as owner).
    fn start_outputs(
        &self,
        spec: &Arc<ClientSpec>,
        tokens: &watch::Receiver<Option<Arc<Token>>>,
        remote: Option<&watch::Receiver<Option<Arc<Token>>>>,
        cancel: &CancellationToken,
    ) -> (Arc<ClientMetrics>, Vec<JoinHandle<()>>) {
        let labels: Vec<String> = spec.outputs.iter().map(|o| o.label()).collect();
        self.board.set_outputs(&spec.name, &labels);
        let metrics = self.metrics.client(&spec.name, &labels);
        let tasks = (0..spec.outputs.len())
            .map(|index| {
                let is_file =
                    matches!(spec.outputs[index].kind, crate::output::OutputKind::File(_));
                let tokens = match remote {
                    Some(remote) if !is_file => remote,
                    _ => tokens,
                };
                tokio::spawn(run_output(
                    spec.clone(),
                    index,
                    self.outputs_ctx.clone(),
                    tokens.clone(),
                    self.board.clone(),
                    metrics.clone(),
                    cancel.clone(),
                ))
            })
            .collect();
        (metrics, tasks)
    }

    fn start_client(&mut self, spec: Arc<ClientSpec>, force: bool) {
        let cancel = self.root.child_token();
        let outputs_cancel = cancel.child_token();
        let resume = resume(self.state.as_ref(), &spec, self.clock.now());
        let (publish, tokens) = watch::channel(None);
        let (publish_remote, remote) = match self.member {
            Some(_) => {
                let (tx, rx) = watch::channel(None);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (metrics, outputs) =
            self.start_outputs(&spec, &tokens, remote.as_ref(), &outputs_cancel);
        let ask = Arc::new(Notify::new());
        let task = ClientTask {
            spec: spec.clone(),
            source: self.source.clone(),
            clock: self.clock.clone(),
            jitter: self.jitter.clone(),
            state: self.state.clone(),
            board: self.board.clone(),
            metrics,
            slots: self.slots.clone(),
            publish,
            refresh_now: self.refresh_tx.subscribe(),
            wall_moved: self.wall_tx.subscribe(),
            ask: ask.clone(),
            cancel: cancel.clone(),
            seat: self.member.as_ref().map(|m| m.seat(&spec.name)),
            publish_remote,
            was_owned: Default::default(),
        };
        let client = tokio::spawn(task.run(Start { resume, force }));
        self.running.insert(
            spec.name.clone(),
            Running {
                spec,
                cancel,
                client,
                outputs_cancel,
                outputs,
                tokens,
                remote,
                ask,
            },
        );
    }

    /// A client whose outputs (or their hooks) changed, and nothing else:
    /// its task keeps its token, schedule and any refresh in flight; only
    /// the output workers are replaced, and the new ones write the current
    /// token at once.
    fn replace_outputs(&mut self, spec: Arc<ClientSpec>) {
        let Some(mut running) = self.running.remove(&spec.name) else {
            return;
        };
        running.outputs_cancel.cancel();
        self.retired.append(&mut running.outputs);
        running.outputs_cancel = running.cancel.child_token();
        let (_, outputs) = self.start_outputs(
            &spec,
            &running.tokens,
            running.remote.as_ref(),
            &running.outputs_cancel,
        );
        running.outputs = outputs;
        running.spec = spec;
        self.running.insert(running.spec.name.clone(), running);
    }

    fn stop_client(&mut self, name: &str) {
        if let Some(running) = self.running.remove(name) {
            running.cancel.cancel();
            self.retired.extend(running.tasks());
        }
        self.retired.retain(|t| !t.is_finished());
    }

    /// Applies `clients` as a diff against what runs now.
    pub fn apply(&mut self, clients: &BTreeMap<String, Arc<ClientSpec>>) {
        let current: BTreeMap<String, Arc<ClientSpec>> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.spec.clone()))
            .collect();
        let first = current.is_empty();
        self.apply_diff(diff(&current, clients), clients, first);
    }

    /// Applies an edit that touched only `touched` (added, changed or as
    /// they were) and `removed`: the other running clients are not looked
    /// at.
    pub fn apply_edit(&mut self, touched: &BTreeMap<String, Arc<ClientSpec>>, removed: &[String]) {
        let mut d = Diff {
            removed: removed.to_vec(),
            ..Diff::default()
        };
        for (name, spec) in touched {
            match self.running.get(name) {
                None => d.added.push(name.clone()),
                Some(r) if r.spec == *spec => d.unchanged.push(name.clone()),
                Some(_) => d.changed.push(name.clone()),
            }
        }
        self.apply_diff(d, touched, false);
    }

    /// Applies `d`, whose added and changed clients are in `new`.
    fn apply_diff(&mut self, d: Diff, new: &BTreeMap<String, Arc<ClientSpec>>, first: bool) {
        for name in &d.removed {
            self.stop_client(name);
            if let Some(member) = &self.member {
                let (member, name) = (member.clone(), name.clone());
                tokio::spawn(async move { member.leave(&name).await });
            }
            self.board.remove(name);
            self.metrics.remove_client(name);
            tracing::info!(client = %name, "client removed; its files stay in place");
        }
        for name in &d.changed {
            let Some(old) = self.running.get(name).map(|r| r.spec.clone()) else {
                continue;
            };
            let new = &new[name];
            if old.request == new.request && old.policy == new.policy {
                self.replace_outputs(new.clone());
                tracing::info!(client = %name, "outputs changed; writing the current token to them");
            } else {
                // a refresh in flight in the old task is finished and saved
                // first: the new task waits for the chain's lock
                let force = old.request != new.request;
                self.stop_client(name);
                self.start_client(new.clone(), force);
                if force {
                    tracing::info!(client = %name, "client changed; fetching a new token");
                } else {
                    tracing::info!(client = %name, "refresh policy changed; keeping the current token");
                }
            }
        }
        for name in &d.added {
            self.start_client(new[name].clone(), false);
        }
        self.metrics.clients.set(self.running.len() as i64);
        if !first {
            tracing::info!(
                added = d.added.len(),
                changed = d.changed.len(),
                removed = d.removed.len(),
                unchanged = self
                    .running
                    .len()
                    .saturating_sub(d.added.len() + d.changed.len()),
                "config applied"
            );
        }
    }

    /// What `tokenkeeper refresh` needs of the client `name`.
    pub fn handle(&self, name: &str) -> Option<Handle> {
        self.running.get(name).map(|r| Handle {
            ask: r.ask.clone(),
            tokens: r.tokens.clone(),
        })
    }

    /// Wakes every client task to read the wall clock again.
    pub fn wall_moved(&self) {
        self.wall_tx.send_modify(|n| *n += 1);
    }

    /// Asks every client to refresh now.
    pub fn refresh_all(&self) {
        self.refresh_tx.send_modify(|n| *n += 1);
    }

    /// Stops every task. Idle tasks stop at once; a refresh of a
    /// refresh-token chain already sent is waited for until its answer is
    /// saved — bounded by the longest such client's `timeout` (twice: a
    /// refused refresh token falls back to the password in the same
    /// attempt) — and everything else by a short grace period.
    pub async fn shutdown(mut self) {
        self.root.cancel();
        let chains = self
            .running
            .values()
            .filter(|r| r.spec.request.grant.uses_refresh_tokens())
            .map(|r| r.spec.request.timeout * 2)
            .max()
            .unwrap_or_default();
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.retired);
        for (_, running) in std::mem::take(&mut self.running) {
            tasks.extend(running.tasks());
        }
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE + chains, all)
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within the grace period");
        }
    }
}

/// Notices a wall clock that moved other than with the monotonic one: set
/// back or forward, or a machine that was suspended (the monotonic clock
/// stops meanwhile). Client tasks sleep on the monotonic clock until their
/// wall-clock refresh time, so they are woken to read it again.
struct WallWatch {
    wall: std::time::SystemTime,
    mono: tokio::time::Instant,
}

impl WallWatch {
    const EVERY: Duration = Duration::from_secs(10);
    /// More than this between the two clocks' steps is a jump.
    const SLACK: Duration = Duration::from_secs(2);

    fn new(wall: std::time::SystemTime) -> WallWatch {
        WallWatch {
            wall,
            mono: tokio::time::Instant::now(),
        }
    }

    /// Whether the wall clock moved by other than the monotonic one since
    /// the last look (which `wall` now is).
    fn moved(&mut self, wall: std::time::SystemTime) -> bool {
        let mono = tokio::time::Instant::now();
        let expected = self.wall + (mono - self.mono);
        let off = match wall.duration_since(expected) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        (self.wall, self.mono) = (wall, mono);
        off > Self::SLACK
    }
}

/// How a reload reads the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// All of it, and every file it names (SIGHUP: a rotated secret file
    /// is read again).
    Whole,
    /// The clients the edit touched, when only clients' tables changed
    /// (the file watcher).
    Edit,
}

/// Reads the config again and applies it; logs and returns `false` when it
/// is invalid (the running config stays).
fn reload<S: TokenSource>(
    supervisor: &mut Supervisor<S>,
    current: &mut Config,
    read: Read,
    metrics: &Metrics,
) -> bool {
    let env = &config::process_env;
    let found = match read {
        Read::Whole => config::load(&current.path, env).map(Reload::Whole),
        Read::Edit => current.reload(env),
    };
    match found {
        Ok(Reload::Whole(new)) => {
            metrics.reloads.inc();
            for warning in new.warnings() {
                tracing::warn!("{warning}");
            }
            if new.daemon != current.daemon {
                tracing::warn!("changes to [daemon] and [cluster] take effect at the next restart");
            }
            *current = apply_config(supervisor, new);
            true
        }
        Ok(Reload::Edit(edit)) => {
            metrics.reloads.inc();
            tracing::info!(
                read = edit.clients.len(),
                removed = edit.removed.len(),
                "only clients' tables changed: those alone were read"
            );
            supervisor.apply_edit(&edit.clients, &edit.removed);
            current.commit(edit);
            true
        }
        Err(e) => {
            metrics.reload_failures.inc();
            tracing::error!("config reload failed; still running the previous config:\n{e}");
            false
        }
    }
}

/// Applies `config`'s clients and returns the rest of it. The running
/// clients hold their specs; after a reload the config's own copies of the
/// unchanged clients' specs would stay beside them and double the daemon's
/// memory.
fn apply_config<S: TokenSource>(supervisor: &mut Supervisor<S>, mut config: Config) -> Config {
    supervisor.apply(&std::mem::take(&mut config.clients));
    config
}

/// The daemon (`run` and `dev`): runs `config` until SIGTERM/SIGINT or `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    let state = StateStore::open(&config.daemon.state_dir).context("cannot use state_dir")?;
    let board = Arc::new(StatusBoard::default());
    let member = match &config.daemon.cluster {
        None => None,
        Some(spec) => {
            let member = crate::cluster::Member::new(spec.clone())
                .map_err(|e| anyhow::anyhow!("cannot set up the cluster member: {e}"))?;
            let backend = match &spec.backend {
                crate::cluster::BackendSpec::Etcd(e) => {
                    format!("etcd ({} endpoints)", e.endpoints.len())
                }
                crate::cluster::BackendSpec::Kubernetes(k) => {
                    format!("kubernetes (Leases in namespace {})", k.namespace)
                }
            };
            tracing::info!(member = %member.name(), %backend, lease_ttl_s = spec.lease_ttl.as_secs(), "cluster mode: clients are refreshed by their owner among the members");
            Some(member)
        }
    };
    let metrics = Arc::new(Metrics::default().with_cluster(member.clone()));
    let telemetry_cancel = CancellationToken::new();
    if let Some(listen) = config.daemon.listen {
        let bound = crate::telemetry::server::serve(
            listen,
            metrics.clone(),
            board.clone(),
            telemetry_cancel.clone(),
        )
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(listen = %bound, "serving /metrics, /healthz, /readyz, /status");
    }

    let (lookup_tx, mut lookups) = mpsc::channel::<control::Lookup>(64);
    match control::bind(state.dir()) {
        Ok(Some(bound)) => {
            tokio::spawn(control::serve(
                bound,
                lookup_tx,
                board.clone(),
                telemetry_cancel.clone(),
            ));
        }
        Ok(None) => tracing::warn!(
            "another tokenkeeper answers `tokenkeeper refresh` for this state_dir; this one does not"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot open the control socket; `tokenkeeper refresh` fetches without the daemon"
        ),
    }

    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let (watch_tx, mut watch_rx) = mpsc::channel(1);
    let _watcher = match watch_config(&config.path, watch_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    };

    // `tokenkeeper status` asks the running daemon; the file is what it
    // shows once the daemon has stopped
    let (status_path, status_board) = (state.status_path(), board.clone());

    tokio::spawn(super::trim::run(
        board.clone(),
        super::trim::QUIET,
        telemetry_cancel.clone(),
        super::trim::malloc_trim,
    ));

    let member_cancel = CancellationToken::new();
    let member_task = member
        .clone()
        .map(|m| tokio::spawn(m.run(member_cancel.clone())));
    board.set_cluster(member.clone());
    let source = Arc::new(HttpTokenSource::new());
    let board_for_notify = board.clone();
    let mut supervisor = Supervisor::new(
        source,
        Arc::new(SystemClock),
        random_jitter(),
        Some(state),
        board,
        metrics.clone(),
    )
    .check_outputs(config.daemon.check_outputs)
    .cluster(member);
    tracing::info!(config = %config.path.display(), clients = config.clients.len(), version = env!("CARGO_PKG_VERSION"), "tokenkeeper started");
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let mut current = apply_config(&mut supervisor, config);
    tokio::spawn(crate::telemetry::notify::run(
        board_for_notify,
        current.daemon.ready_timeout,
        telemetry_cancel.clone(),
    ));

    let mut wall = WallWatch::new(SystemClock.now());
    let mut wall_tick = tokio::time::interval(WallWatch::EVERY);
    loop {
        tokio::select! {
            _ = wall_tick.tick() => {
                if wall.moved(SystemClock.now()) {
                    tracing::info!("the wall clock jumped (or the machine slept): every client reads it again");
                    supervisor.wall_moved();
                }
            }
            _ = shutdown.cancelled() => break,
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break }
            Some(lookup) = lookups.recv() => {
                let _ = lookup.reply.send(supervisor.handle(&lookup.name));
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: refreshing every client");
                supervisor.refresh_all();
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                reload(&mut supervisor, &mut current, Read::Whole, &metrics);
            }
            Some(event) = watch_rx.recv() => {
                if event == ConfigEvent::Touched {
                    tokio::time::sleep(DEBOUNCE).await;
                }
                while watch_rx.try_recv().is_ok() {}
                let digest = crate::fsread::read_limited(&current.path, crate::fsread::MAX_CONFIG_BYTES)
                    .map(|b| config::digest(&b))
                    .ok();
                if digest.is_some_and(|d| d != current.digest) {
                    tracing::info!("config file changed: reloading");
                    if !reload(&mut supervisor, &mut current, Read::Edit, &metrics)
                        && let Some(d) = digest
                    {
                        // do not retry the same broken content on every event
                        current.digest = d;
                    }
                }
            }
        }
    }
    supervisor.shutdown().await;
    // the lease goes last: no refresh of this member's is in flight now
    member_cancel.cancel();
    if let Some(task) = member_task
        && tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
    {
        tracing::warn!(
            "the cluster member did not leave in time: the others take over when its lease expires"
        );
    }
    telemetry_cancel.cancel();
    let written = match status_board.to_json() {
        Ok(json) => tokio::task::spawn_blocking(move || {
            crate::telemetry::status::write_status(&status_path, &json)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(e) => Err(std::io::Error::other(e)),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write the status file");
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::WallWatch;
    use std::time::{Duration, UNIX_EPOCH};

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_moving_apart_from_the_monotonic_one_is_noticed() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut w = WallWatch::new(t0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!w.moved(t0 + Duration::from_secs(10)), "in step");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!w.moved(t0 + Duration::from_millis(21_500)), "NTP's slew");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            w.moved(t0 + Duration::from_secs(3_600)),
            "forward (or asleep)"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(w.moved(t0 + Duration::from_secs(60)), "set back");
    }
}
