//! Every way a manifest can be wrong, and the exact message each gets.

use super::*;

const GOOD: &str = r#"
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-west-1}
spec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: euw1-pool-1, labels: {canary: "true"}}
spec:
  region: eu-west-1
  kind: pooled
  env: prod
  capacity: 50
  template: pooled
  endpoint: http://127.0.0.1:9101
  changeWindow: {schedule: "0 0 2 * * Sun", duration: 4h}
---
apiVersion: cellfleet.io/v1
kind: Tenant
metadata: {name: acme}
spec:
  displayName: Acme Corp
  profile: mt-standard
  residency: {allowedRegions: [eu-west-1, eu-central-1], preferredRegion: eu-west-1}
  environments: [prod]
  quotas: {requestsPerSecond: 200, storageGb: 20}
  flags: {newEditor: true}
  slo: {availability: 99.9, latencyP99Ms: 300}
---
"#;

fn file(content: &str) -> Vec<ManifestFile> {
    vec![ManifestFile {
        name: "fleet.yaml".into(),
        content: content.into(),
    }]
}

fn err(content: &str) -> String {
    parse(&file(content)).unwrap_err().to_string()
}

/// Replaces `from` in the good manifest (which must contain it) and returns the error.
fn err_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "test bug: {from:?} not in GOOD");
    err(&GOOD.replacen(from, to, 1))
}

#[test]
fn the_issue_example_parses() {
    let docs = parse(&file(GOOD)).unwrap();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[2].origin.document, 3);
    match &docs[1].object {
        Object::Cell { name, labels, spec } => {
            assert_eq!(name.as_str(), "euw1-pool-1");
            assert_eq!(labels["canary"], "true");
            assert_eq!(spec.effective_capacity(), 50);
        }
        other => panic!("expected a cell, got {other:?}"),
    }
}

#[test]
fn errors_name_file_document_and_field() {
    let cases = [
        (
            "capacity: 50",
            "capacity: 0",
            "fleet.yaml: document 2: spec.capacity: must be at least 1",
        ),
        (
            "capacity: 50",
            "capacity: lots",
            "fleet.yaml: document 2: spec.capacity: invalid type: string \"lots\", expected u32",
        ),
        (
            "kind: pooled",
            "kind: shared",
            "fleet.yaml: document 2: spec.kind: unknown variant `shared`, expected `pooled` or `dedicated`",
        ),
        (
            "lat: 53.35",
            "lat: 153.35",
            "fleet.yaml: document 1: spec.location.lat: 153.35 is not a latitude (-90 to 90)",
        ),
        (
            "name: acme}",
            "name: Acme}",
            "fleet.yaml: document 3: metadata.name: invalid name \"Acme\": may only contain lowercase letters, digits and '-' (found 'A')",
        ),
        (
            "eu-west-1, eu-central-1]",
            "eu-west-1, eu-west-1]",
            "fleet.yaml: document 3: spec.residency.allowedRegions[1]: eu-west-1 is listed twice",
        ),
        (
            "[eu-west-1, eu-central-1]",
            "[eu-west-1, EU]",
            "fleet.yaml: document 3: spec.residency.allowedRegions[1]: may only contain lowercase letters, digits and '-' (found 'E')",
        ),
        (
            "residency: {allowedRegions: [eu-west-1, eu-central-1], preferredRegion: eu-west-1}",
            "residency: {}",
            "fleet.yaml: document 3: spec.residency: must name allowedRegions or a jurisdiction",
        ),
        (
            "profile: mt-standard",
            "profile: gold",
            "fleet.yaml: document 3: spec.profile: unknown variant `gold`, expected one of `mt-standard`, `st-dedicated`, `st-byoc`",
        ),
        (
            "latencyP99Ms: 300",
            "latencyP99Ms: 300, colour: red",
            "fleet.yaml: document 3: spec.slo.colour: unknown field `colour`, expected `availability` or `latencyP99Ms`",
        ),
        (
            "availability: 99.9",
            "availability: 120",
            "fleet.yaml: document 3: spec.slo.availability: 120 is not a percentage in (0, 100]",
        ),
        (
            "environments: [prod]",
            "environments: [prod, prod]",
            "fleet.yaml: document 3: spec.environments[1]: prod is listed twice",
        ),
        (
            "environments: [prod]",
            "environments: []",
            "fleet.yaml: document 3: spec.environments: must list at least one environment",
        ),
        (
            "requestsPerSecond: 200",
            "requestsPerSecond: 0",
            "fleet.yaml: document 3: spec.quotas.requestsPerSecond: must be at least 1",
        ),
        (
            "duration: 4h",
            "duration: forever",
            "fleet.yaml: document 2: spec.changeWindow.duration: \"forever\" is not a duration (e.g. 4h, 90m): expected number at 0",
        ),
        (
            "endpoint: http://127.0.0.1:9101",
            "endpoint: ftp://x",
            "fleet.yaml: document 2: spec.endpoint: \"ftp://x\" must be an http(s) URL with a host",
        ),
        (
            "apiVersion: cellfleet.io/v1\nkind: Tenant",
            "apiVersion: cellfleet.io/v2\nkind: Tenant",
            "fleet.yaml: document 3: apiVersion: unsupported apiVersion \"cellfleet.io/v2\" (expected cellfleet.io/v1)",
        ),
        (
            "kind: Region",
            "kind: Regoin",
            "fleet.yaml: document 1: kind: unknown kind \"Regoin\" (expected Region, Cell, Tenant or Release)",
        ),
        (
            "metadata: {name: acme}",
            "metadata: {name: acme, labels: {a: b}}",
            "fleet.yaml: document 3: metadata.labels: labels are only supported on Cell",
        ),
        (
            "displayName: Acme Corp",
            "displayName: \"  \"",
            "fleet.yaml: document 3: spec.displayName: must be 1–200 characters",
        ),
    ];
    for (from, to, expected) in cases {
        assert_eq!(
            err_with(from, to),
            expected,
            "replacing {from:?} with {to:?}"
        );
    }
}

#[test]
fn cron_and_capacity_rules_for_dedicated_cells() {
    let e = err_with("schedule: \"0 0 2 * * Sun\"", "schedule: \"every night\"");
    assert!(e.starts_with("fleet.yaml: document 2: spec.changeWindow.schedule: \"every night\" is not a cron schedule"), "{e}");
    let e = err_with("kind: pooled", "kind: dedicated");
    assert_eq!(
        e,
        "fleet.yaml: document 2: spec.capacity: a dedicated cell holds exactly one tenant (got 50; omit capacity or set 1)"
    );
}

#[test]
fn missing_fields_and_non_mappings() {
    assert_eq!(
        err("apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: r}\n"),
        "fleet.yaml: document 1: missing field `spec`"
    );
    assert_eq!(
        err("- a\n- b\n"),
        "fleet.yaml: document 1: a manifest document must be a mapping with apiVersion, kind, metadata and spec"
    );
    let e = err("apiVersion: cellfleet.io/v1\nkind: [unclosed\n");
    assert!(
        e.starts_with("fleet.yaml: document 1: not valid YAML:"),
        "{e}"
    );
}

#[test]
fn an_object_declared_twice_is_refused() {
    let twice = format!("{GOOD}\n{}", GOOD.split("---").nth(1).unwrap());
    let files = vec![
        ManifestFile {
            name: "a.yaml".into(),
            content: GOOD.into(),
        },
        ManifestFile {
            name: "b.yaml".into(),
            content: twice,
        },
    ];
    let e = parse(&files).unwrap_err().to_string();
    assert_eq!(
        e,
        "b.yaml: document 1: metadata.name: Region eu-west-1 is declared twice (first in a.yaml document 1)"
    );
}

#[test]
fn duplicate_keys_and_impossible_numbers_are_named() {
    // A key given twice in one mapping is refused (the last one does not silently win).
    assert_eq!(
        err_with(
            "  kind: pooled\n",
            "  kind: pooled\n  capacity: 3\n  kind: dedicated\n"
        ),
        "fleet.yaml: document 2: spec.kind: the key is given twice in one mapping"
    );
    assert_eq!(
        err_with("lat: 53.35", "lat: .nan"),
        "fleet.yaml: document 1: spec.location.lat: NaN is not a finite number"
    );
    assert_eq!(
        err_with("capacity: 50", "capacity: 100000000000000000000"),
        "fleet.yaml: document 2: spec.capacity: 100000000000000000000 is out of range"
    );
    // Within range for YAML but not for the field: the typed error names it.
    let e = err_with("capacity: 50", "capacity: 10000000000");
    assert!(
        e.starts_with("fleet.yaml: document 2: spec.capacity: invalid value"),
        "{e}"
    );
}

#[test]
fn a_release_is_a_manifest_kind_like_the_others() {
    let release = "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {name: \"1.2.0\"}\nspec: {artifact: {command: notes-workload}, migrations: {upTo: 2}}\n";
    let docs = parse(&file(&format!("{GOOD}{release}"))).unwrap();
    assert_eq!(docs.len(), 4);
    match &docs[3].object {
        Object::Release { version, spec } => {
            assert_eq!(version, "1.2.0");
            assert_eq!(spec.artifact.command, "notes-workload");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err(&release.replace("1.2.0", "latest")),
        "fleet.yaml: document 1: metadata.name: \"latest\" is not a semver version (e.g. 2.4.0): unexpected character 'l' while parsing major version number"
    );
}
