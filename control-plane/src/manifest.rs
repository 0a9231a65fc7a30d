//! Declarative manifests: multi-document YAML of kinds `Region`, `Cell`, `Tenant` and `Release`.
//!
//! Parsing is pure and all-or-nothing: every document of every file is parsed and validated
//! before anything is applied, and the first problem is reported with its file, 1-based document
//! index and field path (`fleet.yaml: document 2: spec.capacity: must be at least 1`). Checks that
//! need the registry (does the region exist?) happen in `service::apply`, which reports them the
//! same way through [`ManifestError`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cellfleet_api::{
    API_VERSION, CellKind, CellName, CellSpec, ManifestFile, RegionName, RegionSpec, TenantId,
    TenantSpec,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::strict_yaml::YamlError;

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    /// 1-based index of the document within its file.
    pub document: usize,
}

/// A manifest problem, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ManifestError {
    pub file: String,
    pub document: usize,
    /// Dotted field path (`spec.residency.allowedRegions[1]`), empty for the whole document.
    pub path: String,
    pub message: String,
}

impl Origin {
    pub fn error(&self, path: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.clone(),
            document: self.document,
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Region {
        name: RegionName,
        spec: RegionSpec,
    },
    Cell {
        name: CellName,
        labels: BTreeMap<String, String>,
        spec: CellSpec,
    },
    Tenant {
        name: TenantId,
        spec: TenantSpec,
    },
    /// An immutable application version (`metadata.name` is its semver version).
    Release {
        version: String,
        spec: cellfleet_api::ReleaseSpec,
    },
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Region { .. } => "Region",
            Object::Cell { .. } => "Cell",
            Object::Tenant { .. } => "Tenant",
            Object::Release { .. } => "Release",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Object::Region { name, .. } => name.as_str(),
            Object::Cell { name, .. } => name.as_str(),
            Object::Tenant { name, .. } => name.as_str(),
            Object::Release { version, .. } => version,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub origin: Origin,
    pub object: Object,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Parses and validates every document of every file. Empty documents (a trailing `---`) are
/// skipped.
pub fn parse(files: &[ManifestFile]) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    let mut seen: HashMap<(&'static str, String), Origin> = HashMap::new();
    for file in files {
        for (i, de) in yaml_serde::Deserializer::from_str(&file.content).enumerate() {
            let origin = Origin {
                file: file.name.clone(),
                document: i + 1,
            };
            let value = read_document(&origin, de)?;
            if value.is_null() {
                continue;
            }
            let object = parse_document(&origin, value)?;
            let key = (object.kind(), object.name().to_owned());
            if let Some(first) = seen.get(&key) {
                return Err(origin.error(
                    "metadata.name",
                    format!(
                        "{} {} is declared twice (first in {} document {})",
                        key.0, key.1, first.file, first.document
                    ),
                ));
            }
            seen.insert(key, origin.clone());
            docs.push(Document { origin, object });
        }
    }
    Ok(docs)
}

/// One YAML document as JSON, refusing duplicate keys and numbers no field can hold (see
/// [`crate::strict_yaml`]).
fn read_document(
    origin: &Origin,
    document: yaml_serde::Deserializer<'_>,
) -> Result<serde_json::Value, ManifestError> {
    crate::strict_yaml::to_json(document).map_err(|e| match e {
        YamlError::Field { path, message } => origin.error(path, message),
        YamlError::Syntax(e) => origin.error("", format!("not valid YAML: {e}")),
    })
}

/// Deserializes `value` into `T`, reporting the failing field under `prefix`.
fn typed<T: DeserializeOwned>(
    origin: &Origin,
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (p, ".") => p.to_owned(),
            ("", i) => i.to_owned(),
            (p, i) => format!("{p}.{i}"),
        };
        origin.error(path, e.into_inner().to_string())
    })
}

/// The envelope every document shares (`apiVersion`, `kind`, `metadata`, `spec`), checked.
fn envelope(origin: &Origin, value: serde_json::Value) -> Result<Envelope, ManifestError> {
    if !value.is_object() {
        return Err(origin.error(
            "",
            "a manifest document must be a mapping with apiVersion, kind, metadata and spec",
        ));
    }
    let envelope: Envelope = typed(origin, "", value)?;
    if envelope.api_version != API_VERSION {
        return Err(origin.error(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?} (expected {API_VERSION})",
                envelope.api_version
            ),
        ));
    }
    Ok(envelope)
}

fn parse_document(origin: &Origin, value: serde_json::Value) -> Result<Object, ManifestError> {
    let envelope = envelope(origin, value)?;
    let labels = envelope.metadata.labels;
    if labels.is_some() && envelope.kind != "Cell" {
        return Err(origin.error("metadata.labels", "labels are only supported on Cell"));
    }
    let name = envelope.metadata.name;
    let name_error = |e: cellfleet_api::IdError| {
        origin.error("metadata.name", format!("invalid name {name:?}: {e}"))
    };
    match envelope.kind.as_str() {
        "Region" => {
            let spec: RegionSpec = typed(origin, "spec", envelope.spec)?;
            validate_region(origin, &spec)?;
            Ok(Object::Region {
                name: RegionName::new(name.clone()).map_err(name_error)?,
                spec,
            })
        }
        "Cell" => {
            let spec: CellSpec = typed(origin, "spec", envelope.spec)?;
            let labels = labels.unwrap_or_default();
            validate_cell(origin, &spec, &labels)?;
            Ok(Object::Cell {
                name: CellName::new(name.clone()).map_err(name_error)?,
                labels,
                spec,
            })
        }
        "Tenant" => {
            let spec: TenantSpec = typed(origin, "spec", envelope.spec)?;
            validate_tenant(origin, &spec)?;
            Ok(Object::Tenant {
                name: TenantId::new(name.clone()).map_err(name_error)?,
                spec,
            })
        }
        "Release" => {
            let (version, spec) = release(origin, name, envelope.spec)?;
            Ok(Object::Release { version, spec })
        }
        other => Err(origin.error(
            "kind",
            format!("unknown kind {other:?} (expected Region, Cell, Tenant or Release)"),
        )),
    }
}

/// Parses a release file: one document of kind `Release` whose `metadata.name` is the
/// release's semver version.
pub fn parse_release(
    file: &ManifestFile,
) -> Result<(String, cellfleet_api::ReleaseSpec), ManifestError> {
    let (origin, envelope) = single_document(file, "Release", "a release file")?;
    if envelope.metadata.labels.is_some() {
        return Err(origin.error("metadata.labels", "labels are only supported on Cell"));
    }
    release(&origin, envelope.metadata.name, envelope.spec)
}

/// The one document of a file that must hold exactly one, of `kind` (`what` names the file in
/// errors: "a release file").
fn single_document(
    file: &ManifestFile,
    kind: &str,
    what: &str,
) -> Result<(Origin, Envelope), ManifestError> {
    let origin = Origin {
        file: file.name.clone(),
        document: 1,
    };
    let mut docs = yaml_serde::Deserializer::from_str(&file.content);
    let value = match docs.next() {
        Some(de) => read_document(&origin, de)?,
        None => serde_json::Value::Null,
    };
    if docs.next().is_some() {
        return Err(origin.error("", format!("{what} holds exactly one document")));
    }
    let envelope = envelope(&origin, value)?;
    if envelope.kind != kind {
        return Err(origin.error(
            "kind",
            format!("expected kind {kind}, got {:?}", envelope.kind),
        ));
    }
    Ok((origin, envelope))
}

/// A `Release` document's version and spec, checked.
fn release(
    origin: &Origin,
    version: String,
    spec: serde_json::Value,
) -> Result<(String, cellfleet_api::ReleaseSpec), ManifestError> {
    if let Err(e) = semver::Version::parse(&version) {
        return Err(origin.error(
            "metadata.name",
            format!("{version:?} is not a semver version (e.g. 2.4.0): {e}"),
        ));
    }
    if version.len() > MAX_RELEASE_VERSION {
        return Err(origin.error(
            "metadata.name",
            format!("a release version is at most {MAX_RELEASE_VERSION} characters"),
        ));
    }
    let spec: cellfleet_api::ReleaseSpec = typed(origin, "spec", spec)?;
    if spec.artifact.command.trim().is_empty() {
        return Err(origin.error("spec.artifact.command", "must not be empty"));
    }
    if let Some(m) = &spec.migrations
        && m.up_to < 0
    {
        return Err(origin.error(
            "spec.migrations.upTo",
            "must be a migration version (0 for none)",
        ));
    }
    Ok((version, spec))
}

/// Longest release version accepted (agents report it back, and reports are bounded).
pub const MAX_RELEASE_VERSION: usize = 64;

fn is_short_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn validate_region(origin: &Origin, spec: &RegionSpec) -> Result<(), ManifestError> {
    if !is_short_token(&spec.jurisdiction) {
        return Err(origin.error(
            "spec.jurisdiction",
            "must be 1–32 lowercase letters, digits or '-' (e.g. eu, us)",
        ));
    }
    if !(-90.0..=90.0).contains(&spec.location.lat) {
        return Err(origin.error(
            "spec.location.lat",
            format!("{} is not a latitude (-90 to 90)", spec.location.lat),
        ));
    }
    if !(-180.0..=180.0).contains(&spec.location.lon) {
        return Err(origin.error(
            "spec.location.lon",
            format!("{} is not a longitude (-180 to 180)", spec.location.lon),
        ));
    }
    Ok(())
}

/// Longest change window accepted: a window that never closes is not a window.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn validate_cell(
    origin: &Origin,
    spec: &CellSpec,
    labels: &BTreeMap<String, String>,
) -> Result<(), ManifestError> {
    match (spec.kind, spec.capacity) {
        (_, Some(0)) => return Err(origin.error("spec.capacity", "must be at least 1")),
        (CellKind::Pooled, Some(c)) if c > 100_000 => {
            return Err(origin.error(
                "spec.capacity",
                format!("{c} is more than the 100000 a cell may hold"),
            ));
        }
        (CellKind::Dedicated, Some(c)) if c != 1 => {
            return Err(origin.error(
                "spec.capacity",
                format!(
                    "a dedicated cell holds exactly one tenant (got {c}; omit capacity or set 1)"
                ),
            ));
        }
        _ => {}
    }
    if let Some(t) = &spec.template
        && cellfleet_api::ids::validate_dns_label(t).is_err()
    {
        return Err(origin.error("spec.template", format!("invalid template name {t:?}")));
    }
    if let Some(endpoint) = &spec.endpoint {
        match reqwest::Url::parse(endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return Err(origin.error(
                    "spec.endpoint",
                    format!("{endpoint:?} must be an http(s) URL with a host"),
                ));
            }
            Err(e) => {
                return Err(
                    origin.error("spec.endpoint", format!("{endpoint:?} is not a URL: {e}"))
                );
            }
        }
    }
    if let Some(w) = &spec.change_window {
        if let Err(e) = w.schedule.parse::<cron::Schedule>() {
            return Err(origin.error(
                "spec.changeWindow.schedule",
                format!(
                    "{:?} is not a cron schedule (sec min hour day month weekday): {e}",
                    w.schedule
                ),
            ));
        }
        match humantime::parse_duration(&w.duration) {
            Ok(d) if d.is_zero() || d > MAX_WINDOW => {
                return Err(origin.error(
                    "spec.changeWindow.duration",
                    "must be more than 0 and at most 7 days",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(origin.error(
                    "spec.changeWindow.duration",
                    format!("{:?} is not a duration (e.g. 4h, 90m): {e}", w.duration),
                ));
            }
        }
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(origin.error(
                format!("metadata.labels.{k}"),
                "label keys are 1–63 of [A-Za-z0-9-_./]",
            ));
        }
        if v.len() > 63 {
            return Err(origin.error(
                format!("metadata.labels.{k}"),
                "label values are at most 63 characters",
            ));
        }
    }
    Ok(())
}

pub fn validate_tenant(origin: &Origin, spec: &TenantSpec) -> Result<(), ManifestError> {
    for (i, o) in spec.owners.iter().enumerate() {
        if o.is_empty() || o.len() > 254 || o.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(origin.error(
                format!("spec.owners[{i}]"),
                format!("{o:?} is not an address (1–254 characters, no spaces)"),
            ));
        }
    }
    let display = spec.display_name.trim();
    if display.is_empty() || display.chars().count() > 200 {
        return Err(origin.error("spec.displayName", "must be 1–200 characters"));
    }
    let r = &spec.residency;
    if r.allowed_regions.is_none() && r.jurisdiction.is_none() {
        return Err(origin.error(
            "spec.residency",
            "must name allowedRegions or a jurisdiction",
        ));
    }
    if let Some(list) = &r.allowed_regions {
        if list.is_empty() {
            return Err(origin.error(
                "spec.residency.allowedRegions",
                "must list at least one region",
            ));
        }
        for (i, region) in list.iter().enumerate() {
            if list[..i].contains(region) {
                return Err(origin.error(
                    format!("spec.residency.allowedRegions[{i}]"),
                    format!("{region} is listed twice"),
                ));
            }
        }
    }
    if let Some(j) = &r.jurisdiction
        && !is_short_token(j)
    {
        return Err(origin.error(
            "spec.residency.jurisdiction",
            "must be 1–32 lowercase letters, digits or '-'",
        ));
    }
    if spec.environments.is_empty() {
        return Err(origin.error("spec.environments", "must list at least one environment"));
    }
    for (i, env) in spec.environments.iter().enumerate() {
        if spec.environments[..i].contains(env) {
            return Err(origin.error(
                format!("spec.environments[{i}]"),
                format!("{env} is listed twice"),
            ));
        }
    }
    if spec.quotas.requests_per_second == Some(0) {
        return Err(origin.error("spec.quotas.requestsPerSecond", "must be at least 1"));
    }
    if let Some(slo) = &spec.slo {
        if let Some(a) = slo.availability
            && !(a > 0.0 && a <= 100.0)
        {
            return Err(origin.error(
                "spec.slo.availability",
                format!("{a} is not a percentage in (0, 100]"),
            ));
        }
        if slo.latency_p99_ms == Some(0) {
            return Err(origin.error("spec.slo.latencyP99Ms", "must be at least 1"));
        }
    }
    for key in spec.flags.keys() {
        if key.is_empty() || key.len() > 100 {
            return Err(origin.error(
                "spec.flags",
                format!("flag name {key:?} must be 1–100 characters"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;

/// Parses a release-train policy file (`kind: TrainPolicy`, one document): every field is
/// required, errors name the file and the field path.
pub fn parse_train_policy(
    file: &ManifestFile,
) -> Result<cellfleet_api::TrainPolicy, ManifestError> {
    let (origin, envelope) = single_document(file, "TrainPolicy", "a policy file")?;
    let policy: cellfleet_api::TrainPolicy = typed(&origin, "spec", envelope.spec)?;
    crate::trains::validate_policy(&policy)
        .map_err(|(path, message)| origin.error(path, message))?;
    Ok(policy)
}

/// A `kind: Runbook` file: its name and spec, checked (the error names file, document and path).
pub fn parse_runbook(
    file: &ManifestFile,
) -> Result<(String, cellfleet_api::RunbookSpec), ManifestError> {
    let (origin, envelope) = single_document(file, "Runbook", "a runbook file")?;
    let name = envelope.metadata.name;
    if name.parse::<CellName>().is_err() {
        return Err(origin.error(
            "metadata.name",
            format!(
                "{name:?} is not a runbook name (a DNS label: lower-case letters, digits and -)"
            ),
        ));
    }
    let spec: cellfleet_api::RunbookSpec = typed(&origin, "spec", envelope.spec)?;
    crate::runbooks::validate(&spec).map_err(|(path, message)| origin.error(path, message))?;
    Ok((name, spec))
}
