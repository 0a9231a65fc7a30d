//! Gates: what a train observes about a cell, and how a cell and a wave are judged from it.

use super::*;

/// What the control plane knows about one cell when a train looks at it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CellObs {
    pub exists: bool,
    pub kind: Option<CellKind>,
    pub region: String,
    pub window: Option<ChangeWindow>,
    /// The release the cell should run.
    pub desired_release: Option<String>,
    pub desired_generation: i64,
    /// A tenant move goes through the cell.
    pub moving: bool,
    pub report: Option<ReportObs>,
    /// The smallest error budget (1 − availability) among the cell's tenants' SLOs, if any
    /// declares one.
    pub min_budget: Option<f64>,
    /// The tightest latency SLO (p99, ms) among the cell's tenants.
    pub min_latency_slo_ms: Option<f64>,
    /// Whether the cell applied every migration up to this train's contract version.
    pub contract_applied: bool,
}

/// The parts of a cell's last report a train reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportObs {
    pub at: DateTime<Utc>,
    pub observed_generation: i64,
    pub release: Option<String>,
    pub errors: Vec<String>,
    pub workload: Option<WorkloadState>,
    pub release_health: Option<ReleaseHealth>,
    pub probes: Option<ProbeStats>,
}

/// Whether `cell` runs `release` as desired now.
pub fn converged(o: &CellObs, release: &str) -> bool {
    runs(o, release)
        && o.report
            .as_ref()
            .is_some_and(|r| r.observed_generation >= o.desired_generation)
}

/// Whether the cell's last report says it runs `release`, healthy and without errors — whatever
/// its generation (a change elsewhere in its desired state, a flag say, is not a failure of the
/// release while the agent catches up).
pub fn runs(o: &CellObs, release: &str) -> bool {
    o.report.as_ref().is_some_and(|r| {
        r.release.as_deref() == Some(release)
            && r.errors.is_empty()
            && r.workload.is_none_or(|w| w == WorkloadState::Running)
    })
}

/// Judges one cell that has run `release` for `elapsed` of a `bake`.
pub fn judge_cell(
    cell: &CellName,
    o: &CellObs,
    release: &str,
    g: &GatePolicy,
    baked: bool,
) -> CellGate {
    let health = o
        .report
        .as_ref()
        .and_then(|r| r.release_health.as_ref())
        .filter(|h| h.release == release);
    let probes = o
        .report
        .as_ref()
        .and_then(|r| r.probes.as_ref())
        .filter(|p| p.release == release);
    let (t_req, t_err, t_p99) =
        health.map_or((0, 0, None), |h| (h.requests, h.errors, h.latency_p99_ms));
    let (p_req, p_err, p_p99) =
        probes.map_or((0, 0, None), |p| (p.requests, p.errors, p.latency_p99_ms));
    let (signal, requests, errors, p99) = if t_req >= g.min_requests {
        ("tenants", t_req, t_err, t_p99)
    } else if p_req >= g.min_requests {
        ("probes", p_req, p_err, p_p99)
    } else {
        ("none", t_req + p_req, t_err + p_err, t_p99.or(p_p99))
    };
    let budget = o
        .min_budget
        .unwrap_or(1.0 - g.default_availability / 100.0)
        .max(f64::MIN_POSITIVE);
    let error_rate = (requests > 0).then(|| errors as f64 / requests as f64);
    let burn_rate = error_rate.map(|r| r / budget);
    let max_p99 = o
        .min_latency_slo_ms
        .map_or(g.max_p99_ms, |s| s.min(g.max_p99_ms));
    let mut gate = CellGate {
        cell: cell.clone(),
        signal: signal.into(),
        requests: t_req,
        errors: t_err,
        error_rate,
        p99_ms: p99,
        burn_rate,
        probe_requests: p_req,
        probe_errors: p_err,
        verdict: Verdict::Pending,
        reason: String::new(),
    };
    if signal != "none" {
        let rate = error_rate.unwrap_or(0.0);
        let burn = burn_rate.unwrap_or(0.0);
        let failure = if rate > g.max_error_rate {
            Some(format!(
                "error rate {:.2} % > {:.2} % ({errors} of {requests} {signal} requests)",
                rate * 100.0,
                g.max_error_rate * 100.0
            ))
        } else if burn > g.max_burn_rate {
            Some(format!(
                "error budget burning {burn:.1}× > {:.1}× (budget {:.3} %)",
                g.max_burn_rate,
                budget * 100.0
            ))
        } else {
            p99.filter(|p| *p > max_p99)
                .map(|p| format!("p99 {p:.0} ms > {max_p99:.0} ms"))
        };
        if let Some(reason) = failure {
            // Enough signal to fail: no need to wait out the bake.
            gate.verdict = Verdict::Fail;
            gate.reason = reason;
        } else if baked {
            gate.verdict = Verdict::Pass;
            gate.reason = format!("{requests} {signal} requests within thresholds");
        } else {
            gate.reason = "baking".into();
        }
    } else if baked {
        gate.verdict = Verdict::Inconclusive;
        gate.reason = format!(
            "too little signal: {t_req} tenant and {p_req} probe requests (at least {} needed)",
            g.min_requests
        );
    } else {
        gate.reason = "baking; not enough requests yet".into();
    }
    gate
}

/// The wave's verdict from its cells'.
pub fn wave_verdict(cells: &[CellGate]) -> (Verdict, String) {
    if let Some(f) = cells.iter().find(|c| c.verdict == Verdict::Fail) {
        return (Verdict::Fail, format!("{}: {}", f.cell, f.reason));
    }
    if cells.iter().any(|c| c.verdict == Verdict::Pending) {
        return (Verdict::Pending, "baking".into());
    }
    if let Some(i) = cells.iter().find(|c| c.verdict == Verdict::Inconclusive) {
        return (Verdict::Inconclusive, format!("{}: {}", i.cell, i.reason));
    }
    (Verdict::Pass, format!("{} cells passed", cells.len()))
}
