//! Route-change propagation (BENCHMARKS.md): a change made on the control plane → visible at
//! every one of 10 real `cellfleet-router` processes watching it.
//!
//! Real processes on one machine: `cellfleet serve` (SQLite registry) holding 1,000 routed
//! tenants, and 10 routers (each its own cache directory, long-polling `/v1/routes/watch`). Each
//! round suspends or resumes one tenant through the operator API; the clock starts just before
//! the request is sent, and one thread per router polls `GET /route/probe` on it (every 1 ms, a
//! fresh connection each time) until the answer shows the new state. The samples are the
//! per-router delays over all rounds.
//!
//! Run: `cargo build --release -p cellfleet -p cellfleet-routing && cargo bench -p cellfleet-routing --bench route_propagation`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cellfleet_e2e::{free_port, http_call, http_get, workspace_bin_in};

const ROUTERS: usize = 10;
const TENANTS: usize = 1_000;
const ROUNDS: usize = 30;

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// The probe tenant's status at a router: 200 routed, 403 suspended.
fn probe(router: &str) -> u16 {
    http_get(router, "/route/probe", None).map_or(0, |(status, _)| status)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("admin.token");
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let mut procs = Kill(Vec::new());
    procs.0.push(
        Command::new(workspace_bin_in("release", "cellfleet"))
            .args(["serve", "--listen", &listen, "--admin-token-file"])
            .arg(&token)
            .arg("--database-url")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("registry.db").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cellfleet serve"),
    );
    wait_for("control plane start", || {
        matches!(http_get(&url, "/healthz", None), Ok((200, _)))
    });
    let admin = std::fs::read_to_string(&token)
        .expect("admin token")
        .trim()
        .to_owned();
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];

    let mut fleet = String::from(
        "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: eu-west-1}\nspec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}\n",
    );
    for i in 0..10 {
        fleet.push_str(&format!(
            "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: cell-{i}}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: 1000, endpoint: \"http://10.0.0.{i}:8080\"}}\n"
        ));
    }
    for i in 0..TENANTS {
        let name = if i == 0 {
            "probe".to_owned()
        } else {
            format!("t-{i:04}")
        };
        fleet.push_str(&format!(
            "---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec: {{displayName: {name}, profile: mt-standard, residency: {{jurisdiction: eu}}}}\n"
        ));
    }
    let fleet_file = dir.path().join("fleet.yaml");
    std::fs::write(&fleet_file, fleet).expect("write fleet");
    let applied = Command::new(workspace_bin_in("release", "cellfleet"))
        .args(["apply", "-f"])
        .arg(&fleet_file)
        .env("CELLFLEET_SERVER", &url)
        .env("CELLFLEET_TOKEN_FILE", &token)
        .output()
        .expect("apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let (_, created) = http_call(
        &url,
        "POST",
        "/v1/tokens",
        &auth,
        "{\"role\": \"edge\", \"description\": \"bench\"}",
    )
    .expect("edge token");
    let edge: serde_json::Value = serde_json::from_str(&created).expect("token JSON");
    let edge_file = dir.path().join("edge.token");
    std::fs::write(&edge_file, edge["token"].as_str().expect("token")).expect("write token");

    let routers: Vec<String> = (0..ROUTERS)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", free_port());
            procs.0.push(
                Command::new(workspace_bin_in("release", "cellfleet-router"))
                    .args(["--control-plane", &url, "--listen", &addr, "--poll", "30s"])
                    .arg("--token-file")
                    .arg(&edge_file)
                    .arg("--cache-dir")
                    .arg(dir.path().join(format!("router-{i}")))
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start cellfleet-router"),
            );
            format!("http://{addr}")
        })
        .collect();
    for r in &routers {
        wait_for("router sync", || probe(r) == 200);
    }

    let mut samples = Vec::with_capacity(ROUNDS * ROUTERS);
    let mut slowest = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (action, want) = if round % 2 == 0 {
            ("suspend", 403)
        } else {
            ("resume", 200)
        };
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let pollers: Vec<_> = routers
            .iter()
            .cloned()
            .map(|r| {
                std::thread::spawn(move || {
                    let deadline = start + Duration::from_secs(30);
                    while probe(&r) != want {
                        assert!(Instant::now() < deadline, "{r} never saw the change");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    start.elapsed().as_secs_f64() * 1000.0
                })
            })
            .collect();
        let (status, body) = http_call(
            &url,
            "POST",
            &format!("/v1/tenants/probe/{action}"),
            &auth,
            "{}",
        )
        .expect("change");
        assert!(status < 300, "{action}: {status} {body}");
        let delays: Vec<f64> = pollers
            .into_iter()
            .map(|p| p.join().expect("poller"))
            .collect();
        slowest.push(delays.iter().copied().fold(0.0, f64::max));
        samples.extend(delays);
    }
    samples.sort_by(f64::total_cmp);
    slowest.sort_by(f64::total_cmp);
    println!(
        "route change → visible at each of {ROUTERS} routers ({TENANTS} routes, {ROUNDS} rounds, {} samples):",
        samples.len()
    );
    println!(
        "  per router: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    println!(
        "  all {ROUTERS} routers: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&slowest, 0.50),
        percentile(&slowest, 0.99)
    );
    drop(procs);
}
