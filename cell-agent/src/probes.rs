//! Synthetic probes (SPEC §8): while a release train bakes this cell, the desired state carries
//! a probe (path, rate, synthetic tenant) and the agent sends GETs at that rate to its own
//! workload as that tenant, so an empty canary still gives gates a signal. Results are counted
//! per release (since that release started being probed) and reported apart from tenant
//! traffic (`AgentReport::probes`); the synthetic tenant is left out of the tenant health.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellfleet_api::ProbeStats;

use crate::agent::Shared;

/// Latencies kept for the p99 (the most recent ones).
const KEPT: usize = 2000;

/// Probe results of the release being probed.
#[derive(Debug, Default)]
pub struct Probes {
    stats: Option<ProbeStats>,
    latencies: VecDeque<f64>,
}

impl Probes {
    /// Counts one probe of `release`; a new release starts the count again.
    pub fn record(&mut self, release: &str, ok: bool, latency_ms: f64) {
        if self.stats.as_ref().is_none_or(|s| s.release != release) {
            self.stats = Some(ProbeStats {
                release: release.to_owned(),
                ..Default::default()
            });
            self.latencies.clear();
        }
        if let Some(s) = &mut self.stats {
            s.requests += 1;
            if !ok {
                s.errors += 1;
            }
        }
        self.latencies.push_back(latency_ms);
        if self.latencies.len() > KEPT {
            self.latencies.pop_front();
        }
    }

    /// What to report for `release` (nothing for another one).
    pub fn snapshot(&self, release: Option<&str>) -> Option<ProbeStats> {
        let s = self
            .stats
            .as_ref()
            .filter(|s| Some(s.release.as_str()) == release)?;
        let mut sorted: Vec<f64> = self.latencies.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let p99 = (!sorted.is_empty()).then(|| {
            let i = ((sorted.len() as f64) * 0.99).ceil() as usize;
            sorted[i.saturating_sub(1).min(sorted.len() - 1)]
        });
        Some(ProbeStats {
            latency_p99_ms: p99,
            ..s.clone()
        })
    }
}

/// Sends probes while the desired state asks for them.
pub async fn run(shared: Arc<Shared>, probes: Arc<Mutex<Probes>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut desired = shared.desired.subscribe();
    loop {
        let probe = desired
            .borrow_and_update()
            .as_ref()
            .and_then(|d| d.probe.clone());
        let Some(probe) = probe else {
            // Nothing to probe: wait for the desired state to change.
            if desired.changed().await.is_err() {
                return;
            }
            continue;
        };
        let status = shared.status.borrow().clone();
        let pause = Duration::from_secs_f64(1.0 / probe.rate_per_second.clamp(0.01, 100.0));
        if let (Some(release), Some(endpoint)) = (&status.release, &status.endpoint) {
            let url = format!("{}{}", endpoint.trim_end_matches('/'), probe.path);
            let started = Instant::now();
            let ok = match client
                .get(&url)
                .header("x-tenant-id", probe.tenant.as_str())
                .header("x-cellfleet-probe", "1")
                .send()
                .await
            {
                Ok(r) => !r.status().is_server_error(),
                Err(e) => {
                    tracing::debug!(error = %e, %url, "probe failed");
                    false
                }
            };
            let ms = started.elapsed().as_secs_f64() * 1e3;
            probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(release, ok, ms);
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = desired.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_per_release_with_a_p99() {
        let mut p = Probes::default();
        for i in 0..100 {
            p.record("1.0.0", i % 10 != 0, f64::from(i));
        }
        let s = p.snapshot(Some("1.0.0")).unwrap();
        assert_eq!((s.requests, s.errors), (100, 10));
        assert_eq!(s.latency_p99_ms, Some(98.0));
        assert_eq!(
            p.snapshot(Some("2.0.0")),
            None,
            "numbers of another release are not reported"
        );
        p.record("2.0.0", true, 1.0);
        let s = p.snapshot(Some("2.0.0")).unwrap();
        assert_eq!(
            (s.requests, s.errors),
            (1, 0),
            "a new release counts from zero"
        );
    }
}
