//! Runbooks, the pure part (SPEC §2, §9): the catalog (shipped runbooks compiled in, plus the
//! folders an operator points the server at), a definition's checks (every step kind, argument,
//! condition and `${…}` reference, each error with its field path), typed parameters, and the
//! `${…}` templates steps are written with. No I/O beyond reading the folders: the service
//! (`service::runbooks`) runs the steps as an operation like moves and trains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellfleet_api::{
    CellName, Env, ManifestFile, ParamSpec, ParamType, RunbookSpec, StepKind, TenantId,
};
use serde_json::{Value, json};

mod template;
mod validate;

pub use template::{Context, display, references, render};
pub use validate::{TRAIN_ACTIONS, validate};

/// The operation kind of runbook runs.
pub const KIND: &str = "runbook";
/// How long a `wait-for` waits when its step names no `timeout`.
pub const DEFAULT_WAIT: &str = "10m";
/// The most items a `for-each` runs at once.
pub const MAX_CONCURRENCY: i64 = 32;

/// The runbooks shipped in `runbooks/`: name, definition, page.
pub const SHIPPED: &[(&str, &str, &str)] = &[
    (
        "tenant-move",
        include_str!("../../../runbooks/tenant-move.yaml"),
        include_str!("../../../runbooks/tenant-move.md"),
    ),
    (
        "cell-drain",
        include_str!("../../../runbooks/cell-drain.yaml"),
        include_str!("../../../runbooks/cell-drain.md"),
    ),
    (
        "release-rollback",
        include_str!("../../../runbooks/release-rollback.yaml"),
        include_str!("../../../runbooks/release-rollback.md"),
    ),
    (
        "hotfix",
        include_str!("../../../runbooks/hotfix.yaml"),
        include_str!("../../../runbooks/hotfix.md"),
    ),
    (
        "incident-comms",
        include_str!("../../../runbooks/incident-comms.yaml"),
        include_str!("../../../runbooks/incident-comms.md"),
    ),
];

/// A runbook ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Runbook {
    pub name: String,
    /// `shipped`, or the file.
    pub source: String,
    pub spec: RunbookSpec,
    pub page: Option<String>,
}

/// One entry of the catalog: a runbook, or a file that could not be read as one.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub source: String,
    pub runbook: Result<Runbook, String>,
}

/// The shipped runbooks, then every `*.yaml`/`*.yml` of `dirs` (a folder's runbook replaces a
/// shipped one of the same name: operators adapt them). A file that does not parse is an entry
/// with its error (named by file, document and path), listed and refused when run.
pub fn catalog(dirs: &[PathBuf]) -> Vec<Entry> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for (name, yaml, page) in SHIPPED {
        let file = ManifestFile {
            name: format!("runbooks/{name}.yaml"),
            content: (*yaml).to_owned(),
        };
        let runbook = crate::manifest::parse_runbook(&file)
            .map(|(n, spec)| Runbook {
                name: n,
                source: "shipped".into(),
                spec,
                page: Some((*page).to_owned()),
            })
            .map_err(|e| e.to_string());
        out.insert(
            (*name).to_owned(),
            Entry {
                name: (*name).to_owned(),
                source: "shipped".into(),
                runbook,
            },
        );
    }
    for dir in dirs {
        for path in yaml_files(dir) {
            let source = path.display().to_string();
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let runbook = std::fs::read_to_string(&path)
                .map_err(|e| format!("{source}: {e}"))
                .and_then(|content| {
                    let file = ManifestFile {
                        name: source.clone(),
                        content,
                    };
                    crate::manifest::parse_runbook(&file).map_err(|e| e.to_string())
                })
                .map(|(name, spec)| Runbook {
                    name,
                    source: source.clone(),
                    spec,
                    page: std::fs::read_to_string(path.with_extension("md")).ok(),
                });
            let name = runbook.as_ref().map_or(stem, |r| r.name.clone());
            out.insert(
                name.clone(),
                Entry {
                    name,
                    source,
                    runbook,
                },
            );
        }
    }
    out.into_values().collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A step kind's arguments: required, then optional.
pub fn kind_args(kind: StepKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        StepKind::Check | StepKind::WaitFor | StepKind::ForEach => (&[], &[]),
        StepKind::Move => (
            &["tenant", "to"],
            &["env", "maxWritePause", "rollbackWindow", "until"],
        ),
        StepKind::Drain => (&["cell"], &["action", "reason"]),
        StepKind::Train => (&["action"], &["train", "cell", "reason"]),
        StepKind::ReleaseDeploy => (&["release", "cells", "reason"], &[]),
        StepKind::Approve => (&[], &["message"]),
        StepKind::Notify => (
            &[],
            &["template", "message", "to", "tenants", "subject", "title"],
        ),
    }
}

/// The conditions `check`, `wait-for` and `when` know: name, required and optional arguments,
/// what it means.
pub const CONDITIONS: &[(&str, &[&str], &[&str], &str)] = &[
    ("tenant-active", &["tenant"], &[], "the tenant is active"),
    (
        "residency-allows",
        &["tenant", "to"],
        &["env"],
        "the tenant's residency allows the region of the target a move --to TO would pick",
    ),
    (
        "target-healthy",
        &["tenant", "to"],
        &["env"],
        "the target a move --to TO would pick is ready and its workload runs",
    ),
    (
        "target-has-room",
        &["tenant", "to"],
        &["env"],
        "the target a move --to TO would pick has room for the tenant",
    ),
    (
        "target-dedicated",
        &["tenant", "to"],
        &["env"],
        "the target a move --to TO would pick is a dedicated cell",
    ),
    (
        "cell-healthy",
        &["cell"],
        &[],
        "the cell's agent converged, reports no errors, and its workload runs",
    ),
    ("cell-pooled", &["cell"], &[], "the cell is a pooled cell"),
    (
        "cell-empty",
        &["cell"],
        &[],
        "no tenant is placed on the cell and no move holds it",
    ),
    (
        "no-train-on",
        &["cells"],
        &[],
        "no open train is about to change these cells",
    ),
    (
        "no-move-on",
        &["cells"],
        &[],
        "no tenant move goes through these cells",
    ),
    (
        "route-points-at",
        &["tenant", "cell"],
        &["env"],
        "the routing table sends the tenant to the cell, active",
    ),
    (
        "tenant-healthy",
        &["tenant"],
        &["env", "maxErrorRate", "cell"],
        "the tenant's cell (its route's; `cell`: must be that one) is healthy and answered its requests with at most maxErrorRate (1 %) errors",
    ),
    (
        "rows-match",
        &["move"],
        &[],
        "the move's cut-over verification (row counts and checksums per table under the fence) passed",
    ),
    (
        "cells-run",
        &["cells"],
        &["release"],
        "every cell's agent reports running the release (default: the one assigned to it)",
    ),
    (
        "cells-healthy",
        &["cells"],
        &[],
        "every cell is healthy (see cell-healthy)",
    ),
    (
        "release-exists",
        &["release"],
        &[],
        "the release is registered",
    ),
    (
        "tenants-of",
        &["cells"],
        &[],
        "every cell is registered; outputs `tenants`, the tenants placed on them",
    ),
    ("line-stopped", &[], &[], "the line is stopped"),
    ("equals", &["a", "b"], &[], "a and b are equal"),
    ("not-equals", &["a", "b"], &[], "a and b differ"),
    ("not-empty", &["list"], &[], "the list has items"),
];

/// Looks a condition up.
pub fn condition(
    name: &str,
) -> Option<&'static (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
)> {
    CONDITIONS.iter().find(|c| c.0 == name)
}

/// A parameter's text as its type, or why not.
pub fn typed(p: &ParamSpec, text: &str) -> Result<Value, String> {
    let bad = |what: &str, e: String| Err(format!("{text:?} is not {what}: {e}"));
    match p.kind {
        ParamType::String => Ok(Value::String(text.to_owned())),
        ParamType::Int => match text.trim().parse::<i64>() {
            Ok(n) => {
                if p.min.is_some_and(|m| n < m) || p.max.is_some_and(|m| n > m) {
                    return Err(format!(
                        "{n} is outside {}..={}",
                        p.min.map_or("".into(), |m| m.to_string()),
                        p.max.map_or("".into(), |m| m.to_string())
                    ));
                }
                Ok(json!(n))
            }
            Err(e) => bad("an integer", e.to_string()),
        },
        ParamType::Bool => match text.trim() {
            "true" | "yes" => Ok(json!(true)),
            "false" | "no" => Ok(json!(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        ParamType::Duration => crate::trains::seconds(text).map(|_| json!(text.trim())),
        ParamType::Tenant => text
            .parse::<TenantId>()
            .map(|t| json!(t.as_str()))
            .or_else(|e| bad("a tenant id", e.to_string())),
        ParamType::Cell => text
            .parse::<CellName>()
            .map(|c| json!(c.as_str()))
            .or_else(|e| bad("a cell name", e.to_string())),
        ParamType::Env => text
            .parse::<Env>()
            .map(|c| json!(c.as_str()))
            .or_else(|e| bad("an environment", e.to_string())),
        ParamType::Release => semver::Version::parse(text.trim())
            .map(|_| json!(text.trim()))
            .or_else(|e| bad("a semver version", e.to_string())),
        ParamType::Enum => {
            if p.values.iter().any(|v| v == text) {
                Ok(json!(text))
            } else {
                Err(format!("{text:?} is not one of {}", p.values.join(", ")))
            }
        }
        ParamType::List => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| json!(s))
                .collect(),
        )),
    }
}

/// The run's parameters: every given one known and of its type, every required one given,
/// defaults filled in. The error names the parameter.
pub fn resolve_params(
    spec: &RunbookSpec,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Value>, String> {
    for k in given.keys() {
        if !spec.params.iter().any(|p| p.name == *k) {
            return Err(format!(
                "unknown parameter {k:?} (this runbook takes: {})",
                if spec.params.is_empty() {
                    "none".to_owned()
                } else {
                    spec.params
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    let mut out = BTreeMap::new();
    for p in &spec.params {
        let value = match (given.get(&p.name), &p.default) {
            (Some(text), _) => typed(p, text).map_err(|e| format!("parameter {}: {e}", p.name))?,
            (None, Some(d)) => {
                let text = match d {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a.iter().map(display).collect::<Vec<_>>().join(","),
                    other => other.to_string(),
                };
                typed(p, &text).map_err(|e| format!("parameter {} (default): {e}", p.name))?
            }
            (None, None) if p.required => {
                return Err(format!(
                    "missing parameter {} ({}{}): pass --param {}=…",
                    p.name,
                    serde_json::to_value(p.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    if p.description.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", p.description)
                    },
                    p.name
                ));
            }
            (None, None) => Value::Null,
        };
        if p.kind == ParamType::String
            && p.required
            && value.as_str().is_some_and(|s| s.trim().is_empty())
        {
            return Err(format!("parameter {}: must not be empty", p.name));
        }
        out.insert(p.name.clone(), value);
    }
    Ok(out)
}
