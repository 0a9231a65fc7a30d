//! `cellfleet move …` and `cellfleet router list`: start, follow, abort and roll back tenant
//! moves; see the edge routers cut-overs wait for.

use std::time::Duration;

use cellfleet_api::{
    AbortMoveRequest, Env, MovePhase, MoveStarted, MoveView, RouterView, StartMoveRequest, TenantId,
};
use clap::{Args, Subcommand};

use super::output::{human_bytes, or_dash, table};
use super::{Client, Format, show};

#[derive(Debug, Subcommand)]
pub enum MoveCommand {
    /// Move a tenant environment to another cell (plans, then starts; --dry-run plans only).
    Start(StartArgs),
    /// Open moves (--all: finished ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One move: phase, progress, cut-overs.
    Status { id: String },
    /// Follow a move live until its cut-over is done and only its rollback window remains, or it
    /// ends (progress bars; -o json: one JSON line per change).
    Watch {
        id: String,
        /// Keep following through the rollback window, until the move ends.
        #[arg(long)]
        to_end: bool,
    },
    /// Abort a move before its cut-over (the tenant stays where it is).
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Roll a move back within its rollback window (the same fenced cut-over, back).
    Rollback { id: String },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    pub tenant: TenantId,
    #[arg(long, default_value = "prod")]
    pub env: Env,
    /// `dedicated`, `pooled`, or a cell name.
    #[arg(long)]
    pub to: String,
    /// The longest write pause the cut-over may take.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub max_write_pause: Duration,
    /// How long the source keeps the tenant's rows for a rollback.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub rollback_window: Duration,
    /// Show the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the move until its cut-over is done (see `move watch`).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: keep following through the rollback window, until the move ends.
    #[arg(long)]
    pub to_end: bool,
}

#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// The edge routers seen on their watches, and the table version each serves.
    List,
}

pub async fn run(client: &Client, format: Format, cmd: MoveCommand) -> anyhow::Result<i32> {
    match cmd {
        MoveCommand::Start(a) => {
            let req = StartMoveRequest {
                tenant: a.tenant,
                env: a.env,
                to: a.to,
                max_write_pause_ms: Some(
                    u64::try_from(a.max_write_pause.as_millis()).unwrap_or(u64::MAX),
                ),
                rollback_window_secs: Some(a.rollback_window.as_secs()),
                dry_run: a.dry_run,
            };
            let started: MoveStarted = client.post("/v1/moves", &req).await?;
            show(format, &started, plan)?;
            if let (true, Some(m)) = (a.watch, &started.started) {
                return watch(client, format, &m.id, a.to_end).await;
            }
        }
        MoveCommand::List { all } => {
            let query: Vec<(&str, String)> = vec![("all", all.to_string())];
            let moves: Vec<MoveView> = client.get_query("/v1/moves", &query).await?;
            show(format, &moves, |m| list(m))?
        }
        MoveCommand::Status { id } => {
            let m: MoveView = client.get(&format!("/v1/moves/{id}")).await?;
            show(format, &m, status)?
        }
        MoveCommand::Watch { id, to_end } => return watch(client, format, &id, to_end).await,
        MoveCommand::Abort { id, reason } => {
            let m: MoveView = client
                .post(
                    &format!("/v1/moves/{id}/abort"),
                    &AbortMoveRequest { reason },
                )
                .await?;
            show(format, &m, |m| {
                format!(
                    "abort of {} requested ({}): `cellfleet move watch {}` follows it\n",
                    m.id, m.phase, m.id
                )
            })?
        }
        MoveCommand::Rollback { id } => {
            let m: MoveView = client
                .post(&format!("/v1/moves/{id}/rollback"), &())
                .await?;
            show(format, &m, |m| {
                format!(
                    "rollback of {} requested: `cellfleet move watch {}` follows it\n",
                    m.id, m.id
                )
            })?
        }
    }
    Ok(0)
}

pub async fn routers(client: &Client, format: Format, cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::List => {
            let routers: Vec<RouterView> = client.get("/v1/routers").await?;
            show(format, &routers, |r| {
                let mut t = table(&["ID", "STATUS", "SERVES VERSION", "BEHIND", "LAST SEEN"]);
                let now = chrono::Utc::now();
                for r in r {
                    t.add_row(vec![
                        r.id.clone(),
                        r.status.clone(),
                        r.acked_version.to_string(),
                        r.lag.to_string(),
                        format!("{}s ago", (now - r.last_seen).num_seconds().max(0)),
                    ]);
                }
                t.to_string()
            })
        }
    }
}

fn plan(s: &MoveStarted) -> String {
    let p = &s.plan;
    let mut out = format!(
        "move {}/{}: {} -> {} (region {})\n",
        p.tenant, p.env, p.source, p.target, p.region
    );
    for c in &p.checks {
        out.push_str(&format!(
            "  [{}] {:<10} {}\n",
            if c.ok { "ok" } else { "!!" },
            c.check,
            c.detail
        ));
    }
    match &s.started {
        Some(m) => out.push_str(&format!(
            "started {}: `cellfleet move watch {}` follows it\n",
            m.id, m.id
        )),
        None => out.push_str("dry run: nothing was started\n"),
    }
    out
}

fn list(moves: &[MoveView]) -> String {
    let mut t = table(&[
        "ID", "TENANT", "FROM", "TO", "PHASE", "COPIED", "LAG", "PAUSE", "NOTE",
    ]);
    for m in moves {
        t.add_row(vec![
            m.id.clone(),
            format!("{}/{}", m.tenant, m.env),
            m.source.to_string(),
            m.target.to_string(),
            m.phase.to_string(),
            format!("{} rows", m.progress.rows_copied),
            m.progress.lag_changes.to_string(),
            or_dash(last_pause(m).map(|p| format!("{p} ms"))),
            or_dash(m.note.as_ref()),
        ]);
    }
    t.to_string()
}

fn last_pause(m: &MoveView) -> Option<u64> {
    m.cutovers.iter().rev().find_map(|c| c.pause_ms)
}

fn status(m: &MoveView) -> String {
    let p = &m.progress;
    let mut out = format!(
        "move:      {}\ntenant:    {}/{}\nfrom:      {}\nto:        {}\nphase:     {}\n",
        m.id, m.tenant, m.env, m.source, m.target, m.phase
    );
    out.push_str(&format!(
        "copied:    {} of {} rows ({}){}\nchanges:   {} sent, lag {}\nchunks:    {} applied of {}\n",
        p.rows_copied,
        or_dash(p.rows_total),
        human_bytes(p.bytes_copied),
        if p.copy_done { ", copy done" } else { "" },
        p.changes_sent,
        p.lag_changes,
        p.chunks_applied,
        p.chunks_sent
    ));
    if let Some(r) = p.rate_rows_per_sec {
        out.push_str(&format!("rate:      {r:.0} rows/s"));
        if let Some(eta) = p.eta_secs.filter(|_| !p.copy_done) {
            out.push_str(&format!(", ETA {eta:.0}s"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "budget:    write pause {} ms, rollback window {}\n",
        m.max_write_pause_ms,
        humantime::format_duration(Duration::from_secs(m.rollback_window_secs))
    ));
    if let Some(u) = m.rollback_until {
        out.push_str(&format!(
            "rollback until {}\n",
            u.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    for (i, c) in m.cutovers.iter().enumerate() {
        out.push_str(&format!(
            "cut-over {}: {} at {}, write pause {}\n",
            i + 1,
            c.outcome,
            c.started_at.format("%H:%M:%S%.3f"),
            or_dash(c.pause_ms.map(|p| format!("{p} ms")))
        ));
    }
    if let Some(n) = &m.note {
        out.push_str(&format!("note:      {n}\n"));
    }
    out
}

/// Follows a move until it ends — or, unless `to_end`, until its cut-over is done and it only
/// waits out its rollback window (which may be an hour): progress bars for people, a JSON line
/// per change for scripts. Exits 0 when it is done (or in its window), 1 when it failed, was
/// aborted or was rolled back.
async fn watch(client: &Client, format: Format, id: &str, to_end: bool) -> anyhow::Result<i32> {
    use indicatif::{ProgressBar, ProgressStyle};
    // Bars on a terminal; elsewhere (a log, a pipe) a line per phase or note change.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bars = (format == Format::Table && tty).then(|| {
        let multi = indicatif::MultiProgress::new();
        let copy = multi.add(ProgressBar::new(0));
        copy.set_style(
            ProgressStyle::with_template("copy   [{bar:40}] {pos}/{len} rows {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let phase = multi.add(ProgressBar::new_spinner());
        phase.enable_steady_tick(Duration::from_millis(120));
        (multi, copy, phase)
    });
    let mut last: Option<MoveView> = None;
    loop {
        let m: MoveView = client.get(&format!("/v1/moves/{id}")).await?;
        if last.as_ref() != Some(&m) {
            match &bars {
                Some((_, copy, phase)) => {
                    let p = &m.progress;
                    copy.set_length(p.rows_total.unwrap_or(p.rows_copied).max(p.rows_copied));
                    copy.set_position(p.rows_copied);
                    copy.set_message(format!(
                        "{}{}",
                        human_bytes(p.bytes_copied),
                        p.rate_rows_per_sec
                            .map(|r| format!(", {r:.0} rows/s"))
                            .unwrap_or_default()
                    ));
                    phase.set_message(format!(
                        "{:<16} lag {} changes{}{}",
                        m.phase.to_string(),
                        p.lag_changes,
                        last_pause(&m)
                            .map(|p| format!(", last write pause {p} ms"))
                            .unwrap_or_default(),
                        m.note
                            .as_ref()
                            .map(|n| format!(" — {n}"))
                            .unwrap_or_default()
                    ));
                }
                None if format == Format::Json => println!("{}", serde_json::to_string(&m)?),
                None => {
                    let changed = last.as_ref().is_none_or(|l| {
                        l.phase != m.phase || l.note != m.note || l.cutovers != m.cutovers
                    });
                    if changed {
                        let p = &m.progress;
                        println!(
                            "{} {:<16} {} of {} rows, lag {}{}{}",
                            chrono::Utc::now().format("%H:%M:%S"),
                            m.phase.to_string(),
                            p.rows_copied,
                            p.rows_total.map_or("?".into(), |t| t.to_string()),
                            p.lag_changes,
                            last_pause(&m)
                                .map(|p| format!(", last write pause {p} ms"))
                                .unwrap_or_default(),
                            m.note
                                .as_ref()
                                .map(|n| format!(" — {n}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        if m.phase.is_terminal() {
            if let Some((_, copy, phase)) = &bars {
                copy.finish();
                phase.finish_with_message(format!(
                    "{}{}",
                    m.phase,
                    m.note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                ));
            }
            return Ok(if m.phase == MovePhase::Done { 0 } else { 1 });
        }
        if m.phase == MovePhase::RollbackWindow && !to_end {
            if let Some((_, copy, phase)) = &bars {
                copy.finish();
                phase.finish_with_message(m.phase.to_string());
            }
            if format == Format::Table {
                eprintln!(
                    "{}/{} is served by {}{}. Until {} `cellfleet move rollback {}` takes it back to {} with every write; then the move cleans {} up by itself (`cellfleet move watch {} --to-end` follows it).",
                    m.tenant,
                    m.env,
                    m.target,
                    last_pause(&m)
                        .map(|p| format!(" (write pause {p} ms)"))
                        .unwrap_or_default(),
                    m.rollback_until.map_or("the window closes".into(), |t| t
                        .format("%Y-%m-%d %H:%M:%S UTC")
                        .to_string()),
                    m.id,
                    m.source,
                    m.source,
                    m.id,
                );
            }
            return Ok(0);
        }
        last = Some(m);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
