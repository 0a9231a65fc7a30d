//! Every binary's `/metrics` passes Prometheus' own linter, `promtool check metrics` (Debian's
//! `prometheus` package; `.ci/run` installs it): the control plane's, `cellfleet-router`'s and the
//! example workload's, each after serving some traffic. A client that asks for OpenMetrics gets
//! OpenMetrics (`# EOF` at the end); every other client, the classic text format.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cellfleet_e2e::{LocalFleet, eventually, http_request};

fn promtool() -> PathBuf {
    let path = PathBuf::from("/usr/bin/promtool");
    assert!(
        path.exists(),
        "promtool is missing: apt-get install prometheus (the package ships it; .ci/run installs it)"
    );
    path
}

/// `promtool check metrics` on `text`: its exit code and what it said.
fn check(text: &str) -> (i32, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).unwrap_or_default();
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `/metrics` of `base` with `headers`: `(content type, body)`.
fn scrape(base: &str, headers: &[(&str, &str)]) -> (String, String) {
    let (status, head, body) = http_request(base, "GET", "/metrics", headers, "")
        .unwrap_or_else(|e| panic!("{base}/metrics: {e}"));
    assert_eq!(status, 200, "{base}/metrics: {body}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (content_type, body)
}

/// A binary's name, base URL and the headers its `/metrics` needs.
type Target<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_passes_promtool_and_negotiates_openmetrics() {
    let fleet = LocalFleet::start(&[("cell-a", 5)]).await;
    fleet.apply_tenants(&[("acme", "")]);
    let router = fleet.start_router();
    eventually(Duration::from_secs(30), "the router serves acme", || {
        http_request(&router.url, "GET", "/route/acme", &[], "").is_ok_and(|(s, _, _)| s == 200)
    });
    let endpoint = fleet.endpoint_of("cell-a");
    // Some traffic everywhere, so every family has samples.
    for _ in 0..3 {
        http_request(
            &endpoint,
            "POST",
            "/v1/notes",
            &[("X-Tenant-Id", "acme")],
            "{\"body\": \"x\"}",
        )
        .ok();
        http_request(&router.url, "GET", "/route/nobody", &[], "").ok();
    }
    fleet.run(&["tenant", "list"]).ok();
    let admin = std::fs::read_to_string(&fleet.admin).unwrap_or_default();
    let bearer = format!("Bearer {}", admin.trim());
    let targets: Vec<Target> = vec![
        (
            "control plane",
            fleet.url().to_owned(),
            vec![("Authorization", bearer.as_str())],
        ),
        ("cellfleet-router", router.url.clone(), vec![]),
        ("notes-workload", endpoint.clone(), vec![]),
    ];
    for (name, base, auth) in &targets {
        let (content_type, text) = scrape(base, auth);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{name}: {content_type}"
        );
        assert!(!text.contains("# EOF"), "{name}: classic text has no EOF");
        let (code, said) = check(&text);
        assert_eq!(
            code, 0,
            "{name}: promtool check metrics said:\n{said}\n--- the text:\n{text}"
        );
        let mut asking = auth.clone();
        asking.push((
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        let (content_type, om) = scrape(base, &asking);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{name}: {content_type}"
        );
        assert!(
            om.trim_end().ends_with("# EOF"),
            "{name}: OpenMetrics ends with # EOF"
        );
        eprintln!("{name}: {} lines pass promtool", text.lines().count());
    }
}
