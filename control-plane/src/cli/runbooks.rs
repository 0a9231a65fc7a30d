//! `cellfleet runbook …`, `cellfleet cell drain|undrain|retire`, `cellfleet event list`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use cellfleet_api::{
    AbortRunRequest, CellLifecycle, CellLifecycleRequest, CellName, CellResync, EventView,
    PlannedStep, RunPhase, RunStarted, RunView, RunbookSummary, RunbookView, StartRunRequest,
    StepRun, StepStatus,
};
use clap::Subcommand;

use super::{Client, Format, show};

#[derive(Debug, Subcommand)]
pub enum RunbookCommand {
    /// The runbooks this control plane knows (shipped, and its --runbooks folders).
    List,
    /// A runbook: parameters, steps, and its page.
    Show { name: String },
    /// Run a runbook (--dry-run: every step with its targets, nothing changed).
    Run {
        name: String,
        /// A parameter NAME=VALUE; repeatable.
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        /// Follow the run (as `watch`) after starting it.
        #[arg(long)]
        watch: bool,
    },
    /// Runs (open ones; --all: finished ones too).
    Runs {
        #[arg(long)]
        all: bool,
    },
    /// One run: every step's outcome.
    Status { id: String },
    /// Follow a run live until it ends or waits for approval.
    Watch { id: String },
    /// Approve the step a run waits at.
    Approve { id: String },
    /// Stop a run where it is.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Events the fleet emitted (notify steps), newest first.
    List {
        /// Only this run's.
        #[arg(long)]
        run: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

pub async fn run(client: &Client, format: Format, cmd: RunbookCommand) -> anyhow::Result<i32> {
    match cmd {
        RunbookCommand::List => {
            let list: Vec<RunbookSummary> = client.get("/v1/runbooks").await?;
            show(format, &list, |l| catalog(l))?;
        }
        RunbookCommand::Show { name } => {
            let v: RunbookView = client.get(&format!("/v1/runbooks/{name}")).await?;
            show(format, &v, runbook)?;
        }
        RunbookCommand::Run {
            name,
            params,
            dry_run,
            watch: follow,
        } => {
            let mut map = BTreeMap::new();
            for p in &params {
                let Some((k, v)) = p.split_once('=') else {
                    bail!("--param {p:?}: expected NAME=VALUE");
                };
                if map.insert(k.trim().to_owned(), v.to_owned()).is_some() {
                    bail!("--param {k}: given twice");
                }
            }
            let req = StartRunRequest {
                params: map,
                dry_run,
            };
            let started: RunStarted = client
                .post(&format!("/v1/runbooks/{name}/runs"), &req)
                .await?;
            show(format, &started, started_text)?;
            if let (true, Some(r)) = (follow, &started.run) {
                return watch(client, format, &r.id).await;
            }
        }
        RunbookCommand::Runs { all } => {
            let runs: Vec<RunView> = client
                .get(&format!(
                    "/v1/runbook-runs{}",
                    if all { "?all=true" } else { "" }
                ))
                .await?;
            show(format, &runs, |r| runs_table(r))?;
        }
        RunbookCommand::Status { id } => {
            let r: RunView = client.get(&format!("/v1/runbook-runs/{id}")).await?;
            show(format, &r, run_text)?;
        }
        RunbookCommand::Watch { id } => return watch(client, format, &id).await,
        RunbookCommand::Approve { id } => {
            let r: RunView = client
                .post(
                    &format!("/v1/runbook-runs/{id}/approve"),
                    &serde_json::json!({}),
                )
                .await?;
            show(format, &r, run_text)?;
        }
        RunbookCommand::Abort { id, reason } => {
            let r: RunView = client
                .post(
                    &format!("/v1/runbook-runs/{id}/abort"),
                    &AbortRunRequest { reason },
                )
                .await?;
            show(format, &r, run_text)?;
        }
    }
    Ok(0)
}

pub async fn events(client: &Client, format: Format, cmd: EventCommand) -> anyhow::Result<()> {
    let EventCommand::List { run, limit } = cmd;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(r) = run {
        query.push(("run", r));
    }
    let list: Vec<EventView> = client.get_query("/v1/events", &query).await?;
    show(format, &list, |l| {
        let mut out = String::new();
        for e in l {
            let _ = writeln!(
                out,
                "{} {} {} → {}\n  {}\n  {}",
                e.created_at.format("%Y-%m-%d %H:%M:%S"),
                e.id,
                e.subject,
                if e.to.is_empty() {
                    "-".into()
                } else {
                    e.to.join(", ")
                },
                e.title,
                e.message.trim_end().replace('\n', "\n  ")
            );
        }
        if l.is_empty() {
            out.push_str("no events\n");
        }
        out
    })
}

/// `cell drain|undrain|retire`.
pub async fn lifecycle(
    client: &Client,
    format: Format,
    action: &str,
    cell: &CellName,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let done: CellLifecycle = client
        .post(
            &format!("/v1/cells/{cell}/{action}"),
            &CellLifecycleRequest { reason },
        )
        .await?;
    show(format, &done, |d| {
        format!(
            "cell {}: {} → {} ({} tenant environment(s) on it)\n",
            d.cell, d.from, d.to, d.tenants
        )
    })
}

pub async fn resync(client: &Client, format: Format, cell: &CellName) -> anyhow::Result<()> {
    let done: CellResync = client
        .post(&format!("/v1/cells/{cell}/resync"), &serde_json::json!({}))
        .await?;
    show(format, &done, |d| {
        format!(
            "cell {}: desired generation {} → {} (its agent runs {}): the agent now takes the registry's state\n",
            d.cell, d.from, d.to, d.agent
        )
    })
}

fn catalog(list: &[RunbookSummary]) -> String {
    let mut out = format!("{:<18} {:<22} {}\n", "NAME", "ROLES", "DESCRIPTION");
    for r in list {
        let roles = r
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",");
        match &r.error {
            Some(e) => {
                let _ = writeln!(out, "{:<18} {:<22} BROKEN ({}): {e}", r.name, "-", r.source);
            }
            None => {
                let _ = writeln!(out, "{:<18} {:<22} {}", r.name, roles, r.description);
            }
        }
    }
    out
}

fn runbook(v: &RunbookView) -> String {
    let mut out = format!(
        "{} ({})\n{}\nrun by: {}\n",
        v.name,
        v.source,
        v.spec.description,
        v.spec
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !v.spec.params.is_empty() {
        out.push_str("\nparameters:\n");
        for p in &v.spec.params {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {}{}{}",
                p.name,
                kind,
                if p.required { "required. " } else { "" },
                p.default
                    .as_ref()
                    .map(|d| format!("default {d}. "))
                    .unwrap_or_default(),
                p.description
            );
        }
    }
    out.push_str("\nsteps:\n");
    for (i, s) in v.spec.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>2}. {:<18} {:<14} {}{}",
            i + 1,
            s.name,
            s.kind.as_str(),
            s.condition.clone().unwrap_or_default(),
            s.when
                .as_ref()
                .map(|w| format!(" (when {})", w.condition))
                .unwrap_or_default()
        );
        if let Some(inner) = &s.step {
            let _ = writeln!(out, "      each: {} {}", inner.kind, inner.name);
        }
    }
    if let Some(page) = &v.page {
        out.push('\n');
        out.push_str(page);
    }
    out
}

fn planned(out: &mut String, steps: &[PlannedStep], indent: &str) {
    for (i, p) in steps.iter().enumerate() {
        let mark = match p.holds {
            Some(true) => "ok  ",
            Some(false) => "FAIL",
            None => "    ",
        };
        let _ = writeln!(
            out,
            "{indent}{:>2}. {mark} {:<18} {}",
            i + 1,
            p.name,
            p.action
        );
        planned(out, &p.items, &format!("{indent}      "));
    }
}

fn started_text(s: &RunStarted) -> String {
    let mut out = format!(
        "runbook {} with {}\n",
        s.runbook,
        s.params
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::runbooks::display(v)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    planned(&mut out, &s.plan, "  ");
    match &s.run {
        Some(r) => {
            let _ = writeln!(
                out,
                "started run {} (follow: cellfleet runbook watch {})",
                r.id, r.id
            );
        }
        None => out.push_str("dry run: nothing was changed\n"),
    }
    out
}

fn status_word(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Waiting => "WAITING",
        StepStatus::Succeeded => "ok",
        StepStatus::Failed => "FAILED",
        StepStatus::Skipped => "skipped",
    }
}

fn step_line(out: &mut String, n: &str, s: &StepRun, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}{n:>4} {:<8} {:<18} {:<14} {}",
        status_word(s.status),
        s.name,
        s.kind.map(|k| k.as_str()).unwrap_or_default(),
        s.detail.clone().unwrap_or_default()
    );
    for (i, item) in s.items.iter().enumerate() {
        step_line(out, &format!("{}.", i + 1), item, &format!("{indent}     "));
    }
    if let Some(c) = &s.compensation {
        step_line(out, "comp", c, &format!("{indent}     "));
    }
}

fn run_text(r: &RunView) -> String {
    let mut out = format!(
        "run {} of {}: {}{}\nstarted by {} at {}\n",
        r.id,
        r.runbook,
        r.phase,
        r.note
            .as_ref()
            .map(|n| format!(" — {n}"))
            .unwrap_or_default(),
        r.started_by,
        r.created_at.format("%Y-%m-%d %H:%M:%S")
    );
    for (i, s) in r.steps.iter().enumerate() {
        step_line(&mut out, &format!("{}.", i + 1), s, "");
    }
    out
}

fn runs_table(runs: &[RunView]) -> String {
    let mut out = format!(
        "{:<16} {:<18} {:<18} {:<8} {}\n",
        "RUN", "RUNBOOK", "PHASE", "STEP", "STARTED"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:<18} {:<8} {}",
            r.id,
            r.runbook,
            r.phase.as_str(),
            format!("{}/{}", (r.current + 1).min(r.steps.len()), r.steps.len()),
            r.created_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    if runs.is_empty() {
        out.push_str("no runs\n");
    }
    out
}

/// Follows a run: a bar over its steps (and over the current for-each's items) on a terminal,
/// a line per change otherwise; exits 0 when it succeeds or waits for approval, 1 when it fails.
async fn watch(client: &Client, format: Format, id: &str) -> anyhow::Result<i32> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let multi = (format == Format::Table && tty).then(MultiProgress::new);
    let style = |t: &str| {
        ProgressStyle::with_template(t)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    };
    let bars = multi.as_ref().map(|m| {
        let steps = m.add(ProgressBar::new(0));
        steps.set_style(style("steps {prefix:<18} [{bar:30}] {pos}/{len} {msg}"));
        let items = m.add(ProgressBar::new(0));
        items.set_style(style("items {prefix:<18} [{bar:30}] {pos}/{len} {msg}"));
        (steps, items)
    });
    let mut last: Option<RunView> = None;
    loop {
        let r: RunView = client.get(&format!("/v1/runbook-runs/{id}")).await?;
        if last.as_ref() != Some(&r) {
            let current = r.steps.get(r.current);
            match &bars {
                Some((steps, items)) => {
                    steps.set_length(r.steps.len() as u64);
                    steps
                        .set_position(r.steps.iter().filter(|s| s.status.is_done()).count() as u64);
                    steps.set_prefix(current.map(|s| s.name.clone()).unwrap_or_default());
                    steps.set_message(current.and_then(|s| s.detail.clone()).unwrap_or_default());
                    let each = current.filter(|s| !s.items.is_empty());
                    items.set_length(each.map_or(0, |s| s.items.len()) as u64);
                    items.set_position(
                        each.map_or(0, |s| s.items.iter().filter(|i| i.status.is_done()).count())
                            as u64,
                    );
                    items.set_message(
                        each.and_then(|s| s.items.iter().find(|i| i.status == StepStatus::Running))
                            .and_then(|i| i.detail.clone())
                            .unwrap_or_default(),
                    );
                }
                None if format == Format::Json => println!("{}", serde_json::to_string(&r)?),
                None => {
                    let line = format!(
                        "{} {:<18} step {}/{} {}: {}",
                        chrono::Utc::now().format("%H:%M:%S"),
                        r.phase.as_str(),
                        (r.current + 1).min(r.steps.len()),
                        r.steps.len(),
                        current.map(|s| s.name.as_str()).unwrap_or("-"),
                        current
                            .and_then(|s| s.detail.clone())
                            .or_else(|| r.note.clone())
                            .unwrap_or_default()
                    );
                    println!("{line}");
                }
            }
        }
        let stop = match r.phase {
            RunPhase::Succeeded | RunPhase::AwaitingApproval => Some(0),
            RunPhase::Failed | RunPhase::Aborted => Some(1),
            RunPhase::Running => None,
        };
        if let Some(code) = stop {
            if let Some((s, i)) = &bars {
                s.abandon();
                i.abandon();
            }
            if format == Format::Table {
                eprintln!(
                    "run {} is {}{}",
                    r.id,
                    r.phase,
                    r.note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                );
            }
            return Ok(code);
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
