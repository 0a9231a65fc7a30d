//! Mutating-API benchmark (BENCHMARKS.md): p50/p99 latency of tenant mutations under 50
//! concurrent clients, and onboarding throughput through `apply`, on SQLite and on PostgreSQL.
//!
//! The server runs in this process on 127.0.0.1 (real HTTP, real database); clients are reqwest
//! tasks on the same runtime. PostgreSQL: a throwaway database on `CELLFLEET_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! On PostgreSQL the mutations are measured again while 200 simulated agents (one per cell of
//! their own, each with its own agent token) post heartbeat reports: every 10 s (the agents'
//! cadence) and every 1 s (as 2,000 cells would), once with reports stored off the mutation lock
//! (today) and once with every report taking it (as before; `Settings::reports_under_lock`).
//!
//! Run: `cargo bench -p cellfleet --bench api_load`

// A panic in a test or benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cellfleet::server::{Server, ServerConfig};
use cellfleet::service::Settings;
use cellfleet_api::{ApplyRequest, ApplyResponse, ManifestFile};
use cellfleet_e2e::{Db, TestDb};
use serde_json::json;

/// Concurrent clients (50; `CELLFLEET_BENCH_CLIENTS` overrides, e.g. 1 for unloaded latency).
fn clients() -> usize {
    std::env::var("CELLFLEET_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}
const TENANTS_PER_CLIENT: usize = 15;
const ONBOARD: usize = 5_000;

const FLEET: &str = r#"
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-west-1}
spec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}
---
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-central-1}
spec: {jurisdiction: eu, location: {lat: 50.11, lon: 8.68}}
"#;

fn fleet() -> String {
    let mut out = FLEET.to_owned();
    for region in ["eu-west-1", "eu-central-1"] {
        for i in 0..10 {
            out.push_str(&format!(
                "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: {region}-c{i}}}\nspec: {{region: {region}, kind: pooled, env: prod, capacity: 5000}}\n"
            ));
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// Simulated agents reporting during the mutations: how many, how often, and whether their
/// reports take the mutation lock.
#[derive(Debug, Clone, Copy)]
struct Reporting {
    agents: usize,
    every: Duration,
    under_lock: bool,
}

const AGENTS: usize = 200;

fn agent_cells() -> String {
    let mut out = String::new();
    for i in 0..AGENTS {
        out.push_str(&format!(
            "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: agent-c{i}}}\nspec: {{region: eu-west-1, kind: pooled, env: staging, capacity: 10}}\n"
        ));
    }
    out
}

/// A heartbeat like a real agent's: health over its window, rows of a few tenants.
fn heartbeat() -> serde_json::Value {
    let rows: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|t| (format!("tenant-{t}"), json!(1000 + t)))
        .collect();
    json!({
        "observedGeneration": 1,
        "release": "1.0.0",
        "migrations": [],
        "health": {"windowSeconds": 60, "requests": 1200, "errors": 0, "latencyP50Ms": 3.1, "latencyP99Ms": 18.4},
        "tenantRows": rows,
        "errors": [],
        "isolationDrift": [],
    })
}

async fn run(db: Db, reporting: Option<Reporting>) -> anyhow::Result<()> {
    let test_db = TestDb::new(db).await;
    let token_file = test_db.dir.path().join("admin.token");
    let server = Server::start(ServerConfig {
        database_url: test_db.url.clone(),
        listen: "127.0.0.1:0".into(),
        admin_token_file: Some(token_file.clone()),
        settings: Settings {
            reports_under_lock: reporting.is_some_and(|r| r.under_lock),
            ..Settings::default()
        },
        max_body_bytes: 16 * 1024 * 1024,
        audit_key_file: Some(test_db.dir.path().join("audit.key")),
        audit_checkpoint_log: Some(test_db.dir.path().join("audit-checkpoints.jsonl")),
        audit_checkpoint_every: cellfleet::server::AUDIT_CHECKPOINT_EVERY,
        move_settings: Default::default(),
    })
    .await?;
    let base = server.url();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients())
        .build()?;
    let apply = |content: String| {
        let http = http.clone();
        let base = base.clone();
        let token = token.clone();
        async move {
            let req = ApplyRequest {
                files: vec![ManifestFile {
                    name: "bench.yaml".into(),
                    content,
                }],
                dry_run: false,
            };
            let resp = http
                .post(format!("{base}/v1/apply"))
                .bearer_auth(&token)
                .json(&req)
                .send()
                .await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "apply failed: {}",
                resp.text().await?
            );
            Ok::<ApplyResponse, anyhow::Error>(resp.json().await?)
        }
    };
    apply(fleet()).await?;

    // 0. Simulated agents reporting in the background, staggered over their period.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reporters = Vec::new();
    if let Some(r) = reporting {
        apply(agent_cells()).await?;
        for i in 0..r.agents {
            let created: serde_json::Value = http
                .post(format!("{base}/v1/tokens"))
                .bearer_auth(&token)
                .json(&json!({"role": "agent", "cell": format!("agent-c{i}")}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let agent_token = created["token"].as_str().unwrap_or_default().to_owned();
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            let offset = r.every.mul_f64(i as f64 / r.agents as f64);
            reporters.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(r.every);
                let mut latencies = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let t = Instant::now();
                    let resp = http
                        .post(format!("{base}/v1/agent/report"))
                        .bearer_auth(&agent_token)
                        .json(&heartbeat())
                        .send()
                        .await?;
                    let status = resp.status();
                    let _ = resp.bytes().await?;
                    anyhow::ensure!(status.is_success(), "report: {status}");
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        // Every agent has reported once (its first report is audited, as a real agent's is).
        tokio::time::sleep(r.every + Duration::from_millis(200)).await;
    }

    // 1. Mutating API latency under 50 concurrent clients: create, suspend, resume.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients() {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in 0..TENANTS_PER_CLIENT {
                let id = format!("c{c}-t{i}");
                let calls = [
                    (format!("{base}/v1/tenants"), json!({"id": id, "spec": {"displayName": id, "profile": "mt-standard", "residency": {"jurisdiction": "eu"}}})),
                    (format!("{base}/v1/tenants/{id}/suspend"), json!({"reason": "bench"})),
                    (format!("{base}/v1/tenants/{id}/resume"), json!({})),
                ];
                for (url, body) in calls {
                    let t = Instant::now();
                    let resp = http.post(&url).bearer_auth(&token).json(&body).send().await?;
                    let status = resp.status();
                    let _ = resp.bytes().await?;
                    anyhow::ensure!(status.is_success(), "{url}: {status}");
                    latencies.push(t.elapsed());
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let n = latencies.len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reports = Vec::new();
    for r in reporters {
        reports.extend(r.await??);
    }
    reports.sort();
    if let Some(r) = reporting {
        println!(
            "| {db:?} | {n} mutations, {} clients; {} agents reporting every {} s, {} | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms | {:.0} req/s | {} reports: p99 {:.1} ms |",
            clients(),
            r.agents,
            r.every.as_secs(),
            if r.under_lock {
                "reports under the lock (before)"
            } else {
                "reports off the lock (now)"
            },
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies[n - 1].as_secs_f64() * 1e3,
            n as f64 / elapsed.as_secs_f64(),
            reports.len(),
            reports
                .last()
                .map_or(0.0, |_| percentile(&reports, 0.99).as_secs_f64() * 1e3),
        );
        let _ = stop_tx.send(());
        serving.await??;
        return Ok(());
    }

    // 2. Onboarding through apply: one manifest of ONBOARD tenants.
    let mut manifest = String::new();
    for i in 0..ONBOARD {
        manifest.push_str(&format!(
            "---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: bulk-{i}}}\nspec: {{displayName: Bulk {i}, profile: mt-standard, residency: {{jurisdiction: eu, preferredRegion: eu-west-1}}}}\n"
        ));
    }
    let t = Instant::now();
    let resp = apply(manifest).await?;
    let onboard = t.elapsed();
    anyhow::ensure!(
        resp.placed.len() == ONBOARD,
        "placed {} of {ONBOARD}",
        resp.placed.len()
    );

    println!(
        "| {db:?} | {n} mutations, {} clients | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms | {:.0} req/s | apply of {ONBOARD} tenants: {:.2} s = {:.0} tenants/s |",
        clients(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[n - 1].as_secs_f64() * 1e3,
        n as f64 / elapsed.as_secs_f64(),
        onboard.as_secs_f64(),
        ONBOARD as f64 / onboard.as_secs_f64(),
    );
    let _ = stop_tx.send(());
    serving.await??;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    cellfleet::cli::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("| backend | load | p50 | p99 | max | throughput | onboarding |");
    println!("|---|---|---|---|---|---|---|");
    rt.block_on(async {
        run(Db::Sqlite, None).await?;
        run(Db::Postgres, None).await?;
        for every in [10, 1] {
            for under_lock in [true, false] {
                let reporting = Reporting {
                    agents: AGENTS,
                    every: Duration::from_secs(every),
                    under_lock,
                };
                run(Db::Postgres, Some(reporting)).await?;
            }
        }
        Ok(())
    })
}
