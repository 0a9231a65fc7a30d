//! Metrics exposition, negotiated: every binary's `/metrics` is built as OpenMetrics text (what
//! `prometheus-client` writes) and served as such to a client that asks for it in `Accept`
//! (Prometheus does), and in the classic text format (0.0.4) to every other client — `curl`,
//! `promtool check metrics`, older scrapers. The two differ only in their metadata: OpenMetrics
//! names a counter family without `_total` and an info family without `_info`, has `# UNIT`
//! lines, exemplars, and ends with `# EOF`.

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format's content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (at a weight above zero).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut fields = part.split(';').map(str::trim);
            let media = fields.next().unwrap_or_default();
            let refused = fields.any(|f| {
                f.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// The content type and body for a client whose `Accept` is `accept`.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics)
    } else {
        (TEXT, to_classic_text(&openmetrics))
    }
}

/// OpenMetrics text as the classic text format: counter families named with `_total`, info
/// families as gauges named with `_info`, unknown ones untyped; `# UNIT`, exemplars and `# EOF`
/// left out. Samples are the same in both.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name, kind.trim());
        }
    }
    let family = |name: &str| -> (String, &str) {
        match types.get(name).copied() {
            Some("counter") if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
            Some("info") => (format!("{name}_info"), "gauge"),
            Some("unknown" | "stateset") | None => (name.to_owned(), "untyped"),
            Some("gaugehistogram") => (name.to_owned(), "histogram"),
            Some(kind) => (name.to_owned(), kind),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", family(name).0));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            let (name, kind) = family(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            continue;
        } else {
            // An exemplar follows ` # ` after the value; the classic format has none.
            let sample = match line.find(" # ") {
                Some(i) => &line[..i],
                None => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP http_requests HTTP requests.\n# TYPE http_requests counter\nhttp_requests_total{route=\"/\"} 3 # {trace=\"a\"} 1.0\n# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 1\nlat_sum 0.5\nlat_count 1\n# EOF\n";

    #[test]
    fn classic_text_names_families_as_their_samples() {
        let text = to_classic_text(OM);
        assert_eq!(
            text,
            "# HELP http_requests_total HTTP requests.\n# TYPE http_requests_total counter\nhttp_requests_total{route=\"/\"} 3\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n# HELP up Up.\n# TYPE up gauge\nup 1\n# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 1\nlat_sum 0.5\nlat_count 1\n"
        );
    }

    #[test]
    fn accept_decides() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(None));
        assert_eq!(negotiate(None, OM.into()).0, TEXT);
        assert_eq!(
            negotiate(Some("application/openmetrics-text"), OM.into()),
            (OPENMETRICS, OM.to_owned())
        );
    }
}
