//! Running the cell's workload at the desired release.
//!
//! [`Deployer`] is the seam: the agent asks it to make a release run and asks what runs.
//! [`LocalProcess`] (the `local` provider) runs the release's artifact as a supervised child
//! process: restarted with exponential backoff when it exits, replaced when the release changes,
//! and — when a new release does not become healthy — replaced by the last release that did
//! (rollback), with the failure reported. Other deployers (a command hook, a container runtime)
//! implement the same trait.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellfleet_api::DesiredRelease;
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

    /// The release running and healthy now.
    fn running(&self) -> Option<&str>;

    /// Resolves when the workload process exits (so the agent can react at once).
    fn exited(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// How long a new release has to answer `/healthz`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct Running {
    release: DesiredRelease,
    ctx: WorkloadContext,
    child: Child,
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
    /// A release that did not become healthy, and why: not retried (no flapping between it and
    /// the rollback) until the desired release changes.
    failed: Option<(DesiredRelease, String)>,
    /// Restart backoff after crashes.
    backoff: Duration,
    not_before: Option<Instant>,
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
            backoff: Duration::from_millis(250),
            not_before: None,
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

impl LocalProcess {
    fn spawn(&self, release: &DesiredRelease, ctx: &WorkloadContext) -> Result<Child, String> {
        let a = &release.artifact;
        let child = Command::new(&a.command)
            .args(&a.args)
            .envs(&a.env)
            .env("WORKLOAD_LISTEN", listen_address(&ctx.endpoint)?)
            .env("WORKLOAD_DATABASE_URL", &ctx.database_url)
            .env("WORKLOAD_RELEASE", &release.version)
            .env("WORKLOAD_CELL", &ctx.cell)
            .stdout(std::process::Stdio::null())
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
        Ok(child)
    }

    async fn healthy(&self, ctx: &WorkloadContext, child: &mut Child) -> Result<(), String> {
        let url = format!("{}/healthz", ctx.endpoint.trim_end_matches('/'));
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}) before it was healthy"));
            }
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not healthy at {url} within {HEALTHY_WITHIN:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill().await;
        }
    }

    /// Starts `release` and waits for it to be healthy; on failure the process is gone.
    async fn start(
        &mut self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
    ) -> Result<(), String> {
        let mut child = self.spawn(release, ctx)?;
        match self.healthy(ctx, &mut child).await {
            Ok(()) => {
                tracing::info!(release = %release.version, endpoint = %ctx.endpoint, "workload running");
                self.running = Some(Running {
                    release: release.clone(),
                    ctx: ctx.clone(),
                    child,
                });
                self.last_good = Some(release.clone());
                Ok(())
            }
            Err(e) => {
                let _ = child.kill().await;
                Err(format!("release {} {e}", release.version))
            }
        }
    }
}

impl Deployer for LocalProcess {
    async fn ensure(
        &mut self,
        release: &DesiredRelease,
        ctx: &WorkloadContext,
    ) -> Result<(), String> {
        match &self.failed {
            Some((bad, why)) if bad == release => return Err(why.clone()),
            Some(_) => self.failed = None,
            None => {}
        }
        if let Some(r) = &mut self.running
            && r.release == *release
            && r.ctx == *ctx
        {
            match r.child.try_wait() {
                Ok(None) => {
                    self.backoff = Duration::from_millis(250);
                    return Ok(());
                }
                Ok(Some(status)) => {
                    tracing::warn!(%status, release = %release.version, "workload exited; restarting")
                }
                Err(e) => tracing::warn!(error = %e, "cannot check the workload; restarting"),
            }
            self.running = None;
            // Crash loop protection: restart no sooner than the backoff allows.
            let wait = self.backoff;
            self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
            self.not_before = Some(Instant::now() + wait);
        }
        if let Some(t) = self.not_before.take()
            && Instant::now() < t
        {
            tokio::time::sleep(t - Instant::now()).await;
        }
        // A different release (or nothing) runs: replace it.
        self.stop().await;
        let failed = match self.start(release, ctx).await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        let why = match self.last_good.clone().filter(|g| g != release) {
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

    fn running(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.release.version.as_str())
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
