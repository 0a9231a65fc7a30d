//! `cellfleet train …`, `stop-the-line` / `resume-the-line` and `flag …`: start, follow and
//! steer release trains; halt them all at once; roll feature flags out and kill them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellfleet_api::{
    AbortTrainRequest, CellName, CellStep, FlagTarget, FlagView, LineView, ManifestFile,
    RollbackTrainRequest, SetFlagRequest, StartTrainRequest, StopLineRequest, TenantId, TrainPhase,
    TrainStarted, TrainView, Verdict,
};
use clap::{Args, Subcommand};

use super::output::{or_dash, table};
use super::{Client, Format, show};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Start a train of a release over the fleet (--dry-run: print the plan, change nothing).
    Start(StartArgs),
    /// Open trains (--all: finished ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One train: waves, cells, gate decisions with their numbers.
    Status {
        id: String,
    },
    /// Follow a train live until it ends or waits for an operator (progress bars per wave and
    /// cell; -o json: one JSON line per change).
    Watch {
        id: String,
    },
    /// Approve the next wave (after a wave with manual approval, or an inconclusive gate).
    Promote {
        id: String,
    },
    /// Stop deploying (baking cells keep running what they run).
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// End the train; --rollback also puts every cell it changed back on its last good release.
    Abort {
        id: String,
        #[arg(long)]
        rollback: bool,
    },
    /// Put the train's cells (or one) back on their last good release.
    Rollback {
        id: String,
        #[arg(long)]
        cell: Option<CellName>,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The release (created with `cellfleet release create`).
    #[arg(long)]
    pub release: String,
    /// A train policy file (`kind: TrainPolicy`; default: templates/train-policy.yaml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Bake time of every wave (overrides the policy), e.g. 30m.
    #[arg(long)]
    pub bake: Option<String>,
    /// Print the waves and when each would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the train once started (see `train watch`).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Fleet flags, their targets, and which are killed.
    List,
    /// Set a flag: NAME=VALUE (VALUE is JSON, else a string) for tenants, cells, a percentage of
    /// tenants, or (none given) everyone.
    Set {
        assignment: String,
        #[arg(long = "tenant")]
        tenants: Vec<TenantId>,
        #[arg(long = "cell")]
        cells: Vec<CellName>,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
    },
    /// The kill switch: NAME is false for every tenant of every cell, at once.
    Kill { name: String },
}

pub async fn run(client: &Client, format: Format, cmd: TrainCommand) -> anyhow::Result<i32> {
    match cmd {
        TrainCommand::Start(a) => {
            let policy = match &a.policy {
                Some(path) => Some(ManifestFile {
                    name: path.display().to_string(),
                    content: std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                }),
                None => None,
            };
            let req = StartTrainRequest {
                release: a.release,
                policy,
                bake: a.bake,
                dry_run: a.dry_run,
            };
            let started: TrainStarted = client.post("/v1/trains", &req).await?;
            show(format, &started, plan)?;
            if let (true, Some(t)) = (a.watch, &started.train) {
                return watch(client, format, &t.id).await;
            }
        }
        TrainCommand::List { all } => {
            let query: Vec<(&str, String)> = vec![("all", all.to_string())];
            let trains: Vec<TrainView> = client.get_query("/v1/trains", &query).await?;
            show(format, &trains, |t| list(t))?
        }
        TrainCommand::Status { id } => {
            let t: TrainView = client.get(&format!("/v1/trains/{id}")).await?;
            show(format, &t, status)?
        }
        TrainCommand::Watch { id } => return watch(client, format, &id).await,
        TrainCommand::Promote { id } => post(client, format, &id, "promote", &()).await?,
        TrainCommand::Pause { id } => post(client, format, &id, "pause", &()).await?,
        TrainCommand::Resume { id } => post(client, format, &id, "resume", &()).await?,
        TrainCommand::Abort { id, rollback } => {
            post(
                client,
                format,
                &id,
                "abort",
                &AbortTrainRequest { rollback },
            )
            .await?
        }
        TrainCommand::Rollback { id, cell } => {
            post(
                client,
                format,
                &id,
                "rollback",
                &RollbackTrainRequest { cell },
            )
            .await?
        }
    }
    Ok(0)
}

async fn post<B: serde::Serialize>(
    client: &Client,
    format: Format,
    id: &str,
    verb: &str,
    body: &B,
) -> anyhow::Result<()> {
    let t: TrainView = client
        .post(&format!("/v1/trains/{id}/{verb}"), body)
        .await?;
    show(format, &t, |t| {
        format!(
            "train {} ({}) is {}{}\n",
            t.id,
            t.release,
            t.phase,
            t.note
                .as_ref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        )
    })
}

pub async fn stop_line(
    client: &Client,
    format: Format,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let l: LineView = client
        .post("/v1/line/stop", &StopLineRequest { reason })
        .await?;
    show(format, &l, |l| {
        format!(
            "the line is stopped{}: {} train(s) halted where they are{}\n`cellfleet resume-the-line` lets them go on\n",
            l.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            l.trains.len(),
            if l.trains.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.trains.join(", "))
            }
        )
    })
}

pub async fn resume_line(client: &Client, format: Format) -> anyhow::Result<()> {
    let l: LineView = client.post("/v1/line/resume", &()).await?;
    show(format, &l, |_| "the line runs again\n".into())
}

pub async fn flags(client: &Client, format: Format, cmd: FlagCommand) -> anyhow::Result<()> {
    match cmd {
        FlagCommand::List => {
            let flags: Vec<FlagView> = client.get("/v1/flags").await?;
            show(format, &flags, |f| {
                let mut t = table(&["NAME", "VALUE", "TARGET", "KILLED", "UPDATED"]);
                for f in f {
                    t.add_row(vec![
                        f.name.clone(),
                        f.value.to_string(),
                        target(&f.target),
                        if f.killed {
                            "KILLED".into()
                        } else {
                            "-".into()
                        },
                        f.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]);
                }
                t.to_string()
            })
        }
        FlagCommand::Set {
            assignment,
            tenants,
            cells,
            percent,
        } => {
            let (name, value) = assignment
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("expected NAME=VALUE, got {assignment:?}"))?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
            let req = SetFlagRequest {
                name: name.to_owned(),
                value,
                target: FlagTarget {
                    tenants,
                    cells,
                    percent,
                },
            };
            let f: FlagView = client.post("/v1/flags", &req).await?;
            show(format, &f, |f| {
                format!("flag {} = {} for {}\n", f.name, f.value, target(&f.target))
            })
        }
        FlagCommand::Kill { name } => {
            let f: FlagView = client.post(&format!("/v1/flags/{name}/kill"), &()).await?;
            show(format, &f, |f| {
                format!("flag {} killed: false for every tenant\n", f.name)
            })
        }
    }
}

fn target(t: &FlagTarget) -> String {
    let mut parts = Vec::new();
    if !t.tenants.is_empty() {
        parts.push(format!(
            "tenants {}",
            t.tenants
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !t.cells.is_empty() {
        parts.push(format!(
            "cells {}",
            t.cells
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(p) = t.percent {
        parts.push(format!("{p}% of tenants"));
    }
    if parts.is_empty() {
        "everyone".into()
    } else {
        parts.join(" + ")
    }
}

fn plan(s: &TrainStarted) -> String {
    let mut t = table(&[
        "WAVE",
        "CELLS",
        "BAKE",
        "APPROVAL",
        "EARLIEST START",
        "WINDOW",
    ]);
    for w in &s.waves {
        t.add_row(vec![
            w.name.clone(),
            w.cells
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            humantime::format_duration(Duration::from_secs(w.bake_secs)).to_string(),
            if w.approval {
                "manual".into()
            } else {
                "-".into()
            },
            w.earliest_start.format("%Y-%m-%d %H:%M UTC").to_string(),
            or_dash(w.window.as_ref()),
        ]);
    }
    let mut out = t.to_string();
    out.push('\n');
    match &s.train {
        Some(tr) => out.push_str(&format!(
            "started {} ({}): `cellfleet train watch {}` follows it\n",
            tr.id, tr.release, tr.id
        )),
        None => out.push_str("dry run: nothing was started\n"),
    }
    out
}

fn list(trains: &[TrainView]) -> String {
    let mut t = table(&["ID", "RELEASE", "PHASE", "WAVE", "STARTED", "NOTE"]);
    for tr in trains {
        t.add_row(vec![
            tr.id.clone(),
            tr.release.clone(),
            tr.phase.to_string(),
            format!(
                "{}/{} {}",
                (tr.current + 1).min(tr.waves.len()),
                tr.waves.len(),
                tr.waves.get(tr.current).map_or("", |w| w.name.as_str())
            ),
            tr.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            or_dash(
                tr.line_stopped
                    .as_ref()
                    .map(|r| format!("line stopped: {r}"))
                    .or(tr.note.clone()),
            ),
        ]);
    }
    t.to_string()
}

fn step_name(s: CellStep) -> &'static str {
    match s {
        CellStep::Pending => "pending",
        CellStep::Deploying => "deploying",
        CellStep::Converged => "running",
        CellStep::RolledBack => "rolled-back",
        CellStep::Skipped => "skipped",
    }
}

fn status(t: &TrainView) -> String {
    let mut out = format!(
        "train:     {}\nrelease:   {}\nphase:     {}\nstarted:   {} by {}\n",
        t.id,
        t.release,
        t.phase,
        t.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        t.started_by
    );
    if let Some(r) = &t.line_stopped {
        out.push_str(&format!("LINE STOPPED: {r}\n"));
    }
    if let Some(n) = &t.note {
        out.push_str(&format!("note:      {n}\n"));
    }
    let mut tab = table(&["WAVE", "CELL", "STATE", "FROM", "WAITING"]);
    for (i, w) in t.waves.iter().enumerate() {
        let marker = if i == t.current && !t.phase.is_terminal() {
            "> "
        } else {
            "  "
        };
        for (j, c) in w.cells.iter().enumerate() {
            tab.add_row(vec![
                if j == 0 {
                    format!(
                        "{marker}{} ({}){}",
                        w.name,
                        humantime::format_duration(Duration::from_secs(w.bake_secs)),
                        w.outcome
                            .as_ref()
                            .map(|o| format!(" {o}"))
                            .unwrap_or_default()
                    )
                } else {
                    String::new()
                },
                c.cell.to_string(),
                step_name(c.step).into(),
                or_dash(c.previous.as_ref()),
                or_dash(c.waiting.as_ref()),
            ]);
        }
    }
    out.push_str(&tab.to_string());
    out.push('\n');
    for g in &t.gates {
        out.push_str(&format!(
            "gate of wave {} at {}: {} — {}\n",
            t.waves.get(g.wave).map_or("?", |w| w.name.as_str()),
            g.at.format("%H:%M:%S"),
            verdict(g.verdict),
            g.reason
        ));
        for c in &g.cells {
            out.push_str(&format!(
                "    {:<16} {:<8} {} req, {} err, error rate {}, p99 {}, burn {}, probes {}/{} err — {}\n",
                c.cell.to_string(),
                c.signal,
                c.requests,
                c.errors,
                or_dash(c.error_rate.map(|r| format!("{:.2}%", r * 100.0))),
                or_dash(c.p99_ms.map(|p| format!("{p:.0}ms"))),
                or_dash(c.burn_rate.map(|b| format!("{b:.1}x"))),
                c.probe_errors,
                c.probe_requests,
                c.reason
            ));
        }
    }
    out
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Inconclusive => "INCONCLUSIVE",
        Verdict::Pending => "pending",
    }
}

/// Follows a train until it ends, or stops to wait for an operator (approval, a halt): a bar
/// per wave (cells running the release) for people, a JSON line per change for scripts. Exits 0
/// when done or waiting for approval, 1 when it failed, halted or was aborted.
async fn watch(client: &Client, format: Format, id: &str) -> anyhow::Result<i32> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let multi = (format == Format::Table && tty).then(MultiProgress::new);
    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut last: Option<TrainView> = None;
    loop {
        let t: TrainView = client.get(&format!("/v1/trains/{id}")).await?;
        if last.as_ref() != Some(&t) {
            match &multi {
                Some(m) => {
                    while bars.len() < t.waves.len() {
                        let b = m.add(ProgressBar::new(0));
                        b.set_style(
                            ProgressStyle::with_template(
                                "{prefix:<18} [{bar:30}] {pos}/{len} cells {msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        bars.push(b);
                    }
                    for (i, w) in t.waves.iter().enumerate() {
                        let b = &bars[i];
                        b.set_prefix(w.name.clone());
                        b.set_length(w.cells.len() as u64);
                        b.set_position(
                            w.cells
                                .iter()
                                .filter(|c| c.step == CellStep::Converged)
                                .count() as u64,
                        );
                        let gate = t.gates.iter().rev().find(|g| g.wave == i);
                        b.set_message(match (gate, &w.outcome) {
                            (Some(g), _) => format!("{} — {}", verdict(g.verdict), g.reason),
                            (None, _) if i == t.current => t.note.clone().unwrap_or_default(),
                            _ => String::new(),
                        });
                    }
                }
                None if format == Format::Json => println!("{}", serde_json::to_string(&t)?),
                None => {
                    let changed = last.as_ref().is_none_or(|l| {
                        l.phase != t.phase
                            || l.note != t.note
                            || l.current != t.current
                            || l.gates.len() != t.gates.len()
                    });
                    if changed {
                        let w = t.waves.get(t.current);
                        println!(
                            "{} {:<18} wave {}/{} {}: {}/{} cells run {}{}",
                            chrono::Utc::now().format("%H:%M:%S"),
                            t.phase.to_string(),
                            (t.current + 1).min(t.waves.len()),
                            t.waves.len(),
                            w.map_or("-", |w| w.name.as_str()),
                            w.map_or(0, |w| w
                                .cells
                                .iter()
                                .filter(|c| c.step == CellStep::Converged)
                                .count()),
                            w.map_or(0, |w| w.cells.len()),
                            t.release,
                            t.line_stopped
                                .as_ref()
                                .map(|r| format!(" — LINE STOPPED: {r}"))
                                .or_else(|| t.note.as_ref().map(|n| format!(" — {n}")))
                                .unwrap_or_default()
                        );
                        if let Some(g) = t.gates.last().filter(|_| {
                            last.as_ref().is_none_or(|l| l.gates.len() != t.gates.len())
                        }) {
                            println!("         gate {}: {}", verdict(g.verdict), g.reason);
                        }
                    }
                }
            }
        }
        let stop = match t.phase {
            TrainPhase::Done | TrainPhase::AwaitingApproval => Some(0),
            TrainPhase::Failed | TrainPhase::Aborted | TrainPhase::Halted => Some(1),
            _ => None,
        };
        if let Some(code) = stop {
            for b in &bars {
                b.abandon();
            }
            if format == Format::Table {
                eprintln!(
                    "train {} is {}{}",
                    t.id,
                    t.phase,
                    t.note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                );
            }
            return Ok(code);
        }
        last = Some(t);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
