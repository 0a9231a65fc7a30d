//! Helpers shared by the HTTP benchmarks: pinned processes, wrk runs, order statistics.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cellfleet_api::{Generation, RouteEntry, RouteState, RoutesSnapshot};
use cellfleet_e2e::{free_port, workspace_bin_in};
use cellfleet_routing::RoutingTable;

/// Connections of every closed-loop load.
pub const CONNECTIONS: usize = 50;

pub struct Kill(pub Vec<Child>);

impl Drop for Kill {
    /// SIGTERM first: nginx's master stops its worker on it (a SIGKILLed master would leave the
    /// worker running); SIGKILL whatever is left after 5 s.
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    panic!("{name} is not installed: apt-get install wrk nginx redis-server");
}

pub fn pinned(cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, program]);
    c
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(requests/s, p99 ms)` from one wrk run; panics unless every answer was a 200.
pub fn wrk(url: &str, script: &str, secs: u64) -> (f64, f64) {
    let out = pinned("1", &tool("wrk"))
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s")])
        .args(["--latency", "-s", script, url])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "{url} answered errors under load:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throughput in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_wrk_duration(v.trim()))
        .unwrap_or(f64::NAN);
    (rps, p99)
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `1.01s`; in milliseconds.
pub fn parse_wrk_duration(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Starts the release `cellfleet-router` on CPU 0 serving `table` from a cache in `dir` (the
/// control plane unreachable, which lookups never touch), with `extra` arguments; returns its
/// port.
pub fn cached_router(
    children: &mut Kill,
    dir: &Path,
    table: &RoutingTable,
    extra: &[String],
) -> u16 {
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    cellfleet_routing::router::cache::save(&cache, table, cellfleet_routing::unix_ms())
        .expect("write cache");
    let token = dir.join("edge.token");
    std::fs::write(&token, "unused").expect("token");
    let port = free_port();
    children.0.push(
        pinned(
            "0",
            &workspace_bin_in("release", "cellfleet-router")
                .display()
                .to_string(),
        )
        .args(["--control-plane", "http://127.0.0.1:9", "--token-file"])
        .arg(&token)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cellfleet-router"),
    );
    port
}

/// A table of `tenants` active routes (version 1): route `i` is `(tenant, cell, endpoint)`.
pub fn table_of(tenants: usize, route: impl Fn(usize) -> (String, String, String)) -> RoutingTable {
    let entries = (0..tenants)
        .map(|i| {
            let (tenant, cell, endpoint) = route(i);
            RouteEntry {
                tenant: tenant.parse().expect("tenant"),
                env: "prod".parse().expect("env"),
                cell: cell.parse().expect("cell"),
                endpoint: Some(endpoint),
                state: RouteState::Active,
                generation: Generation(1),
                requests_per_second: None,
                version: 1,
            }
        })
        .collect();
    RoutingTable::from_snapshot(&RoutesSnapshot {
        epoch: String::new(),
        version: 1,
        entries,
    })
    .expect("table")
}
