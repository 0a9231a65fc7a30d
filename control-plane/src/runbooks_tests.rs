//! The runbook definition checks, one mistake at a time, and typed parameters.

use std::collections::BTreeMap;

use cellfleet_api::ManifestFile;
use serde_json::json;

use crate::manifest::parse_runbook;
use crate::runbooks::{SHIPPED, catalog, resolve_params};

const GOOD: &str = r#"
apiVersion: cellfleet.io/v1
kind: Runbook
metadata:
  name: tiny
spec:
  description: a small runbook
  roles: [admin]
  params:
    - name: cell
      type: cell
      required: true
    - name: n
      type: int
      default: 2
      min: 1
      max: 4
    - name: stage
      type: enum
      values: [a, b]
      default: a
    - name: cells
      type: list
      default: x,y
    - name: loud
      type: bool
      default: false
  steps:
    - name: pooled
      kind: check
      condition: cell-pooled
      with: {cell: "${cell}"}
    - name: drain
      kind: drain
      with: {cell: "${cell}"}
    - name: each
      kind: for-each
      items: "${steps.drain.tenants}"
      concurrency: "${n}"
      step:
        name: move
        kind: move
        with: {tenant: "${item.tenant}", to: pooled}
"#;

fn parse(text: &str) -> Result<(String, cellfleet_api::RunbookSpec), String> {
    parse_runbook(&ManifestFile {
        name: "rb.yaml".into(),
        content: text.into(),
    })
    .map_err(|e| e.to_string())
}

/// `GOOD` with `from` replaced by `to`; the error it gives.
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} is not in the runbook");
    match parse(&GOOD.replacen(from, to, 1)) {
        Ok(_) => panic!("{from:?} → {to:?} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn the_shipped_runbooks_parse_and_each_has_a_page() {
    let entries = catalog(&[]);
    assert_eq!(entries.len(), SHIPPED.len());
    for e in &entries {
        let rb = e
            .runbook
            .as_ref()
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_eq!(rb.name, e.name);
        let page = rb.page.as_deref().unwrap_or_default();
        for heading in [
            "## When to use it",
            "## What it does",
            "## What can go wrong",
            "## Recover by hand",
        ] {
            assert!(page.contains(heading), "{}.md lacks {heading:?}", e.name);
        }
    }
    assert!(parse(GOOD).is_ok(), "{:?}", parse(GOOD));
}

#[test]
fn each_mistake_is_named_with_file_document_and_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "kind: check",
            "kind: chek",
            "rb.yaml: document 1: spec.steps[0].kind: unknown variant `chek`",
        ),
        (
            "condition: cell-pooled",
            "condition: cell-full",
            "spec.steps[0].condition: unknown condition \"cell-full\"",
        ),
        (
            "with: {cell: \"${cell}\"}\n    - name: drain",
            "with: {}\n    - name: drain",
            "spec.steps[0].with: condition cell-pooled needs the argument \"cell\"",
        ),
        (
            "with: {tenant: \"${item.tenant}\", to: pooled}",
            "with: {tenant: \"${item.tenant}\", to: pooled, speed: 3}",
            "spec.steps[2].step.with.speed: a move step takes no argument \"speed\"",
        ),
        (
            "with: {tenant: \"${item.tenant}\", to: pooled}",
            "with: {tenant: \"${item.tenant}\"}",
            "spec.steps[2].step.with: a move step needs the argument \"to\"",
        ),
        (
            "with: {cell: \"${cell}\"}\n    - name: each",
            "with: {cell: \"${cel}\"}\n    - name: each",
            "spec.steps[1].with.cell: ${cel} names no parameter",
        ),
        (
            "items: \"${steps.drain.tenants}\"",
            "items: \"${steps.each.tenants}\"",
            "spec.steps[2].items: ${steps.each.tenants} names no parameter, earlier step",
        ),
        (
            "with: {cell: \"${cell}\"}\n    - name: each",
            "with: {cell: \"${item}\"}\n    - name: each",
            "spec.steps[1].with.cell: ${item} names no parameter",
        ),
        (
            "name: drain\n",
            "name: pooled\n",
            "spec.steps[1].name: step \"pooled\" named twice",
        ),
        (
            "roles: [admin]",
            "roles: []",
            "spec.roles: name at least one role",
        ),
        (
            "roles: [admin]",
            "roles: [root]",
            "spec.roles[0]: unknown variant `root`",
        ),
        (
            "values: [a, b]",
            "values: []",
            "spec.params[2].values: an enum parameter lists its values",
        ),
        (
            "default: 2\n",
            "default: 9\n",
            "spec.params[1].default: 9 is outside 1..=4",
        ),
        (
            "type: cell",
            "type: cel",
            "spec.params[0].type: unknown variant `cel`",
        ),
        ("kind: Runbook", "kind: Cell", "kind: expected kind Runbook"),
        (
            "description: a small runbook",
            "description: a small runbook\n  bogus: 1",
            "spec.bogus: unknown field `bogus`",
        ),
        (
            "concurrency: \"${n}\"",
            "concurrency: 0",
            "spec.steps[2].concurrency: 0: a number from 1 to 32",
        ),
        (
            "kind: drain\n",
            "kind: drain\n      condition: cell-empty\n",
            "spec.steps[1].condition: only check and wait-for steps take a condition",
        ),
        (
            "name: move\n        kind: move",
            "name: move\n        kind: for-each",
            "a for-each cannot hold another for-each",
        ),
        (
            "  name: tiny",
            "  name: Tiny_Runbook",
            "metadata.name: \"Tiny_Runbook\" is not a runbook name",
        ),
        (
            "with: {cell: \"${cell}\"}\n    - name: each",
            "with: {cell: \"${cell\"}\n    - name: each",
            "without a closing",
        ),
        ("steps:\n", "steps: [\n", "rb.yaml: document 1:"),
    ];
    for (from, to, want) in cases {
        let got = broken(from, to);
        assert!(
            got.contains(want),
            "{from:?} → {to:?}:\n  got  {got}\n  want {want}"
        );
    }
    // An approve step names who may approve.
    let got = broken(
        "    - name: drain\n      kind: drain\n",
        "    - name: ok\n      kind: approve\n    - name: drain\n      kind: drain\n",
    );
    assert!(
        got.contains("spec.steps[1].roles: an approve step names the roles"),
        "{got}"
    );
}

#[test]
fn parameters_are_typed_complete_and_defaulted() {
    let (_, spec) = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    let given = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let p = resolve_params(&spec, &given(&[("cell", "pool-1")])).unwrap_or_default();
    assert_eq!(p["cell"], json!("pool-1"));
    assert_eq!(p["n"], json!(2));
    assert_eq!(p["stage"], json!("a"));
    assert_eq!(p["cells"], json!(["x", "y"]));
    assert_eq!(p["loud"], json!(false));
    let p = resolve_params(
        &spec,
        &given(&[
            ("cell", "c"),
            ("cells", "a, b,,c"),
            ("loud", "true"),
            ("n", "4"),
        ]),
    )
    .unwrap_or_default();
    assert_eq!(p["cells"], json!(["a", "b", "c"]));
    assert_eq!(p["loud"], json!(true));
    assert_eq!(p["n"], json!(4));
    for (pairs, want) in [
        (&[][..], "missing parameter cell (cell"),
        (
            &[("cell", "Not A Cell")][..],
            "parameter cell: \"Not A Cell\" is not a cell name",
        ),
        (
            &[("cell", "c"), ("n", "two")][..],
            "parameter n: \"two\" is not an integer",
        ),
        (
            &[("cell", "c"), ("n", "5")][..],
            "parameter n: 5 is outside 1..=4",
        ),
        (
            &[("cell", "c"), ("stage", "z")][..],
            "parameter stage: \"z\" is not one of a, b",
        ),
        (
            &[("cell", "c"), ("loud", "maybe")][..],
            "parameter loud: \"maybe\" is not true or false",
        ),
        (
            &[("cell", "c"), ("celll", "x")][..],
            "unknown parameter \"celll\" (this runbook takes: cell, n, stage, cells, loud)",
        ),
    ] {
        let got = resolve_params(&spec, &given(pairs))
            .err()
            .unwrap_or_default();
        assert!(got.contains(want), "{pairs:?}: got {got:?}, want {want:?}");
    }
}
