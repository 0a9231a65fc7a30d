//! A runbook definition's checks beyond its shape: every step kind's arguments, every
//! condition's, every `${…}` reference resolvable where it stands, each error with its field path.

use std::collections::{BTreeMap, BTreeSet};

use cellfleet_api::{OnStepFailure, RunbookSpec, StepKind, StepSpec};
use serde_json::{Value, json};

use super::{CONDITIONS, MAX_CONCURRENCY, condition, display, kind_args, references, typed};

/// Checks a runbook's definition beyond its shape; the error names the field path.
pub fn validate(spec: &RunbookSpec) -> Result<(), (String, String)> {
    let err = |path: String, msg: String| Err((path, msg));
    if spec.description.trim().is_empty() {
        return err("spec.description".into(), "must not be empty".into());
    }
    if spec.roles.is_empty() {
        return err(
            "spec.roles".into(),
            "name at least one role that may run it (admin, sre, operator)".into(),
        );
    }
    if spec.steps.is_empty() {
        return err(
            "spec.steps".into(),
            "a runbook needs at least one step".into(),
        );
    }
    let mut params: BTreeSet<&str> = BTreeSet::new();
    for (i, p) in spec.params.iter().enumerate() {
        let at = format!("spec.params[{i}]");
        if !is_name(&p.name) {
            return err(
                format!("{at}.name"),
                format!(
                    "{:?} is not a parameter name (letters, digits, - and _)",
                    p.name
                ),
            );
        }
        if ["steps", "item", "run"].contains(&p.name.as_str()) {
            return err(format!("{at}.name"), format!("{:?} is reserved", p.name));
        }
        if !params.insert(&p.name) {
            return err(
                format!("{at}.name"),
                format!("parameter {:?} declared twice", p.name),
            );
        }
        if p.kind == cellfleet_api::ParamType::Enum && p.values.is_empty() {
            return err(
                format!("{at}.values"),
                "an enum parameter lists its values".into(),
            );
        }
        if p.required && p.default.is_some() {
            return err(
                format!("{at}.default"),
                "a required parameter has no default".into(),
            );
        }
        if let Some(d) = &p.default {
            let text = match d {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.iter().map(display).collect::<Vec<_>>().join(","),
                other => other.to_string(),
            };
            typed(p, &text).map_err(|e| (format!("{at}.default"), e))?;
        }
    }
    for name in spec.templates.keys() {
        if !is_name(name) {
            return err(
                format!("spec.templates.{name}"),
                "not a template name (letters, digits, - and _)".into(),
            );
        }
    }
    if let Some(lock) = &spec.lock {
        check_refs(&json!(lock), "spec.lock", &params, &[], false)?;
    }
    // Templates are rendered by notify steps, per tenant: any step's output, `${item}`.
    let names: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
    for (name, text) in &spec.templates {
        check_refs(
            &json!(text),
            &format!("spec.templates.{name}"),
            &params,
            &names,
            true,
        )?;
    }
    let mut earlier: Vec<&str> = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = format!("spec.steps[{i}]");
        if earlier.contains(&step.name.as_str()) {
            return err(
                format!("{at}.name"),
                format!("step {:?} named twice", step.name),
            );
        }
        validate_step(spec, step, &at, &params, &earlier, false)?;
        earlier.push(&step.name);
    }
    Ok(())
}

fn validate_step(
    spec: &RunbookSpec,
    step: &StepSpec,
    at: &str,
    params: &BTreeSet<&str>,
    earlier: &[&str],
    in_for_each: bool,
) -> Result<(), (String, String)> {
    let err = |path: String, msg: String| Err((path, msg));
    if !is_name(&step.name) {
        return err(
            format!("{at}.name"),
            format!(
                "{:?} is not a step name (letters, digits, - and _)",
                step.name
            ),
        );
    }
    if in_for_each {
        let nested = match (step.kind, &step.on_failure) {
            (StepKind::ForEach, _) => Some("a for-each cannot hold another for-each"),
            (StepKind::Approve, _) => {
                Some("a for-each cannot hold an approve step (approve before it)")
            }
            (_, OnStepFailure::Run(_)) => {
                Some("a for-each's step cannot have a compensating step (give the for-each one)")
            }
            _ => None,
        };
        if let Some(why) = nested {
            return err(format!("{at}.kind"), why.into());
        }
    }
    let (required, optional) = kind_args(step.kind);
    let uses_condition = matches!(step.kind, StepKind::Check | StepKind::WaitFor);
    for key in step.with.keys().filter(|_| !uses_condition) {
        if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
            let known: Vec<&str> = required.iter().chain(optional).copied().collect();
            return err(
                format!("{at}.with.{key}"),
                if known.is_empty() {
                    format!("a {} step takes no argument {key:?}", step.kind)
                } else {
                    format!(
                        "a {} step takes no argument {key:?} (it takes: {})",
                        step.kind,
                        known.join(", ")
                    )
                },
            );
        }
    }
    for r in required {
        if !step.with.contains_key(*r) {
            return err(
                format!("{at}.with"),
                format!("a {} step needs the argument {r:?}", step.kind),
            );
        }
    }
    match (&step.condition, uses_condition) {
        (None, true) => {
            return err(
                format!("{at}.condition"),
                format!("a {} step names its condition", step.kind),
            );
        }
        (Some(_), false) => {
            return err(
                format!("{at}.condition"),
                format!(
                    "only check and wait-for steps take a condition (this is {})",
                    step.kind
                ),
            );
        }
        (Some(c), true) => check_condition(
            c,
            &step.with,
            &format!("{at}.condition"),
            &format!("{at}.with"),
        )?,
        (None, false) => {}
    }
    if let Some(t) = &step.timeout {
        if step.kind != StepKind::WaitFor {
            return err(
                format!("{at}.timeout"),
                "only wait-for steps take a timeout".into(),
            );
        }
        crate::trains::seconds(t).map_err(|e| (format!("{at}.timeout"), e))?;
    }
    if step.kind == StepKind::Approve && step.roles.is_empty() {
        return err(
            format!("{at}.roles"),
            "an approve step names the roles that may approve".into(),
        );
    }
    if step.kind == StepKind::Notify {
        match (step.with.get("template"), step.with.get("message")) {
            (None, None) => {
                return err(
                    format!("{at}.with"),
                    "a notify step needs a template or a message".into(),
                );
            }
            (Some(Value::String(t)), _) if !t.contains("${") && !spec.templates.contains_key(t) => {
                return err(
                    format!("{at}.with.template"),
                    format!("no template {t:?} in spec.templates"),
                );
            }
            _ => {}
        }
    }
    if step.kind == StepKind::Drain
        && let Some(Value::String(a)) = step.with.get("action")
        && !a.contains("${")
        && !["drain", "undrain", "retire"].contains(&a.as_str())
    {
        return err(
            format!("{at}.with.action"),
            format!("{a:?}: a drain step's action is drain, undrain or retire"),
        );
    }
    if step.kind == StepKind::Train
        && let Some(Value::String(a)) = step.with.get("action")
        && !a.contains("${")
        && !TRAIN_ACTIONS.contains(&a.as_str())
    {
        return err(
            format!("{at}.with.action"),
            format!(
                "{a:?}: a train step's action is one of {}",
                TRAIN_ACTIONS.join(", ")
            ),
        );
    }
    if step.kind == StepKind::Move
        && let Some(Value::String(u)) = step.with.get("until")
        && !["cutover", "done"].contains(&u.as_str())
    {
        return err(
            format!("{at}.with.until"),
            format!("{u:?}: a move step waits until cutover or done"),
        );
    }
    if let Some(w) = &step.when {
        check_condition(
            &w.condition,
            &w.with,
            &format!("{at}.when.condition"),
            &format!("{at}.when.with"),
        )?;
        check_refs(
            &json!(w.with),
            &format!("{at}.when.with"),
            params,
            earlier,
            in_for_each,
        )?;
    }
    // A notify step renders its message and title per tenant: they may name `${item}`.
    let per_tenant = step.kind == StepKind::Notify && step.with.contains_key("tenants");
    for (key, value) in &step.with {
        let item_here = in_for_each || (per_tenant && (key == "message" || key == "title"));
        check_refs(
            value,
            &format!("{at}.with.{key}"),
            params,
            earlier,
            item_here,
        )?;
    }
    if step.kind == StepKind::ForEach {
        let items = step.items.as_ref().ok_or_else(|| {
            (
                format!("{at}.items"),
                "a for-each step names its items (a list)".into(),
            )
        })?;
        check_refs(items, &format!("{at}.items"), params, earlier, false)?;
        if let Some(c) = &step.concurrency {
            match c {
                Value::Number(n)
                    if n.as_i64()
                        .is_some_and(|n| (1..=MAX_CONCURRENCY).contains(&n)) => {}
                Value::String(s) if s.contains("${") => {
                    check_refs(c, &format!("{at}.concurrency"), params, earlier, false)?;
                }
                other => {
                    return err(
                        format!("{at}.concurrency"),
                        format!(
                            "{other}: a number from 1 to {MAX_CONCURRENCY}, or a ${{parameter}}"
                        ),
                    );
                }
            }
        }
        let inner = step.step.as_ref().ok_or_else(|| {
            (
                format!("{at}.step"),
                "a for-each step names the step run for each item".into(),
            )
        })?;
        validate_step(spec, inner, &format!("{at}.step"), params, earlier, true)?;
    } else {
        for (field, present) in [
            ("items", step.items.is_some()),
            ("concurrency", step.concurrency.is_some()),
            ("step", step.step.is_some()),
        ] {
            if present {
                return err(
                    format!("{at}.{field}"),
                    format!("only for-each steps take {field} (this is {})", step.kind),
                );
            }
        }
    }
    if let OnStepFailure::Run(comp) = &step.on_failure {
        if matches!(comp.kind, StepKind::ForEach | StepKind::Approve) {
            return err(
                format!("{at}.on-failure.run.kind"),
                format!("a compensating step cannot be a {}", comp.kind),
            );
        }
        validate_step(
            spec,
            comp,
            &format!("{at}.on-failure.run"),
            params,
            earlier,
            in_for_each,
        )?;
    }
    Ok(())
}

/// A train step's actions.
pub const TRAIN_ACTIONS: &[&str] = &[
    "pause",
    "resume",
    "abort",
    "rollback",
    "stop-line",
    "resume-line",
];

fn check_condition(
    name: &str,
    with: &BTreeMap<String, Value>,
    at: &str,
    with_at: &str,
) -> Result<(), (String, String)> {
    let Some((_, required, optional, _)) = condition(name) else {
        return Err((
            at.to_owned(),
            format!(
                "unknown condition {name:?} (known: {})",
                CONDITIONS
                    .iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    for r in *required {
        if !with.contains_key(*r) {
            return Err((
                with_at.to_owned(),
                format!("condition {name} needs the argument {r:?}"),
            ));
        }
    }
    for key in with.keys() {
        if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
            return Err((
                format!("{with_at}.{key}"),
                format!("condition {name} takes no argument {key:?}"),
            ));
        }
    }
    Ok(())
}

/// Every `${…}` in `value` must name a parameter, an earlier step, `run`, or (inside a
/// for-each) `item`.
fn check_refs(
    value: &Value,
    at: &str,
    params: &BTreeSet<&str>,
    earlier: &[&str],
    in_for_each: bool,
) -> Result<(), (String, String)> {
    for r in references(value).map_err(|e| (at.to_owned(), e))? {
        let mut parts = r.split('.');
        let root = parts.next().unwrap_or_default();
        let ok = match root {
            "steps" => parts.next().is_some_and(|s| earlier.contains(&s)),
            "item" => in_for_each,
            "run" => matches!(parts.next(), Some("id" | "by")),
            p => params.contains(p),
        };
        if !ok {
            return Err((
                at.to_owned(),
                format!(
                    "${{{r}}} names no parameter, earlier step{}, or run.id/run.by",
                    if in_for_each { ", item" } else { "" }
                ),
            ));
        }
    }
    Ok(())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
