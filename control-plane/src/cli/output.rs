//! Tables for people; `-o json` prints the API's JSON unchanged for scripts.

use cellfleet_api::{
    ApplyOutcome, ApplyResponse, AuditRecord, AuditVerification, CellView, RegionView,
    TenantContext, TenantExplain, TenantView, TokenCreated, TokenView,
};
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(Cell::new));
    t
}

pub(crate) fn or_dash(s: Option<impl ToString>) -> String {
    s.map(|s| s.to_string()).unwrap_or_else(|| "-".to_owned())
}

/// `1.4 MiB`, `812 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn regions(regions: &[RegionView]) -> String {
    let mut t = table(&["NAME", "JURISDICTION", "LAT", "LON", "CELLS"]);
    for r in regions {
        t.add_row(vec![
            r.name.to_string(),
            r.jurisdiction.clone(),
            format!("{:.2}", r.location.lat),
            format!("{:.2}", r.location.lon),
            r.cells.to_string(),
        ]);
    }
    t.to_string()
}

pub fn cells(cells: &[CellView]) -> String {
    let now = chrono::Utc::now();
    let mut t = table(&[
        "NAME",
        "REGION",
        "KIND",
        "ENV",
        "STATE",
        "LOAD",
        "GENERATION",
        "RELEASE",
        "MIGRATION",
        "WORKLOAD",
        "HEALTH",
        "REPORTED",
        "LABELS",
    ]);
    for c in cells {
        let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // desired/observed; a `!` marks a cell whose agent reported errors.
        let generation = format!(
            "{}/{}{}",
            c.desired_generation,
            or_dash(c.observed_generation),
            if c.errors.is_empty() { "" } else { " !" }
        );
        let age = c.reported_at.map(|at| {
            let secs = (now - at).num_seconds().max(0);
            humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
                + " ago"
        });
        t.add_row(vec![
            c.name.to_string(),
            c.region.to_string(),
            c.kind.to_string(),
            c.env.to_string(),
            c.state.to_string(),
            format!("{}/{}", c.load, c.capacity),
            generation,
            or_dash(c.release.as_ref()),
            or_dash(c.migration_version),
            or_dash(c.workload.as_ref().map(workload_summary)),
            or_dash(c.health.as_ref().map(health_summary)),
            or_dash(age),
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels.join(",")
            },
        ]);
    }
    t.to_string()
}

/// `running`, `crash-loop (7 restarts)`, …
fn workload_summary(w: &cellfleet_api::WorkloadStatus) -> String {
    let state = serde_json::to_value(w.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if w.restarts > 0 {
        format!("{state} ({} restarts)", w.restarts)
    } else {
        state
    }
}

pub fn cell(c: &CellView) -> String {
    let mut out = cells(std::slice::from_ref(c));
    out.push_str(&format!(
        "\ntemplate: {}\nendpoint: {}\n",
        c.template,
        or_dash(c.endpoint.as_ref())
    ));
    if let Some(w) = &c.workload {
        out.push_str(&format!(
            "workload: {} release {} instance {}\n",
            workload_summary(w),
            or_dash(w.release.as_ref()),
            or_dash(w.instance.as_ref())
        ));
        if let Some(e) = &w.last_exit {
            out.push_str(&format!(
                "last exit: {} at {}{}\n",
                e.status,
                e.at.format("%Y-%m-%d %H:%M:%S UTC"),
                e.message
                    .as_ref()
                    .map(|m| format!("; its last words: {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    for e in &c.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    for d in &c.isolation_drift {
        out.push_str(&format!("isolation drift: {d}\n"));
    }
    if let Some(w) = &c.change_window {
        out.push_str(&format!(
            "change window: {} for {}\n",
            w.schedule, w.duration
        ));
    }
    out
}

pub fn tenants(tenants: &[TenantView]) -> String {
    let mut t = table(&["ID", "STATE", "PROFILE", "PLACEMENTS", "REASON"]);
    for v in tenants {
        let placements: Vec<String> = v
            .placements
            .iter()
            .map(|p| format!("{}:{}", p.env, p.cell))
            .collect();
        t.add_row(vec![
            v.id.to_string(),
            v.state.to_string(),
            v.spec.profile.to_string(),
            if placements.is_empty() {
                "-".to_owned()
            } else {
                placements.join(",")
            },
            or_dash(v.state_reason.as_ref()),
        ]);
    }
    t.to_string()
}

pub fn tenant(v: &TenantView) -> String {
    let mut out = format!(
        "tenant:       {}\ndisplay name: {}\nstate:        {}\nprofile:      {}\nenvironments: {}\n",
        v.id,
        v.spec.display_name,
        v.state,
        v.spec.profile,
        v.spec
            .environments
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let Some(r) = &v.state_reason {
        out.push_str(&format!("reason:       {r}\n"));
    }
    if let Some(a) = v.archived_at {
        out.push_str(&format!("archived at:  {a}\n"));
    }
    if let Some(d) = v.deletable_after {
        out.push_str(&format!("deletable after: {d}\n"));
    }
    if !v.placements.is_empty() {
        let mut t = table(&["ENV", "CELL", "REGION", "GENERATION", "PLACED"]);
        for p in &v.placements {
            t.add_row(vec![
                p.env.to_string(),
                p.cell.to_string(),
                p.region.to_string(),
                p.generation.to_string(),
                p.placed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out
}

pub fn explain(e: &TenantExplain) -> String {
    let mut out = format!("tenant {} is {}", e.tenant, e.state);
    if let Some(r) = &e.state_reason {
        out.push_str(&format!(" ({r})"));
    }
    out.push('\n');
    let decisions = e
        .placements
        .iter()
        .map(|p| (&p.decision, Some(p.residency_satisfied)))
        .chain(e.unplaced.iter().map(|d| (d, None)));
    for (d, satisfied) in decisions {
        out.push_str(&format!("\n[{}] {}\n", d.env, d.summary));
        out.push_str(&format!("  residency: {}", d.residency));
        match satisfied {
            Some(true) => out.push_str(" (still satisfied)\n"),
            Some(false) => {
                out.push_str(" (NOT satisfied by the current residency: move the tenant)\n")
            }
            None => out.push_str(" (not placed)\n"),
        }
        let mut regions = table(&["  REGION", "DISTANCE KM", "OUTCOME"]);
        for r in &d.regions {
            regions.add_row(vec![
                format!("  {}", r.region),
                r.distance_km
                    .map(|d| format!("{d:.0}"))
                    .unwrap_or_else(|| "-".into()),
                r.outcome.clone(),
            ]);
        }
        out.push_str(&regions.to_string());
        out.push('\n');
        if !d.cells.is_empty() {
            let mut cells = table(&["  CELL", "SCORE", "LOAD", "OUTCOME"]);
            for c in &d.cells {
                cells.add_row(vec![
                    format!("  {}", c.cell),
                    format!("{:.3}", c.score),
                    format!("{}/{}", c.load, c.capacity),
                    c.outcome.clone(),
                ]);
            }
            out.push_str(&cells.to_string());
            out.push('\n');
        }
    }
    out
}

pub fn context(c: &TenantContext) -> String {
    let i = &c.isolation;
    format!(
        "tenant:   {} ({})\nenv:      {}\ncell:     {}\nregion:   {}\nprofile:  {}\nstate:    {}\ngeneration: {}\n\
         database: {} schema {}{} ({:?})\nobjects:  bucket {} prefix {:?}\nqueue:    {}{}\nsecrets:  {} (key {})\nnetwork:  {} ({} account)\n",
        c.tenant,
        c.display_name,
        c.env,
        c.cell,
        c.region,
        c.profile,
        c.state,
        c.generation,
        i.database.database,
        i.database.schema,
        i.database
            .row_scope
            .as_ref()
            .map(|r| format!(", rows where tenant_id = {r}"))
            .unwrap_or_default(),
        i.database.sharing,
        i.object_store.bucket,
        i.object_store.prefix,
        i.queue.queue,
        i.queue
            .partition_key
            .as_ref()
            .map(|k| format!(" partition {k}"))
            .unwrap_or_default(),
        i.secrets.path,
        i.secrets.key,
        i.network.network,
        i.network.account,
    )
}

pub fn apply(r: &ApplyResponse) -> String {
    let mut out = String::new();
    for res in &r.results {
        let verb = match (r.dry_run, res.outcome) {
            (true, ApplyOutcome::Created) => "would be created",
            (true, ApplyOutcome::Configured) => "would be configured",
            (_, o) => o.as_str(),
        };
        out.push_str(&format!("{} {} {verb}\n", res.kind, res.name));
        if r.dry_run {
            for c in &res.changes {
                let show = |v: &Option<serde_json::Value>| {
                    v.as_ref()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "(none)".into())
                };
                out.push_str(&format!(
                    "    {}: {} -> {}\n",
                    c.path,
                    show(&c.from),
                    show(&c.to)
                ));
            }
        }
    }
    for p in &r.placed {
        let verb = if r.dry_run {
            "would be placed"
        } else {
            "placed"
        };
        out.push_str(&format!(
            "tenant {} ({}) {verb} on {} (generation {})\n",
            p.tenant, p.env, p.cell, p.generation
        ));
    }
    if r.dry_run {
        out.push_str("dry run: nothing was changed\n");
    }
    out
}

pub fn token_created(t: &TokenCreated) -> String {
    format!(
        "token {} ({}{}) created. It is shown only this once:\n{}\n",
        t.id,
        t.role,
        t.cell
            .as_ref()
            .map(|c| format!(", cell {c}"))
            .unwrap_or_default(),
        t.token
    )
}

pub fn tokens(tokens: &[TokenView]) -> String {
    let mut t = table(&[
        "ID",
        "ROLE",
        "CELL",
        "CREATED",
        "BY",
        "REVOKED",
        "DESCRIPTION",
    ]);
    for v in tokens {
        t.add_row(vec![
            v.id.clone(),
            v.role.to_string(),
            or_dash(v.cell.as_ref()),
            v.created_at.format("%Y-%m-%d %H:%M").to_string(),
            v.created_by.clone(),
            or_dash(v.revoked_at.map(|r| r.format("%Y-%m-%d %H:%M"))),
            or_dash(v.description.as_ref()),
        ]);
    }
    t.to_string()
}

pub fn audit(records: &[AuditRecord]) -> String {
    let mut t = table(&["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "CORRELATION"]);
    for r in records {
        t.add_row(vec![
            r.seq.to_string(),
            r.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.actor.clone(),
            r.action.clone(),
            r.target.clone(),
            r.correlation_id.clone(),
        ]);
    }
    t.to_string()
}

pub fn verification(v: &AuditVerification) -> String {
    let mut out = match &v.first_bad {
        None => format!("audit log intact: {} records verified\n", v.records),
        Some(bad) => format!(
            "audit log TAMPERED at record {}: {}\n",
            bad.seq, bad.problem
        ),
    };
    for p in v.problems.iter().skip(1) {
        out.push_str(&format!("  also at record {}: {}\n", p.seq, p.problem));
    }
    match (&v.key_id, v.anchored_through) {
        (None, _) => out.push_str("no audit key configured: the chain is not anchored\n"),
        (Some(key), Some(through)) => out.push_str(&format!(
            "{} signed checkpoints (key {key}) anchor records 1–{through}; {} newer record(s) not yet anchored\n",
            v.checkpoints, v.unanchored
        )),
        (Some(key), None) => out.push_str(&format!(
            "no valid checkpoint (key {key}) yet: {} record(s) not anchored\n",
            v.unanchored
        )),
    }
    out
}

pub fn checkpoints(list: &[cellfleet_api::AuditCheckpoint]) -> String {
    let mut t = table(&["RECORD", "HASH", "AT", "KEY"]);
    for c in list {
        t.add_row(vec![
            c.seq.to_string(),
            c.hash.get(..16).unwrap_or(&c.hash).to_owned(),
            c.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            c.key_id.clone(),
        ]);
    }
    t.to_string()
}

pub fn migrations(stream: &[cellfleet_api::Migration]) -> String {
    let mut t = table(&["VERSION", "NAME", "PHASE", "CHECKSUM"]);
    for m in stream {
        t.add_row(vec![
            m.version.to_string(),
            m.name.clone(),
            m.phase.as_str().to_owned(),
            m.checksum[..12.min(m.checksum.len())].to_owned(),
        ]);
    }
    t.to_string()
}

pub fn migrations_added(added: &[cellfleet_api::MigrationAdded]) -> String {
    added
        .iter()
        .map(|a| format!("migration V{} ({}) {}\n", a.version, a.name, a.outcome))
        .collect()
}

pub fn releases(releases: &[cellfleet_api::ReleaseView]) -> String {
    let mut t = table(&["VERSION", "COMMAND", "MIGRATIONS", "CREATED"]);
    for r in releases {
        t.add_row(vec![
            r.version.clone(),
            std::iter::once(r.spec.artifact.command.clone())
                .chain(r.spec.artifact.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
            or_dash(
                r.spec
                    .migrations
                    .as_ref()
                    .map(|m| format!("up to V{}", m.up_to)),
            ),
            r.created_at.format("%Y-%m-%d %H:%M").to_string(),
        ]);
    }
    t.to_string()
}

/// `120 req, 2 err, p99 4.1ms` over the agent's window.
fn health_summary(h: &cellfleet_api::Health) -> String {
    let p99 = h
        .latency_p99_ms
        .map(|p| format!(", p99 {p:.1}ms"))
        .unwrap_or_default();
    format!(
        "{} req, {} err{p99} /{}s",
        h.requests, h.errors, h.window_seconds
    )
}
