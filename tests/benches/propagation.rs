//! Desired-state propagation (BENCHMARKS.md): a change made on the control plane → every one of
//! 50 real `cell-agent` processes has applied it and reported so.
//!
//! Real processes on one machine: `cellfleet serve` (SQLite registry) and 50 agents, each with its
//! own SQLite cell database. The change is a new migration (it changes every cell's desired state,
//! and each agent must run it against its database before it reports the new generation). Times
//! are from sending the change to the control plane seeing the cell's report, read by polling
//! `GET /v1/cells` every 5 ms.
//!
//! Run: `cargo build --release -p cellfleet -p cell-agent && cargo bench -p cellfleet-e2e --bench propagation`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cellfleet_e2e::{free_port, http_get, workspace_bin_in};

const AGENTS: usize = 50;
const ROUNDS: usize = 10;

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cellfleet(url: &str, token: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(workspace_bin_in("release", "cellfleet"))
        .args(args)
        .env("CELLFLEET_SERVER", url)
        .env("CELLFLEET_TOKEN_FILE", token)
        .output()
        .expect("run cellfleet");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(cell, desired, observed)` of every cell.
fn cells(url: &str, token: &str) -> Vec<(String, i64, i64)> {
    let (_, body) = http_get(url, "/v1/cells", Some(token)).expect("GET /v1/cells");
    let v: serde_json::Value = serde_json::from_str(&body).expect("cells JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["desiredGeneration"].as_i64().unwrap_or(-1),
                c["observedGeneration"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(&url, "/healthz", None), Ok((200, _))) {
        assert!(Instant::now() < deadline, "control plane did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = std::fs::read_to_string(&token)
        .expect("admin token")
        .trim()
        .to_owned();

    let mut fleet = String::from(
        "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: eu-west-1}\nspec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}\n",
    );
    for i in 0..AGENTS {
        fleet.push_str(&format!(
            "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: cell-{i}}}\nspec: {{region: eu-west-1, kind: pooled, env: prod}}\n"
        ));
    }
    let fleet_file = dir.path().join("fleet.yaml");
    std::fs::write(&fleet_file, fleet).expect("write fleet");
    cellfleet(
        &url,
        &token,
        &["apply", "-f", fleet_file.to_str().expect("utf-8")],
    );
    for i in 0..AGENTS {
        let cell = format!("cell-{i}");
        let created = cellfleet(
            &url,
            &token,
            &[
                "token", "create", "--role", "agent", "--cell", &cell, "-o", "json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&created).expect("token JSON");
        let token_file = dir.path().join(format!("{cell}.token"));
        std::fs::write(&token_file, v["token"].as_str().expect("token")).expect("write token");
        procs.0.push(
            Command::new(workspace_bin_in("release", "cell-agent"))
                .args([
                    "--control-plane",
                    &url,
                    "--cell",
                    &cell,
                    "--poll",
                    "30s",
                    "--token-file",
                ])
                .arg(&token_file)
                .arg("--data-dir")
                .arg(dir.path().join(&cell))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start cell-agent"),
        );
    }
    let converged = |cells: &[(String, i64, i64)]| cells.iter().all(|(_, d, o)| d == o);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !converged(&cells(&url, &admin)) {
        assert!(Instant::now() < deadline, "agents did not converge");
        std::thread::sleep(Duration::from_millis(50));
    }

    let migrations = dir.path().join("migrations");
    std::fs::create_dir_all(&migrations).expect("mkdir");
    let mut per_cell = Vec::new();
    let mut all = Vec::new();
    for round in 1..=ROUNDS {
        let file = migrations.join(format!("V{round}__t{round}.expand.sql"));
        std::fs::write(
            &file,
            format!("CREATE TABLE t{round} (tenant_id TEXT NOT NULL, v INTEGER);"),
        )
        .expect("write");
        let started = Instant::now();
        cellfleet(
            &url,
            &token,
            &["migration", "add", "-f", file.to_str().expect("utf-8")],
        );
        let mut seen: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = started.elapsed().as_secs_f64() * 1e3;
            for (name, d, o) in cells(&url, &admin) {
                if d == o && d > 0 {
                    seen.entry(name).or_insert(now);
                }
            }
            if seen.len() == AGENTS {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} of {AGENTS} agents applied the change",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let slowest = seen.values().copied().fold(0.0, f64::max);
        all.push(slowest);
        per_cell.extend(seen.into_values());
    }
    per_cell.sort_by(f64::total_cmp);
    all.sort_by(f64::total_cmp);
    println!(
        "propagation: {AGENTS} cell-agent processes, {ROUNDS} changes (a new migration each), SQLite registry and cell databases"
    );
    println!("| measure | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| change → one agent applied and reported ({} samples) | {:.0} ms | {:.0} ms | {:.0} ms |",
        per_cell.len(),
        percentile(&per_cell, 0.5),
        percentile(&per_cell, 0.99),
        per_cell[per_cell.len() - 1]
    );
    println!(
        "| change → all {AGENTS} agents applied and reported ({ROUNDS} samples) | {:.0} ms | {:.0} ms | {:.0} ms |",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all[all.len() - 1]
    );
}
