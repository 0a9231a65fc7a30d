//! Connection pooling to cells for an nginx edge: one `upstream` block per cell, rendered from the
//! routing table into a file nginx includes, with `keepalive` so nginx reuses its connections to
//! the cells instead of opening one per request.
//!
//! The auth answer names where to proxy in `X-Cell-Upstream` (and `X-Cell-Scheme`), used as
//! `proxy_pass $scheme://$upstream`: the upstream block's name once nginx has loaded it, else the
//! cell's `host:port` (proxied directly, without pooling — a new cell works at once, pooled a
//! moment later). The file changes, and nginx is reloaded, only when the *cells* change (a cell
//! gains its first tenant or loses its last, or its endpoint changes): tenant changes never touch
//! nginx. A reload that fails is retried; until it succeeds, new cells stay direct.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderValue;

use crate::RoutingTable;

/// Settings of the rendering (`--nginx-upstreams` and friends).
#[derive(Debug, Clone)]
pub struct NginxUpstreams {
    /// The file nginx includes (`include …/upstreams*.conf;` inside `http {}`).
    pub file: PathBuf,
    /// Run (with `sh -c`) after the file changed, e.g. `nginx -s reload`.
    pub reload_command: Option<String>,
    /// Idle connections nginx keeps per cell.
    pub keepalive: u32,
    /// How long after a reload new upstream names are used (nginx's workers load the new
    /// configuration shortly after the reload signal returns).
    pub grace: Duration,
}

/// Where one cell is reached: `(scheme, host:port)`.
pub type Address = (String, String);

/// What the nginx answer says for one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub upstream: HeaderValue,
    pub scheme: HeaderValue,
}

/// The upstream block name of `cell` (`cellfleet_` + the cell name with `-` as `_`).
pub fn upstream_name(cell: &str) -> String {
    format!("cellfleet_{}", cell.replace('-', "_"))
}

/// Every cell that serves a route, with its address (cells whose endpoint is not an http(s) URL
/// with a host are left out: they cannot be proxied to).
pub fn cell_addresses(table: &RoutingTable) -> BTreeMap<String, Address> {
    let mut out = BTreeMap::new();
    for route in table.routes() {
        if out.contains_key(route.cell.as_str()) {
            continue;
        }
        if let Some(address) = route.endpoint.as_deref().and_then(address_of) {
            out.insert(route.cell.to_string(), address);
        }
    }
    out
}

/// `cell` at `endpoint` alone, as [`cell_addresses`] would give it.
pub fn cell_addresses_of(cell: &str, endpoint: &str) -> Option<BTreeMap<String, Address>> {
    Some([(cell.to_owned(), address_of(endpoint)?)].into())
}

fn address_of(endpoint: &str) -> Option<Address> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    let scheme = url.scheme();
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    // (An IPv6 host comes bracketed, as nginx wants it.)
    let host = url.host_str()?;
    Some((
        scheme.to_owned(),
        format!("{host}:{}", url.port_or_known_default()?),
    ))
}

/// The upstreams file for `cells`.
pub fn render(cells: &BTreeMap<String, Address>, keepalive: u32, version: i64) -> String {
    let mut out = format!(
        "# Written by cellfleet-router from routing table version {version}: one upstream per\n\
         # cell, so nginx keeps connections to cells open. Do not edit: it is rewritten when cells\n\
         # change.\n"
    );
    for (cell, (_, host_port)) in cells {
        out.push_str(&format!(
            "upstream {} {{\n    server {host_port};\n    keepalive {keepalive};\n}}\n",
            upstream_name(cell)
        ));
    }
    out
}

/// The answer for each cell: its upstream name if nginx has it (`loaded`), else `host:port`.
pub fn targets(
    cells: &BTreeMap<String, Address>,
    loaded: &HashSet<String>,
) -> HashMap<Box<str>, Target> {
    cells
        .iter()
        .filter_map(|(cell, (scheme, host_port))| {
            let upstream = if loaded.contains(cell) {
                upstream_name(cell)
            } else {
                host_port.clone()
            };
            Some((
                cell.as_str().into(),
                Target {
                    upstream: HeaderValue::from_str(&upstream).ok()?,
                    scheme: HeaderValue::from_str(scheme).ok()?,
                },
            ))
        })
        .collect()
}

/// Writes `text` to `path` atomically (a temporary file renamed over it).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs the reload command; `Err` says why it failed.
pub async fn reload(command: &str) -> Result<(), String> {
    let run = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Err(_) => Err(format!("{command:?} did not finish within 30 s")),
        Ok(Err(e)) => Err(format!("cannot run {command:?}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use cellfleet_api::{Generation, RouteEntry, RouteState, RoutesSnapshot};

    fn table(entries: &[(&str, &str, Option<&str>)]) -> RoutingTable {
        RoutingTable::from_snapshot(&RoutesSnapshot {
            epoch: String::new(),
            version: 3,
            entries: entries
                .iter()
                .map(|(t, c, e)| RouteEntry {
                    tenant: t.parse().unwrap(),
                    env: "prod".parse().unwrap(),
                    cell: c.parse().unwrap(),
                    endpoint: e.map(str::to_owned),
                    state: RouteState::Active,
                    generation: Generation(1),
                    requests_per_second: None,
                    version: 1,
                })
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn one_upstream_per_cell_with_an_address() {
        let t = table(&[
            ("acme", "cell-a", Some("http://10.0.0.7:8080")),
            ("globex", "cell-a", Some("http://10.0.0.7:8080")),
            ("initech", "cell-b", Some("https://cell-b.internal")),
            ("hooli", "cell-c", None),
        ]);
        let cells = cell_addresses(&t);
        assert_eq!(
            cells.keys().map(String::as_str).collect::<Vec<_>>(),
            ["cell-a", "cell-b"]
        );
        assert_eq!(
            cells["cell-b"],
            ("https".into(), "cell-b.internal:443".into())
        );
        let text = render(&cells, 16, 3);
        assert!(
            text.contains(
                "upstream cellfleet_cell_a {\n    server 10.0.0.7:8080;\n    keepalive 16;\n}\n"
            ),
            "{text}"
        );
        assert!(text.contains("upstream cellfleet_cell_b {"), "{text}");
        // Tenants moving between existing cells change nothing in the file.
        let moved = table(&[
            ("acme", "cell-b", Some("https://cell-b.internal")),
            ("globex", "cell-a", Some("http://10.0.0.7:8080")),
            ("initech", "cell-b", Some("https://cell-b.internal")),
        ]);
        assert_eq!(render(&cell_addresses(&moved), 16, 3), text);
    }

    #[test]
    fn cells_nginx_has_not_loaded_are_reached_directly() {
        let cells = cell_addresses(&table(&[
            ("acme", "cell-a", Some("http://10.0.0.7:8080")),
            ("globex", "cell-b", Some("http://[::1]:9000")),
        ]));
        let loaded: HashSet<String> = ["cell-a".to_owned()].into();
        let t = targets(&cells, &loaded);
        assert_eq!(t["cell-a"].upstream, "cellfleet_cell_a");
        assert_eq!(t["cell-b"].upstream, "[::1]:9000");
        assert_eq!(t["cell-b"].scheme, "http");
    }
}
