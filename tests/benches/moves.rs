//! Tenant moves (BENCHMARKS.md), on PostgreSQL cells with real agents, the real control plane,
//! the example workload and writes going through the shipped nginx configuration and a router:
//!
//! 1. **Bulk-copy throughput** of a 100k-row and a 1M-row tenant against a raw PostgreSQL pipe of
//!    the same rows in the same run (`psql -c "COPY (SELECT * FROM notes WHERE tenant_id = …) TO
//!    STDOUT" | psql -c "COPY … FROM STDIN"` from the source cell's database into a table like
//!    `notes` in the target cell's database).
//! 2. **Peak memory** (VmHWM, the kernel's high-water mark of resident memory) of the control
//!    plane and of both agents over each of those moves; the processes are restarted before each
//!    so the mark is the move's.
//! 3. **Cut-over write pause** (fence → unfreeze, as the move records it) over 20 moves of a
//!    10k-row tenant back and forth while it keeps writing, plus the two moves above (which also
//!    run with a writer).
//!
//! Run: `cargo build --release --workspace && CELLFLEET_E2E_PROFILE=release cargo bench -p
//! cellfleet-e2e --bench moves` (the harness runs the release binaries under that variable).

// A panic in a benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cellfleet_e2e::{FleetOptions, LocalFleet, Writer, nginx_edge, wait_no_rows};

const PAUSE_MOVES: usize = 20;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// Peak resident memory of process `pid` so far, in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn other(cell: &str) -> &'static str {
    if cell == "cell-a" { "cell-b" } else { "cell-a" }
}

/// The raw pipe: the tenant's rows out of the source database and into a fresh table like
/// `notes` in the target's, by two `psql` processes joined by a pipe. Returns rows per second.
async fn raw_pipe(fleet: &LocalFleet, tenant: &str, from: usize, to: usize, rows: i64) -> f64 {
    use sqlx::Executor;
    let mut target = fleet.cell_dbs[to].connect().await;
    target
        .execute("DROP TABLE IF EXISTS bench_pipe")
        .await
        .unwrap();
    target
        .execute("CREATE TABLE bench_pipe (LIKE notes INCLUDING ALL)")
        .await
        .unwrap();
    let script = format!(
        "set -o pipefail; psql -q -X '{}' -c \"COPY (SELECT * FROM notes WHERE tenant_id = '{tenant}') TO STDOUT\" | psql -q -X '{}' -c 'COPY bench_pipe FROM STDIN'",
        fleet.cell_dbs[from].url(false),
        fleet.cell_dbs[to].url(false),
    );
    let started = Instant::now();
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "pipe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_pipe")
        .fetch_one(&mut target)
        .await
        .unwrap();
    assert_eq!(copied, rows, "the pipe copied every row");
    target.execute("DROP TABLE bench_pipe").await.unwrap();
    rows as f64 / took.as_secs_f64()
}

/// What one measured move gave.
struct Measured {
    copy_secs: f64,
    rows: u64,
    pause_ms: u64,
    /// Each cut-over attempt's outcome.
    cutovers: Vec<String>,
}

/// Moves `tenant` to the other cell and waits for it to end; the copy is timed from the move's
/// start to the first sight of a phase after `copying` (the target has applied every chunk).
fn timed_move(fleet: &LocalFleet, tenant: &str) -> Measured {
    let from = fleet.cell_of(tenant).unwrap();
    let started = Instant::now();
    let id = fleet.start_move(&[tenant, "--to", other(&from), "--rollback-window", "1s"]);
    let mut copied_at = None;
    let deadline = started + Duration::from_secs(1800);
    let view = loop {
        let view = fleet.move_status(&id);
        let phase = view["phase"].as_str().unwrap_or_default().to_owned();
        let copying = matches!(phase.as_str(), "preparing-target" | "capturing" | "copying");
        if !copying && copied_at.is_none() {
            copied_at = Some(started.elapsed());
        }
        if matches!(
            phase.as_str(),
            "done" | "failed" | "aborted" | "rolled-back"
        ) {
            break view;
        }
        assert!(Instant::now() < deadline, "move {id} did not end: {view}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(view["phase"], "done", "{view}");
    let pause_ms = view["cutovers"]
        .as_array()
        .and_then(|c| c.iter().rev().find_map(|a| a["pauseMs"].as_u64()))
        .unwrap_or_else(|| panic!("no pause recorded: {view}"));
    Measured {
        copy_secs: copied_at.unwrap_or_default().as_secs_f64(),
        rows: view["progress"]["rowsCopied"].as_u64().unwrap_or(0),
        pause_ms,
        cutovers: view["cutovers"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|a| a["outcome"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The move's phases from the audit log, each with the milliseconds since the one before.
fn timeline(fleet: &LocalFleet, tenant: &str) -> String {
    let records = fleet
        .run(&[
            "audit",
            "list",
            "--target",
            &format!("tenant/{tenant}/prod"),
            "--limit",
            "100",
            "-o",
            "json",
        ])
        .json();
    let mut steps: Vec<(String, chrono::DateTime<chrono::Utc>)> = records
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| {
                    Some((
                        r["action"].as_str()?.to_owned(),
                        r["at"].as_str()?.parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    steps.sort_by_key(|(_, at)| *at);
    let mut out = Vec::new();
    if let Some((action, at)) = steps.first() {
        out.push(format!("{action} at {}", at.format("%H:%M:%S%.3f")));
    }
    for pair in steps.windows(2) {
        let ms = (pair[1].1 - pair[0].1).num_milliseconds();
        out.push(format!("{} +{ms} ms", pair[1].0));
    }
    out.join(" → ")
}

async fn bench() {
    let mut fleet = LocalFleet::start_opts(
        &[("cell-a", 10), ("cell-b", 10)],
        &FleetOptions {
            postgres_cells: true,
            ..FleetOptions::default()
        },
    )
    .await;
    fleet.apply_tenants(&[("big-100k", ""), ("big-1m", ""), ("steady", "")]);
    let (nginx, router) = nginx_edge(
        fleet.url(),
        &fleet.edge_token_file(),
        &fleet.dir().join("router-cache"),
    );
    let mut pauses = Vec::new();
    let mut failed = 0;

    println!(
        "| tenant rows | move bulk copy | raw COPY pipe | move / pipe | peak RSS control plane | peak RSS source agent | peak RSS target agent | pause | cut-overs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (tenant, rows, ids) in [
        ("big-100k", 100_000_i64, 3_000_000_000_i64),
        ("big-1m", 1_000_000, 5_000_000_000),
    ] {
        let from = fleet.cell_of(tenant).unwrap();
        let (si, ti) = (fleet.index_of(&from), fleet.index_of(other(&from)));
        fleet.cell_dbs[si].seed_notes(tenant, rows, ids).await;
        let pipe = raw_pipe(&fleet, tenant, si, ti, rows).await;
        // Fresh processes: their high-water marks are this move's.
        fleet.restart_server(&[]);
        fleet.restart_agent(si, &[]);
        fleet.restart_agent(ti, &[]);
        fleet.wait_converged();
        let writer = Writer::paced(&nginx.url, tenant, Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(300));
        let m = timed_move(&fleet, tenant);
        let written = writer.finish();
        failed += written.failed.len();
        for (f, (sent, took)) in written.failed.iter().zip(&written.failed_at) {
            let sent: chrono::DateTime<chrono::Utc> = (*sent).into();
            eprintln!(
                "a write sent at {} failed after {took:?} during the {tenant} move: {} {:?}",
                sent.format("%H:%M:%S%.3f"),
                f.0,
                f.1
            );
        }
        let pids = (
            fleet.server.pid(),
            fleet.agents[si].as_ref().map_or(0, |a| a.pid()),
            fleet.agents[ti].as_ref().map_or(0, |a| a.pid()),
        );
        let rate = m.rows as f64 / m.copy_secs;
        println!(
            "| {rows} | {rate:.0} rows/s ({:.1} s) | {pipe:.0} rows/s | {:.2}× | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} ms | {} |",
            m.copy_secs,
            rate / pipe,
            peak_mib(pids.0),
            peak_mib(pids.1),
            peak_mib(pids.2),
            m.pause_ms,
            m.cutovers.join(", "),
        );
        pauses.push(m.pause_ms);
        eprintln!("{tenant}: {}", timeline(&fleet, tenant));
        wait_no_rows(&fleet, &from, tenant).await;
    }

    let home = fleet.cell_of("steady").unwrap();
    fleet.cell_dbs[fleet.index_of(&home)]
        .seed_notes("steady", 10_000, 7_000_000_000)
        .await;
    let writer = Writer::paced(&nginx.url, "steady", Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(300));
    let mut small = Vec::new();
    let mut attempts = 0;
    for _ in 0..PAUSE_MOVES {
        let m = timed_move(&fleet, "steady");
        attempts += m.cutovers.len();
        small.push(m.pause_ms);
    }
    let written = writer.finish();
    failed += written.failed.len();
    for f in &written.failed {
        eprintln!("a write failed during the 10k-row moves: {f:?}");
    }
    pauses.extend(&small);
    pauses.sort_unstable();
    small.sort_unstable();
    println!();
    println!(
        "Write pause over {} moves with writes running ({PAUSE_MOVES} of a 10k-row tenant: p50 {} ms, p99 {} ms): p50 {} ms, p99 {} ms, max {} ms; {attempts} cut-over attempts for the {PAUSE_MOVES} moves; {} writes acknowledged during the 10k-row moves, {failed} writes failed in all",
        pauses.len(),
        percentile(&small, 0.5),
        percentile(&small, 0.99),
        percentile(&pauses, 0.5),
        percentile(&pauses, 0.99),
        pauses.last().copied().unwrap_or(0),
        written.acked.len(),
    );
    drop((nginx, router));
}

fn main() {
    assert_eq!(
        std::env::var("CELLFLEET_E2E_PROFILE").as_deref(),
        Ok("release"),
        "run with CELLFLEET_E2E_PROFILE=release after `cargo build --release --workspace`"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}
