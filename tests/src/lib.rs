//! The workspace test harness: throwaway databases on both backends and the real `cellfleet`
//! binary run as a server and as the operator CLI.
//!
//! Used by the end-to-end tests in `tests/tests/` and by the control plane's own integration
//! tests (for [`TestDb`]).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

mod edge;
mod fleet;
mod moves;
mod runbooks;
pub use edge::{
    EnvoyProcess, NginxProcess, envoy_bin, nginx_bin, nginx_edge, shipped_envoy_config,
    shipped_nginx_config,
};
pub use fleet::{
    CellDb, EdgeAnswer, FleetOptions, LocalFleet, quota_enforced, router_health, start_router,
    through_edge,
};
pub use moves::{
    DualServeProbe, Forwarder, Writer, Written, assert_every_write_landed_once, wait_no_rows,
    wait_router_live,
};

/// Which registry backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CELLFLEET_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test: a SQLite file in a temp dir, or a fresh PostgreSQL
/// database dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(db: Db) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match db {
            Db::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("registry.db").display()),
                dir,
                pg_name: None,
            },
            Db::Postgres => {
                let name = format!("cf_test_{}", random_suffix());
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is required for the tests ({admin}): {e}; start it (see README) or set CELLFLEET_TEST_POSTGRES_URL")
                });
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                let mut url = reqwest::Url::parse(&admin).expect("postgres url");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A connection of its own to the database (for looking behind the API's back).
    pub async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("raw connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop cannot await and the test's runtime may be shutting down: use a thread with a
            // runtime of its own.
            let admin = postgres_admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async move {
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await
                    .ok()
                })
            })
            .join();
        }
    }
}

pub(crate) fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `cellfleet` binary of this workspace (see [`workspace_bin`]).
pub fn cellfleet_bin() -> PathBuf {
    workspace_bin("cellfleet")
}

/// The `cell-agent` binary of this workspace (see [`workspace_bin`]).
pub fn cell_agent_bin() -> PathBuf {
    workspace_bin("cell-agent")
}

/// A binary of this workspace.
///
/// `cargo test --workspace` builds it (its package has integration tests), so it is fresh
/// whenever the suite runs the documented way. Building it from here would contend with the
/// running cargo for the build lock, so a missing or stale binary is an error that says what to
/// run instead of a silent test of old code.
pub fn workspace_bin(name: &str) -> PathBuf {
    let profile = std::env::var("CELLFLEET_E2E_PROFILE").unwrap_or_else(|_| "debug".to_owned());
    workspace_bin_in(&profile, name)
}

/// A binary of this workspace built with `profile` (`debug` or `release`); see [`workspace_bin`].
pub fn workspace_bin_in(profile: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join(profile).join(name);
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo test --workspace` (or `cargo build --workspace`)",
                bin.display()
            )
        });
    // Cargo's dep-info next to the binary lists exactly the sources it was built from.
    let dep_info = std::fs::read_to_string(bin.with_extension("d")).unwrap_or_default();
    let sources = dep_info
        .split_once(": ")
        .map(|(_, deps)| deps)
        .unwrap_or("");
    for source in sources.split_whitespace().filter(|s| !s.ends_with('\\')) {
        let changed = std::fs::metadata(source).and_then(|m| m.modified());
        if let Ok(changed) = changed {
            assert!(
                built >= changed,
                "{} is older than {source}: run `cargo test --workspace` (or `cargo build --workspace`)",
                bin.display()
            );
        }
    }
    bin
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `cellfleet serve` or `cellfleet up` process this test started; killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub url: String,
    /// What the process printed on stdout before it was ready.
    pub banner: Vec<String>,
    /// The process's working directory: files a server puts in its current directory by
    /// default (the audit key on PostgreSQL) stay out of the source tree.
    pub cwd: tempfile::TempDir,
}

impl ServerProcess {
    /// `cellfleet serve` on `db` with its bootstrap admin token in `db`'s directory (and `extra`
    /// arguments); returns the server and the admin token file.
    pub fn serve(db: &TestDb, extra: &[&str]) -> (ServerProcess, PathBuf) {
        let admin = db.dir.path().join("admin.token");
        let mut args = vec![
            "serve",
            "--database-url",
            &db.url,
            "--admin-token-file",
            admin.to_str().unwrap_or_default(),
        ];
        args.extend_from_slice(extra);
        (Self::start(&args, "listening on"), admin)
    }

    /// Starts `cellfleet ARGS…` listening on a free port (passed as `--listen`) and waits until
    /// it prints `ready_line` and answers `/healthz`.
    pub fn start(args: &[&str], ready_line: &str) -> ServerProcess {
        Self::start_bin(&cellfleet_bin(), args, ready_line)
    }

    /// Starts another server binary of the workspace the same way (e.g. `cellfleet-router`).
    pub fn start_bin(bin: &Path, args: &[&str], ready_line: &str) -> ServerProcess {
        Self::start_bin_at(bin, &format!("127.0.0.1:{}", free_port()), args, ready_line)
    }

    /// [`ServerProcess::start_bin`] on a given address (e.g. to restart a server where its
    /// clients expect it).
    pub fn start_bin_at(
        bin: &Path,
        listen: &str,
        args: &[&str],
        ready_line: &str,
    ) -> ServerProcess {
        Self::start_bin_env(bin, listen, args, &[], ready_line)
    }

    /// [`ServerProcess::start_bin_at`] with extra environment (e.g. armed failpoints).
    pub fn start_bin_env(
        bin: &Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
        ready_line: &str,
    ) -> ServerProcess {
        let listen = listen.to_owned();
        let cwd = tempfile::tempdir().expect("working directory");
        let mut child = Command::new(bin)
            .current_dir(cwd.path())
            .envs(env.iter().copied())
            .args(args)
            .args(["--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut banner = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let done = line.contains(ready_line);
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("cellfleet exited before it was ready; it printed: {banner:?}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "cellfleet not ready in time: {banner:?}"
            );
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let url = format!("http://{listen}");
        wait_healthy(&url);
        ServerProcess {
            child,
            url,
            banner,
            cwd,
        }
    }

    /// Stops the process like an operator would (SIGTERM, which `up` also passes to its local
    /// fleet), and SIGKILL if it has not exited after 15 s.
    pub fn stop(mut self) {
        self.halt();
    }

    /// [`ServerProcess::stop`] without giving the value up (its working directory stays).
    pub fn halt(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }

    /// Waits up to `within` for the process to exit on its own; returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        wait_child(&mut self.child, within)
    }

    /// The process id (for reading its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, now.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

fn wait_child(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(http_get(url, "/healthz", None), Ok((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url}/healthz never answered");
}

/// A plain HTTP/1.0 GET (no client library: tests must see exactly what the server sends).
pub fn http_get(base: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_call(base, "GET", path, &headers, "")
}

/// A plain HTTP/1.1 request (one per connection) with headers and a JSON body; returns the
/// status, the head lower-cased (for header checks) and the body.
pub fn http_request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    // HTTP/1.1 (Envoy refuses 1.0 by default), one request per connection.
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" || method == "PUT" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// One header of a lower-cased response head.
pub fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// A plain HTTP/1.0 request with headers and a body; returns the status and the body.
pub fn http_call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A `cell-agent` process this test started; killed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    pub fn start(
        control_plane: &str,
        token_file: &Path,
        cell: &str,
        data_dir: &Path,
    ) -> AgentProcess {
        Self::start_with_env(control_plane, token_file, cell, data_dir, &[])
    }

    /// Starts an agent with extra environment (e.g. `CELL_AGENT_DATABASE_URL`).
    pub fn start_with_env(
        control_plane: &str,
        token_file: &Path,
        cell: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> AgentProcess {
        // Its log stays in its directory (for a failing test's message).
        let _ = std::fs::create_dir_all(data_dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("agent.log"))
            .ok();
        let (out, err) = match log.and_then(|l| Some((l.try_clone().ok()?, l))) {
            Some((a, b)) => (Stdio::from(a), Stdio::from(b)),
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(cell_agent_bin())
            .envs(env.iter().copied())
            .args([
                "--control-plane",
                control_plane,
                "--cell",
                cell,
                "--poll",
                "5s",
            ])
            .arg("--token-file")
            .arg(token_file)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start cell-agent");
        AgentProcess { child }
    }

    /// Kills the agent (SIGKILL: recovery must not depend on a clean stop).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (for reading its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `within` for the agent to exit on its own; returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        wait_child(&mut self.child, within)
    }
}

impl Drop for AgentProcess {
    /// SIGTERM first, so the agent stops the workload it runs; SIGKILL if it does not exit.
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// Polls `condition` until it holds, for at most `within`; panics with `what` otherwise.
/// (A convergence wait, not a timing assertion: `within` is generous.)
pub fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within {within:?}: {what}");
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed: {}", self.stderr);
        &self.stdout
    }
}

/// Runs the operator CLI against `server` with the token in `token_file`.
pub fn cli(server: &str, token_file: &Path, args: &[&str]) -> Run {
    cli_with(
        server,
        &[(
            "CELLFLEET_TOKEN_FILE",
            token_file.to_str().expect("utf-8 path"),
        )],
        args,
    )
}

/// Creates an agent token for `cell` through the CLI and writes it to `DIR/CELL.token`.
pub fn agent_token_file(server: &str, admin: &Path, cell: &str, dir: &Path) -> PathBuf {
    let token = cli(
        server,
        admin,
        &[
            "token", "create", "--role", "agent", "--cell", cell, "-o", "json",
        ],
    )
    .json();
    let path = dir.join(format!("{cell}.token"));
    std::fs::write(&path, token["token"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// Whether `cell`'s agent reports the cell's current desired generation (so its workload has
/// the current tenant set) without errors.
pub fn converged(server: &str, admin: &Path, cell: &str) -> bool {
    let v = cli(server, admin, &["cell", "get", cell, "-o", "json"]).json();
    v["observedGeneration"] == v["desiredGeneration"]
        && v["workload"]["tenantsGeneration"] == v["desiredGeneration"]
        && v["errors"].as_array().is_some_and(Vec::is_empty)
}

/// Waits (generously) until `cell` has [`converged`].
pub fn wait_converged(server: &str, admin: &Path, cell: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{cell} converges on its desired state"),
        || converged(server, admin, cell),
    );
}

/// Runs the operator CLI with extra environment.
pub fn cli_with(server: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out: Output = Command::new(cellfleet_bin())
        .args(args)
        .env("CELLFLEET_SERVER", server)
        .env_remove("CELLFLEET_TOKEN")
        .env_remove("CELLFLEET_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("run cellfleet");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
