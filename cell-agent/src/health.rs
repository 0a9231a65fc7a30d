//! Workload health from its Prometheus endpoint, over a sliding window (SPEC §7).
//!
//! The agent scrapes `workload_requests_total{tenant,status}` and the
//! `workload_request_duration_seconds{tenant}` histogram on every pass and keeps the samples of
//! the last window. Health is the *increase* of those counters across the window, computed like
//! Prometheus' `increase()`: a counter that goes down (the workload restarted) counts from zero
//! again instead of producing a negative or a huge delta. Percentiles come from the histogram
//! buckets' increases, interpolated linearly inside the bucket. Release-train gates and drift
//! checks read these reports, so a restart must never look like a burst or a recovery.
//!
//! The text format is parsed here for the two metric families the agent reads (samples only;
//! comments and `# EOF` are skipped): a handful of lines, no dependency needed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use cellfleet_api::{Health, ReleaseHealth, TenantHealth};

/// One series key: metric name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// Parses Prometheus/OpenMetrics text into `series → value` (comments skipped).
pub fn parse(text: &str) -> HashMap<Series, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_labels, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (name_labels, Vec::new()),
        };
        out.insert((name.to_owned(), labels), value);
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').trim().to_owned(), value));
        rest = &after[end.min(after.len())..];
    }
    labels.sort();
    labels
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The samples of the last `window`.
#[derive(Debug)]
pub struct Window {
    window: Duration,
    samples: VecDeque<(Instant, HashMap<Series, f64>)>,
}

impl Window {
    pub fn new(window: Duration) -> Self {
        Window {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a scrape taken at `at`, dropping samples older than the window (one older sample is
    /// kept as the window's starting point).
    pub fn push(&mut self, at: Instant, sample: HashMap<Series, f64>) {
        self.samples.push_back((at, sample));
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
    }

    /// `increase()` of every series across the window, resets handled.
    fn increases(&self) -> HashMap<&Series, f64> {
        let mut out: HashMap<&Series, f64> = HashMap::new();
        for pair in self.samples.iter().collect::<Vec<_>>().windows(2) {
            let (prev, next) = (&pair[0].1, &pair[1].1);
            for (series, v) in next {
                let before = prev.get(series).copied().unwrap_or(0.0);
                // Went down: the process restarted and counts from zero.
                let delta = if *v >= before { v - before } else { *v };
                *out.entry(series).or_default() += delta;
            }
        }
        out
    }

    /// Tenant traffic since the workload process started (the latest scrape's counters, which
    /// a new process starts from zero), leaving out `exclude` (the synthetic probe tenant).
    pub fn since_start(&self, release: &str, exclude: Option<&str>) -> Option<ReleaseHealth> {
        let (_, sample) = self.samples.back()?;
        let mut out = ReleaseHealth {
            release: release.to_owned(),
            ..Default::default()
        };
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
        for ((name, labels), v) in sample {
            let Some(tenant) = label(labels, "tenant") else {
                continue;
            };
            // Only tenants' own traffic: not the probes, not refusals of requests for tenants
            // the cell does not serve (one series under a label that is no tenant id, which a
            // new process answers until its agent hands it the tenant set).
            if Some(tenant) == exclude || cellfleet_api::ids::validate_dns_label(tenant).is_err() {
                continue;
            }
            match name.as_str() {
                "workload_requests_total" => {
                    let n = v.max(0.0).round() as u64;
                    let error = label(labels, "status").is_some_and(|s| s.starts_with('5'));
                    out.requests += n;
                    let entry = out
                        .tenants
                        .entry(tenant.chars().take(63).collect())
                        .or_default();
                    entry.0 += n;
                    if error {
                        out.errors += n;
                        entry.1 += n;
                    }
                }
                "workload_request_duration_seconds_bucket" => {
                    if let Some(le) = label(labels, "le").and_then(|le| le.parse::<f64>().ok()) {
                        *buckets.entry(le.to_bits()).or_default() += v;
                    }
                }
                _ => {}
            }
        }
        // The busiest tenants are enough for burn per tenant; keep the report bounded.
        if out.tenants.len() > 100 {
            let mut v: Vec<(String, (u64, u64))> =
                std::mem::take(&mut out.tenants).into_iter().collect();
            v.sort_by_key(|t| std::cmp::Reverse(t.1.0));
            out.tenants = v.into_iter().take(100).collect();
        }
        out.latency_p99_ms = quantile(&buckets, 0.99);
        Some(out)
    }

    /// Health over the window; `None` before there are two samples.
    #[cfg(test)]
    pub fn health(&self) -> Option<Health> {
        self.health_excluding(None)
    }

    /// Health over the window without `exclude`'s traffic (the synthetic probe tenant).
    pub fn health_excluding(&self, exclude: Option<&str>) -> Option<Health> {
        if self.samples.len() < 2 {
            return None;
        }
        let span = self
            .samples
            .back()?
            .0
            .duration_since(self.samples.front()?.0);
        let inc = self.increases();
        // Per tenant: requests, errors, histogram bucket increases.
        let mut tenants: BTreeMap<&str, (f64, f64, BTreeMap<u64, f64>)> = BTreeMap::new();
        for ((name, labels), v) in &inc {
            let Some(tenant) = label(labels, "tenant") else {
                continue;
            };
            if Some(tenant) == exclude {
                continue;
            }
            let entry = tenants.entry(tenant).or_default();
            match name.as_str() {
                "workload_requests_total" => {
                    entry.0 += v;
                    if label(labels, "status").is_some_and(|s| s.starts_with('5')) {
                        entry.1 += v;
                    }
                }
                "workload_request_duration_seconds_bucket" => {
                    if let Some(le) = label(labels, "le").and_then(|le| le.parse::<f64>().ok()) {
                        *entry.2.entry(le.to_bits()).or_default() += v;
                    }
                }
                _ => {}
            }
        }
        let mut all_buckets: BTreeMap<u64, f64> = BTreeMap::new();
        let (mut requests, mut errors) = (0.0, 0.0);
        let mut busiest: Vec<TenantHealth> = Vec::new();
        for (tenant, (r, e, buckets)) in &tenants {
            requests += r;
            errors += e;
            for (le, c) in buckets {
                *all_buckets.entry(*le).or_default() += c;
            }
            busiest.push(TenantHealth {
                tenant: (*tenant).to_owned(),
                requests: r.round() as u64,
                errors: e.round() as u64,
                latency_p50_ms: quantile(buckets, 0.50),
                latency_p99_ms: quantile(buckets, 0.99),
            });
        }
        busiest.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        busiest.retain(|t| t.requests > 0);
        busiest.truncate(5);
        Some(Health {
            window_seconds: span.as_secs().try_into().unwrap_or(u32::MAX),
            requests: requests.round() as u64,
            errors: errors.round() as u64,
            latency_p50_ms: quantile(&all_buckets, 0.50),
            latency_p99_ms: quantile(&all_buckets, 0.99),
            busiest,
        })
    }
}

/// The `q` quantile in milliseconds from cumulative bucket counts keyed by the bits of their
/// upper bound (`+Inf` included), interpolating linearly within the bucket.
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let mut bounds: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(b, c)| (f64::from_bits(*b), *c))
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = bounds.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (upper, cumulative) in bounds {
        if cumulative >= rank {
            if upper.is_infinite() {
                return Some(lower * 1e3);
            }
            let in_bucket = cumulative - below;
            let fraction = if in_bucket > 0.0 {
                (rank - below) / in_bucket
            } else {
                1.0
            };
            return Some((lower + (upper - lower) * fraction) * 1e3);
        }
        lower = upper;
        below = cumulative;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A scrape with `requests` per (tenant, status) and latencies all in one bucket.
    fn scrape(requests: &[(&str, u16, u64)], bucket_le: &str) -> String {
        let mut out = String::from("# TYPE workload_requests counter\n");
        for (tenant, status, n) in requests {
            out.push_str(&format!(
                "workload_requests_total{{tenant=\"{tenant}\",status=\"{status}\"}} {n}\n"
            ));
        }
        for (tenant, _, _) in requests.iter().filter(|r| r.1 == 200) {
            let n: u64 = requests
                .iter()
                .filter(|r| r.0 == *tenant)
                .map(|r| r.2)
                .sum();
            for le in ["0.001", "0.01", "0.1", "+Inf"] {
                let c = if le.parse::<f64>().unwrap() >= bucket_le.parse::<f64>().unwrap() {
                    n
                } else {
                    0
                };
                out.push_str(&format!("workload_request_duration_seconds_bucket{{le=\"{le}\",tenant=\"{tenant}\"}} {c}\n"));
            }
        }
        out.push_str("# EOF\n");
        out
    }

    #[test]
    fn parses_samples_and_skips_comments() {
        let s = parse("# HELP x\nfoo_total{a=\"1\",b=\"x\\\"y\"} 3\nbar 4.5\n# EOF\n");
        assert_eq!(
            s[&(
                "foo_total".to_owned(),
                vec![("a".into(), "1".into()), ("b".into(), "x\"y".into())]
            )],
            3.0
        );
        assert_eq!(s[&("bar".to_owned(), vec![])], 4.5);
    }

    #[test]
    fn increases_across_the_window_with_errors_and_busiest_tenants() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(60));
        w.push(
            t0,
            parse(&scrape(&[("acme", 200, 10), ("globex", 200, 5)], "0.01")),
        );
        assert!(w.health().is_none(), "one sample is not a window");
        w.push(
            t0 + Duration::from_secs(10),
            parse(&scrape(
                &[("acme", 200, 40), ("acme", 500, 10), ("globex", 200, 6)],
                "0.01",
            )),
        );
        let h = w.health().unwrap();
        assert_eq!((h.requests, h.errors, h.window_seconds), (41, 10, 10));
        assert_eq!(h.busiest[0].tenant, "acme");
        assert_eq!((h.busiest[0].requests, h.busiest[0].errors), (40, 10));
        // All latencies fall in the (1 ms, 10 ms] bucket.
        let p99 = h.latency_p99_ms.unwrap();
        assert!(p99 > 1.0 && p99 <= 10.0, "{p99}");
    }

    #[test]
    fn a_restart_is_not_a_burst_or_a_recovery() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(60));
        w.push(t0, parse(&scrape(&[("acme", 200, 1000)], "0.01")));
        w.push(
            t0 + Duration::from_secs(5),
            parse(&scrape(&[("acme", 200, 1010)], "0.01")),
        );
        // The workload restarted: counters start again from zero.
        w.push(
            t0 + Duration::from_secs(10),
            parse(&scrape(&[("acme", 200, 3)], "0.01")),
        );
        let h = w.health().unwrap();
        assert_eq!(
            h.requests, 13,
            "10 before the restart + 3 after, not -1007 or 1013"
        );
    }

    #[test]
    fn since_start_counts_the_process_and_leaves_probes_out() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(60));
        w.push(
            t0,
            parse(&scrape(
                &[
                    ("acme", 200, 90),
                    ("acme", 503, 10),
                    ("cellfleet-probe", 200, 40),
                ],
                "0.01",
            )),
        );
        let h = w.since_start("2.0.0", Some("cellfleet-probe")).unwrap();
        assert_eq!((h.requests, h.errors), (100, 10));
        assert_eq!(h.tenants["acme"], (100, 10));
        assert!(!h.tenants.contains_key("cellfleet-probe"));
        assert_eq!(h.release, "2.0.0");
        w.push(
            t0 + Duration::from_secs(5),
            parse(&scrape(
                &[("acme", 200, 95), ("cellfleet-probe", 200, 50)],
                "0.01",
            )),
        );
        let windowed = w.health_excluding(Some("cellfleet-probe")).unwrap();
        assert_eq!(windowed.requests, 5, "only acme's increase");
    }

    #[test]
    fn old_samples_leave_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(30));
        for i in 0..10u64 {
            w.push(
                t0 + Duration::from_secs(i * 10),
                parse(&scrape(&[("acme", 200, i * 100)], "0.001")),
            );
        }
        let h = w.health().unwrap();
        assert!(
            h.window_seconds <= 40 && h.window_seconds >= 30,
            "{}",
            h.window_seconds
        );
        assert_eq!(h.requests, h.window_seconds as u64 * 10);
    }
}
