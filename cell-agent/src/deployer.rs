//! Running the cell's workload at the desired release.
//!
//! [`Deployer`] is the seam: the agent asks it to make a release run, to hand the workload its
//! tenant set, and what runs. [`LocalProcess`] (the `local` provider) runs the release's artifact
//! as a supervised child process.
//!
//! **Health is the workload's own.** Every process gets a fresh random instance nonce
//! (`WORKLOAD_INSTANCE`); it is healthy only while its endpoint's `/healthz` answers with that
//! nonce at the deployed release. Another process holding the port (a stale workload, anything)
//! does not pass for it, and a workload that cannot bind is seen to exit. The check runs at start
//! and on every pass; three failed passes in a row restart the process.
//!
//! **Crashes are reported, not hidden.** Exits are counted (restarts since the agent started,
//! exits in the last five minutes), the last one is kept with the last line the process wrote on
//! stderr, and a crash loop is an error in every report until the process stays up. Restarts back
//! off exponentially (up to 30 s); the backoff resets once a process has stayed healthy a minute.
//!
//! **Rollback.** A *new* release that does not become healthy is replaced by the last release
//! that did, and not retried until the desired release changes (no flapping). The release that
//! was running fine and then crashes is restarted, not abandoned.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellfleet_api::{
    CRASH_LOOP_EXITS, CRASH_LOOP_WINDOW_SECS, CellTenants, DesiredRelease, WorkloadExit,
    WorkloadHealth, WorkloadState, WorkloadStatus,
};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// What a workload needs besides its release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadContext {
    /// Where it serves, e.g. `http://127.0.0.1:9101`.
    pub endpoint: String,
    /// The cell database.
    pub database_url: String,
    /// The cell's name (the workload labels its answers with it).
    pub cell: String,
}

pub trait Deployer {
    /// Makes `release` run (idempotent). `Err` is one line for the agent's report.
    fn ensure(
        &mut self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// Hands the running workload the tenants it may serve (no-op when it already has this
    /// generation). `Err` is one line for the agent's report.
    fn hand_tenants(
        &mut self,
        tenants: &CellTenants,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// The release running and healthy now.
    fn running(&self) -> Option<&str>;

    /// The workload as supervised, for the report.
    fn status(&self) -> WorkloadStatus;

    /// When the deployer wants the next pass even if nothing else happens (a restart due).
    fn wake_at(&self) -> Option<Instant>;

    /// Resolves when the workload process exits (so the agent can react at once).
    fn exited(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// How long a new process has to answer `/healthz` as itself.
const HEALTHY_WITHIN: Duration = Duration::from_secs(15);
/// A process that stayed healthy this long resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Failed liveness checks in a row before a running process is restarted.
const LIVENESS_FAILURES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Running {
    release: DesiredRelease,
    ctx: WorkloadContext,
    child: Child,
    instance: String,
    control_token: String,
    healthy_since: Instant,
    stderr: StderrTail,
    failed_checks: u32,
}

/// The last line a workload wrote on stderr (each line is also copied to the agent's stderr).
#[derive(Debug, Clone, Default)]
struct StderrTail(Arc<Mutex<Option<String>>>);

impl StderrTail {
    fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|l| l.clone())
    }
}

/// Runs releases as local child processes.
///
/// The running workload's pid and command are kept in a pid file in the agent's data directory,
/// so an agent that was killed (and so could not stop its workload) stops the orphan when it
/// starts again instead of finding its port taken.
#[derive(Debug)]
pub struct LocalProcess {
    pid_file: PathBuf,
    running: Option<Running>,
    /// The newest release that became healthy.
    last_good: Option<DesiredRelease>,
    /// A new release that did not become healthy, and why: not retried (no flapping between it
    /// and the rollback) until the desired release changes.
    failed: Option<(DesiredRelease, String)>,
    /// The release last started (healthy or not), for the report.
    attempted: Option<String>,
    state: WorkloadState,
    backoff: Duration,
    not_before: Option<Instant>,
    restarts: u32,
    exits: VecDeque<Instant>,
    last_exit: Option<WorkloadExit>,
    /// `(instance, generation)` of the tenant set the running workload acknowledged.
    tenants_handed: Option<(String, i64, u64)>,
    http: reqwest::Client,
}

impl LocalProcess {
    /// A deployer keeping its pid file at `pid_file`; stops a workload a previous run left behind.
    pub fn new(pid_file: PathBuf) -> Self {
        stop_orphan(&pid_file);
        LocalProcess {
            pid_file,
            running: None,
            last_good: None,
            failed: None,
            attempted: None,
            state: WorkloadState::Stopped,
            backoff: FIRST_BACKOFF,
            not_before: None,
            restarts: 0,
            exits: VecDeque::new(),
            last_exit: None,
            tenants_handed: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }
}

/// Stops the process named in `pid_file` if it still runs the command recorded with it.
fn stop_orphan(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let mut lines = text.lines();
    let (Some(pid), Some(command)) = (
        lines.next().and_then(|p| p.parse::<i32>().ok()),
        lines.next(),
    ) else {
        return;
    };
    // Guard against pid reuse: only a process still running our command is ours.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.is_empty() && cmdline.starts_with(command.as_bytes()) {
        tracing::warn!(
            pid,
            command,
            "stopping the workload a previous agent run left behind"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_file(pid_file);
}

fn listen_address(endpoint: &str) -> Result<String, String> {
    let url =
        reqwest::Url::parse(endpoint).map_err(|e| format!("cell endpoint {endpoint:?}: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("cell endpoint {endpoint:?} has no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("cell endpoint {endpoint:?} has no port"))?;
    Ok(format!("{host}:{port}"))
}

/// 128 random bits as hex: an instance nonce or a control token.
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// What `/healthz` says about a process.
enum Probe {
    /// Our process at our release.
    Ours,
    /// Something answers, but it is not the process we started.
    Foreign(String),
    /// Nothing (usable) answers.
    Down(String),
}

/// A child that was spawned but is not known healthy yet.
struct Started {
    child: Child,
    instance: String,
    control_token: String,
    stderr: StderrTail,
}

impl LocalProcess {
    fn spawn(&self, release: &DesiredRelease, ctx: &WorkloadContext) -> Result<Started, String> {
        let a = &release.artifact;
        let instance = random_hex();
        let control_token = random_hex();
        let mut child = Command::new(&a.command)
            .args(&a.args)
            .envs(&a.env)
            .env("WORKLOAD_LISTEN", listen_address(&ctx.endpoint)?)
            .env("WORKLOAD_DATABASE_URL", &ctx.database_url)
            .env("WORKLOAD_RELEASE", &release.version)
            .env("WORKLOAD_CELL", &ctx.cell)
            .env("WORKLOAD_INSTANCE", &instance)
            .env("WORKLOAD_CONTROL_TOKEN", &control_token)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "release {}: cannot start {:?}: {e}",
                    release.version, a.command
                )
            })?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&self.pid_file, format!("{pid}\n{}\n", a.command));
        }
        let stderr = StderrTail::default();
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // The workload's log goes where the agent's does.
                    eprintln!("{line}");
                    let line = without_ansi(&line);
                    let line = line.trim();
                    if !line.is_empty()
                        && let Ok(mut last) = tail.0.lock()
                    {
                        *last = Some(line.chars().take(500).collect());
                    }
                }
            });
        }
        Ok(Started {
            child,
            instance,
            control_token,
            stderr,
        })
    }

    async fn probe(&self, endpoint: &str, instance: &str, release: &str) -> Probe {
        let url = format!("{}/healthz", endpoint.trim_end_matches('/'));
        let resp = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => return Probe::Down(format!("{url}: {e}")),
        };
        let status = resp.status();
        let health: Option<WorkloadHealth> = resp.json().await.ok();
        match health {
            Some(h) if h.instance == instance && h.release == release => {
                if status.is_success() {
                    Probe::Ours
                } else {
                    Probe::Down(format!("{url} answered {status}"))
                }
            }
            Some(h) => Probe::Foreign(format!(
                "{url} is answered by another process (instance {}, release {}), not the workload this agent started",
                h.instance, h.release
            )),
            None => Probe::Foreign(format!(
                "{url} answered {status} without the workload's health document: another process holds the endpoint"
            )),
        }
    }

    /// Waits until `started` answers as itself; on failure the process is gone and the error
    /// says why (with the last line it wrote on stderr).
    async fn healthy(
        &self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
        started: &mut Started,
    ) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Ok(Some(status)) = started.child.try_wait() {
                // Let the stderr copier catch the last words.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(with_message(
                    format!("exited ({status}) before it was healthy"),
                    started.stderr.last(),
                ));
            }
            let why = match self
                .probe(&ctx.endpoint, &started.instance, &release.version)
                .await
            {
                Probe::Ours => return Ok(()),
                Probe::Foreign(why) | Probe::Down(why) => why,
            };
            if Instant::now() >= deadline {
                let _ = started.child.kill().await;
                return Err(format!("not healthy within {HEALTHY_WITHIN:?}: {why}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill().await;
        }
        self.tenants_handed = None;
    }

    /// Starts `release` and waits for it to be healthy; on failure the process is gone.
    async fn start(
        &mut self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
    ) -> Result<(), String> {
        self.state = WorkloadState::Starting;
        self.attempted = Some(release.version.clone());
        let mut started = self.spawn(release, ctx)?;
        match self.healthy(release, ctx, &mut started).await {
            Ok(()) => {
                tracing::info!(
                    release = %release.version,
                    endpoint = %ctx.endpoint,
                    instance = %started.instance,
                    "workload running"
                );
                self.running = Some(Running {
                    release: release.clone(),
                    ctx: ctx.clone(),
                    child: started.child,
                    instance: started.instance,
                    control_token: started.control_token,
                    healthy_since: Instant::now(),
                    stderr: started.stderr,
                    failed_checks: 0,
                });
                self.state = WorkloadState::Running;
                self.last_good = Some(release.clone());
                Ok(())
            }
            Err(e) => {
                let _ = started.child.kill().await;
                let why = format!("release {} {e}", release.version);
                self.record_exit(format!("release {} not healthy", release.version), Some(e));
                Err(why)
            }
        }
    }

    /// Counts an exit (or a start that never became healthy) and schedules the next try.
    fn record_exit(&mut self, status: String, message: Option<String>) {
        let now = Instant::now();
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(CRASH_LOOP_WINDOW_SECS))
        {
            self.exits.pop_front();
        }
        self.last_exit = Some(WorkloadExit {
            at: chrono::Utc::now(),
            status,
            message,
        });
        self.state = if self.recent_exits() >= CRASH_LOOP_EXITS {
            WorkloadState::CrashLoop
        } else {
            WorkloadState::Restarting
        };
        self.not_before = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn recent_exits(&self) -> u32 {
        let now = Instant::now();
        self.exits
            .iter()
            .filter(|t| now.duration_since(**t) <= Duration::from_secs(CRASH_LOOP_WINDOW_SECS))
            .count() as u32
    }

    /// The one-line error a restarting or crash-looping workload puts in every report.
    fn crash_error(&self) -> String {
        let last = self
            .last_exit
            .as_ref()
            .map(|e| with_message(e.status.clone(), e.message.clone()))
            .unwrap_or_default();
        match self.state {
            WorkloadState::CrashLoop => format!(
                "workload crash loop: {} exits in the last {}s ({} restarts since the agent started); last: {last}",
                self.recent_exits(),
                CRASH_LOOP_WINDOW_SECS,
                self.restarts
            ),
            _ => format!("workload restarting after: {last}"),
        }
    }

    /// Checks that the running process is alive and answers as itself. Returns `false` when it
    /// must be replaced (it exited, or failed the liveness check too often).
    async fn still_good(&mut self) -> bool {
        let Some(r) = &mut self.running else {
            return false;
        };
        match r.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let message = r.stderr.last();
                tracing::warn!(%status, release = %r.release.version, "workload exited; restarting");
                self.running = None;
                self.tenants_handed = None;
                self.record_exit(status.to_string(), message);
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the workload"),
        }
        let (endpoint, instance, release) = (
            r.ctx.endpoint.clone(),
            r.instance.clone(),
            r.release.version.clone(),
        );
        let probe = self.probe(&endpoint, &instance, &release).await;
        let Some(r) = &mut self.running else {
            return false;
        };
        match probe {
            Probe::Ours => {
                r.failed_checks = 0;
                if r.healthy_since.elapsed() >= STABLE_AFTER {
                    self.backoff = FIRST_BACKOFF;
                }
                true
            }
            Probe::Foreign(why) | Probe::Down(why) => {
                r.failed_checks += 1;
                tracing::warn!(failed = r.failed_checks, %why, "workload liveness check failed");
                if r.failed_checks < LIVENESS_FAILURES {
                    return true;
                }
                self.stop().await;
                self.record_exit(
                    format!("killed after {LIVENESS_FAILURES} failed liveness checks"),
                    Some(why),
                );
                false
            }
        }
    }
}

/// `line` without ANSI escape sequences (colours of a workload's log).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @–~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn with_message(status: String, message: Option<String>) -> String {
    match message {
        Some(m) => format!("{status}: {m}"),
        None => status,
    }
}

impl LocalProcess {
    /// Keeps `release` running: checks the process that runs it, or (re)starts it once the
    /// restart backoff allows. `Err` is the report line.
    async fn keep_running(
        &mut self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
    ) -> Result<(), String> {
        let same = self
            .running
            .as_ref()
            .is_some_and(|r| r.release == *release && r.ctx == *ctx);
        if same {
            if self.still_good().await {
                return Ok(());
            }
        } else if self.running.is_some() {
            // Another release (or endpoint) runs: replace it, without a backoff.
            self.stop().await;
            self.not_before = None;
        }
        if let Some(t) = self.not_before {
            if Instant::now() < t {
                return Err(self.crash_error());
            }
            // The previous process of this cell ended: this start is a restart.
            self.not_before = None;
            self.restarts += 1;
        }
        self.start(release, ctx).await
    }
}

impl Deployer for LocalProcess {
    async fn ensure(
        &mut self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
    ) -> Result<(), String> {
        match self.failed.clone() {
            Some((bad, why)) if bad == *release => {
                // Rolled back from this release: keep the good one running meanwhile.
                if let Some(good) = self.last_good.clone()
                    && let Err(e) = self.keep_running(&good, ctx).await
                {
                    return Err(format!("{why}; {e}"));
                }
                return Err(why);
            }
            Some(_) => self.failed = None,
            None => {}
        }
        let new_release = self.last_good.as_ref().is_some_and(|g| g != release);
        if self.attempted.as_ref() != Some(&release.version) {
            // A release not tried yet is tried at once, whatever the backoff of the last one.
            self.not_before = None;
        }
        let failed = match self.keep_running(release, ctx).await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        if !new_release {
            // The release that ran (or the first one): keep trying it, with backoff.
            return Err(self.crash_error());
        }
        let why = match self.last_good.clone() {
            Some(good) => match self.start(&good, ctx).await {
                Ok(()) => format!("{failed}; rolled back to {}", good.version),
                Err(again) => format!("{failed}; rollback to {} failed too: {again}", good.version),
            },
            None => failed,
        };
        tracing::error!(error = %why, "deploy failed");
        self.failed = Some((release.clone(), why.clone()));
        Err(why)
    }

    async fn hand_tenants(&mut self, tenants: &CellTenants) -> Result<(), String> {
        let Some(r) = &self.running else {
            return Ok(());
        };
        let key = (r.instance.clone(), tenants.generation, tenants.epoch);
        if self.tenants_handed.as_ref() == Some(&key) {
            return Ok(());
        }
        let url = format!("{}/cellfleet/tenants", r.ctx.endpoint.trim_end_matches('/'));
        let resp = self
            .http
            .put(&url)
            .bearer_auth(&r.control_token)
            .json(tenants)
            .send()
            .await
            .map_err(|e| format!("cannot hand the workload its tenants ({url}): {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!(
                "the workload refused its tenant set ({url}): {status} {}",
                body.trim().chars().take(200).collect::<String>()
            ));
        }
        tracing::info!(
            generation = tenants.generation,
            tenants = tenants.tenants.len(),
            "workload has its tenant set"
        );
        self.tenants_handed = Some(key);
        Ok(())
    }

    fn running(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.release.version.as_str())
    }

    fn status(&self) -> WorkloadStatus {
        let instance = self.running.as_ref().map(|r| r.instance.clone());
        WorkloadStatus {
            state: self.state,
            release: self
                .running
                .as_ref()
                .map(|r| r.release.version.clone())
                .or_else(|| self.attempted.clone()),
            tenants_generation: self
                .tenants_handed
                .as_ref()
                .filter(|(i, _, _)| Some(i) == instance.as_ref())
                .map(|(_, g, _)| *g),
            instance,
            restarts: self.restarts,
            recent_exits: self.recent_exits(),
            last_exit: self.last_exit.clone(),
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        match self.running {
            Some(_) => None,
            None => self.not_before,
        }
    }

    async fn exited(&mut self) {
        match &mut self.running {
            Some(r) => {
                let _ = r.child.wait().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_taken_out_of_log_lines() {
        assert_eq!(
            without_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m started"),
            "2026  INFO started"
        );
        assert_eq!(without_ansi("plain"), "plain");
    }
}
