//! Release-train benchmark (BENCHMARKS.md): a train over 1,000 simulated cells.
//!
//! The control plane runs in this process on 127.0.0.1 (real HTTP, SQLite registry); 1,000
//! simulated agents — one task each, with their own agent token — speak the real agent protocol
//! to it: they long-poll `GET /v1/agent/desired`, "run" whatever release their desired state
//! names at once, and report it with tenant traffic (`releaseHealth`) and, while baking, probe
//! results. The fleet: 10 regions × 100 pooled cells. The train: a canary per region, then
//! batches of up to 100 cells (one region each), every wave baking `CELLFLEET_BENCH_BAKE`
//! (default 20s).
//!
//! It prints:
//! - desired-state propagation: per cell, from the commit that gave it the release (the train's
//!   `deployedAt`) to its agent's long-poll answering with it — p50/p99/max over every cell;
//! - control-plane overhead: what the train added on top of the configured bakes — per wave,
//!   the time from the previous wave's decision to this wave's start, plus from the end of its
//!   last bake to its decision — as a share of the total bake time; and the whole train's wall
//!   time over the bakes (which also holds the simulated agents' convergence).
//!
//! Run: `cargo bench -p cellfleet --bench trains`

// A panic in a benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellfleet::server::{Server, ServerConfig};
use cellfleet::service::Settings;
use cellfleet_api::{ApplyRequest, ManifestFile};
use cellfleet_e2e::{Db, TestDb};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const REGIONS: usize = 10;
const CELLS_PER_REGION: usize = 100;

fn bake() -> String {
    std::env::var("CELLFLEET_BENCH_BAKE").unwrap_or_else(|_| "20s".into())
}

fn fleet() -> String {
    let mut out = String::new();
    for r in 0..REGIONS {
        out.push_str(&format!(
            "---\napiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {{name: region-{r}}}\nspec: {{jurisdiction: j{r}, location: {{lat: {}, lon: {}}}}}\n",
            r as f64, r as f64
        ));
        for c in 0..CELLS_PER_REGION {
            out.push_str(&format!(
                "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: r{r}-c{c:03}}}\nspec: {{region: region-{r}, kind: pooled, env: prod, capacity: 10}}\n"
            ));
        }
    }
    out
}

fn release(version: &str) -> String {
    format!(
        "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"{version}\"}}\nspec: {{artifact: {{command: simulated}}}}\n"
    )
}

fn policy() -> String {
    let b = bake();
    format!(
        "apiVersion: cellfleet.io/v1\nkind: TrainPolicy\nmetadata: {{name: bench}}\nspec:\n\
         \x20 canary: {{bake: {b}, approval: false}}\n\
         \x20 pooled: {{bake: {b}, approval: false, batchSize: 100, maxParallel: 100}}\n\
         \x20 dedicated: {{bake: {b}, approval: false}}\n\
         \x20 gates: {{maxErrorRate: 0.01, maxP99Ms: 500, maxBurnRate: 14.4, defaultAvailability: 99.9, minRequests: 50, convergeTimeout: 5m}}\n\
         \x20 probes: {{path: /v1/notes, ratePerSecond: 2, tenant: cellfleet-probe}}\n\
         \x20 onFailure: rollback\n\
         \x20 onInconclusive: fail\n"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[i.saturating_sub(1).min(sorted.len() - 1)]
}

/// What a simulated agent runs: (generation, release, probing, since when it runs the release).
type Running = (i64, Option<String>, bool, Instant);

/// One simulated agent: long-polls (30 s, as real agents), "runs" the desired release at once,
/// reports on every change and as a heartbeat (every 2 s while probing, else 10 s). Records when
/// each release first arrived.
async fn agent(
    http: reqwest::Client,
    base: String,
    token: String,
    seen: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    cell: String,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::watch::channel::<Running>((0, None, false, Instant::now()));
    let reporter = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let (generation, release, probing, since) = rx.borrow_and_update().clone();
                if generation > 0 {
                    let secs = since.elapsed().as_secs_f64();
                    let requests = (secs * 20.0) as u64;
                    let probes = if probing { (secs * 2.0) as u64 } else { 0 };
                    let body = json!({
                        "observedGeneration": generation,
                        "release": release,
                        "workload": {"state": "running", "release": release, "restarts": 0, "recentExits": 0},
                        "releaseHealth": release.as_ref().map(|v| json!({"release": v, "requests": requests, "errors": 0, "latencyP99Ms": 12.0})),
                        "probes": release.as_ref().filter(|_| probing).map(|v| json!({"release": v, "requests": probes, "errors": 0, "latencyP99Ms": 3.0})),
                    });
                    let resp = http
                        .post(format!("{base}/v1/agent/report"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(resp.status().is_success(), "report: {}", resp.text().await?);
                }
                let every = if probing {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(10)
                };
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Ok(()) },
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let mut generation = 0i64;
    let mut release: Option<String> = None;
    let mut since = Instant::now();
    loop {
        let desired: Value = http
            .get(format!(
                "{base}/v1/agent/desired?since={generation}&timeout=30s"
            ))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let g = desired["generation"].as_i64().unwrap_or(0);
        if g == generation {
            continue;
        }
        let r = desired["release"]["version"].as_str().map(str::to_owned);
        if r != release {
            if let Some(v) = &r {
                seen.lock()
                    .unwrap()
                    .entry(format!("{cell}/{v}"))
                    .or_insert_with(Utc::now);
            }
            release = r;
            since = Instant::now();
        }
        generation = g;
        tx.send_replace((
            generation,
            release.clone(),
            !desired["probe"].is_null(),
            since,
        ));
        if reporter.is_finished() {
            return reporter.await?;
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let test_db = TestDb::new(Db::Sqlite).await;
    let token_file = test_db.dir.path().join("admin.token");
    let server = Server::start(ServerConfig {
        database_url: test_db.url.clone(),
        listen: "127.0.0.1:0".into(),
        admin_token_file: Some(token_file.clone()),
        settings: Settings::default(),
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
        .pool_max_idle_per_host(1100)
        .build()?;
    let post = |path: String, body: Value| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let resp = http
                .post(format!("{base}{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await?;
            anyhow::ensure!(status.is_success(), "{path}: {status} {text}");
            Ok::<Value, anyhow::Error>(serde_json::from_str(&text)?)
        }
    };
    let file = |content: String| {
        json!(ApplyRequest {
            files: vec![ManifestFile {
                name: "bench.yaml".into(),
                content
            }],
            dry_run: false,
        })
    };
    post("/v1/apply".into(), file(fleet())).await?;
    for v in ["1.0.0", "1.1.0"] {
        post(
            "/v1/releases".into(),
            json!({"file": {"name": "r.yaml", "content": release(v)}}),
        )
        .await?;
    }
    post("/v1/releases/1.0.0/deploy".into(), json!({"cells": []})).await?;
    // The agents, each with its own token.
    let seen: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
    let mut agents = Vec::new();
    for r in 0..REGIONS {
        for c in 0..CELLS_PER_REGION {
            let cell = format!("r{r}-c{c:03}");
            let created = post("/v1/tokens".into(), json!({"role": "agent", "cell": cell})).await?;
            let t = created["token"].as_str().unwrap_or_default().to_owned();
            agents.push(tokio::spawn(agent(
                http.clone(),
                base.clone(),
                t,
                seen.clone(),
                cell,
            )));
        }
    }
    // Every agent runs 1.0.0.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cells: Value = http
            .get(format!("{base}/v1/cells"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let running = cells
            .as_array()
            .map_or(0, |a| a.iter().filter(|c| c["release"] == "1.0.0").count());
        if running == REGIONS * CELLS_PER_REGION {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {running} cells run 1.0.0");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} simulated agents run 1.0.0; starting the train (bake {} per wave)",
        agents.len(),
        bake()
    );
    let started_at = Instant::now();
    let started = post(
        "/v1/trains".into(),
        json!({"release": "1.1.0", "policy": {"name": "bench-policy.yaml", "content": policy()}}),
    )
    .await?;
    let id = started["train"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let train = loop {
        let t: Value = http
            .get(format!("{base}/v1/trains/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if ["done", "failed", "aborted", "halted"]
            .contains(&t["phase"].as_str().unwrap_or_default())
        {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wall = started_at.elapsed();
    anyhow::ensure!(
        train["phase"] == "done",
        "the train did not finish: {}",
        train["note"]
    );
    for a in &agents {
        a.abort();
    }
    let _ = stop_tx.send(());
    let _ = serving.await;

    // Propagation: deployedAt → the agent's long-poll answering with 1.1.0.
    let at = |v: &Value| v.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok());
    let seen = seen.lock().unwrap().clone();
    let mut propagation: Vec<Duration> = Vec::new();
    let waves = train["waves"].as_array().cloned().unwrap_or_default();
    for w in &waves {
        for c in w["cells"].as_array().cloned().unwrap_or_default() {
            let cell = c["cell"].as_str().unwrap_or_default();
            if let (Some(d), Some(s)) = (at(&c["deployedAt"]), seen.get(&format!("{cell}/1.1.0"))) {
                propagation.push((*s - d).to_std().unwrap_or_default());
            }
        }
    }
    propagation.sort();
    // Overhead per wave: start after the previous decision, decision after the last bake end.
    let bake_secs: f64 = waves
        .iter()
        .map(|w| w["bakeSecs"].as_f64().unwrap_or(0.0))
        .sum();
    let mut start_gaps = 0.0;
    let mut decision_gaps = 0.0;
    let mut converge = 0.0;
    let mut previous_end = at(&train["createdAt"]);
    for w in &waves {
        let (Some(start), Some(end)) = (at(&w["startedAt"]), at(&w["finishedAt"])) else {
            continue;
        };
        if let Some(p) = previous_end {
            start_gaps += (start - p).as_seconds_f64().max(0.0);
        }
        let cells = w["cells"].as_array().cloned().unwrap_or_default();
        let last_bake_end = cells
            .iter()
            .filter_map(|c| at(&c["convergedAt"]))
            .max()
            .map(|t| t + chrono::TimeDelta::seconds(w["bakeSecs"].as_i64().unwrap_or(0)));
        if let Some(b) = last_bake_end {
            decision_gaps += (end - b).as_seconds_f64().max(0.0);
        }
        let first_deploy = cells.iter().filter_map(|c| at(&c["deployedAt"])).min();
        let last_converged = cells.iter().filter_map(|c| at(&c["convergedAt"])).max();
        if let (Some(d), Some(c)) = (first_deploy, last_converged) {
            converge += (c - d).as_seconds_f64();
        }
        previous_end = Some(end);
    }
    println!(
        "train {id}: {} waves, {} cells, wall {:.1}s, bakes {bake_secs:.0}s",
        waves.len(),
        propagation.len(),
        wall.as_secs_f64()
    );
    println!(
        "desired-state propagation (deploy commit → agent's long-poll answer), {} cells: p50 {:?}, p99 {:?}, max {:?}",
        propagation.len(),
        percentile(&propagation, 0.50),
        percentile(&propagation, 0.99),
        percentile(&propagation, 1.0)
    );
    println!(
        "control-plane overhead: wave starts {start_gaps:.2}s + decisions after the last bake {decision_gaps:.2}s = {:.2}s = {:.2} % of the bake time",
        start_gaps + decision_gaps,
        100.0 * (start_gaps + decision_gaps) / bake_secs
    );
    println!(
        "convergence of the simulated agents (first deploy → last cell running, summed over waves): {converge:.2}s; whole train over bakes: {:.2} %",
        100.0 * (wall.as_secs_f64() - bake_secs) / bake_secs
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    cellfleet::cli::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}
