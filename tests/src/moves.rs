//! What the move tests need besides a fleet: a client that keeps writing through the edge and
//! remembers every acknowledged write, a probe that catches two cells serving one tenant at once,
//! a TCP forwarder that can cut a router off from the control plane, and the fleet invariants
//! every move test checks at its end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{LocalFleet, eventually, header_of, http_request};

/// A client writing notes for one tenant through an edge, one request at a time, until stopped.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Written>>,
}

/// What a [`Writer`] saw.
#[derive(Debug, Default, Clone)]
pub struct Written {
    /// The id of every note the edge acknowledged (201), in order.
    pub acked: Vec<i64>,
    /// Every other answer: `(status, reason, body)`.
    pub failed: Vec<(u16, Option<String>, String)>,
    /// The cells that served the acknowledged writes, in order of first appearance.
    pub served_by: Vec<String>,
    /// The slowest acknowledged write.
    pub slowest: Duration,
    /// When each of `failed` was sent, and how long its answer took (same order).
    pub failed_at: Vec<(std::time::SystemTime, Duration)>,
}

impl Writer {
    /// Writes back to back.
    pub fn start(edge: &str, tenant: &str) -> Writer {
        Self::paced(edge, tenant, Duration::ZERO)
    }

    /// Writes with `pause` between writes (a steady trickle rather than a flood).
    pub fn paced(edge: &str, tenant: &str, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (edge, tenant, flag) = (edge.to_owned(), tenant.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut out = Written::default();
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                let body = format!("{{\"body\": \"w{n}\"}}");
                let started = Instant::now();
                let sent = std::time::SystemTime::now();
                let failures = out.failed.len();
                let answer = http_request(
                    &edge,
                    "POST",
                    "/v1/notes",
                    &[("X-Tenant-Id", tenant.as_str())],
                    &body,
                );
                match answer {
                    Ok((201, head, text)) => {
                        out.slowest = out.slowest.max(started.elapsed());
                        let id = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| v["id"].as_i64());
                        match id {
                            Some(id) => out.acked.push(id),
                            None => out.failed.push((201, None, text)),
                        }
                        if let Some(cell) = header_of(&head, "x-served-by")
                            && !out.served_by.iter().any(|c| c == cell)
                        {
                            out.served_by.push(cell.to_owned());
                        }
                    }
                    Ok((status, head, text)) => out.failed.push((
                        status,
                        header_of(&head, "x-cellfleet-reason").map(str::to_owned),
                        text,
                    )),
                    Err(e) => out.failed.push((0, None, e.to_string())),
                }
                if out.failed.len() > failures {
                    out.failed_at.push((sent, started.elapsed()));
                }
                std::thread::sleep(pause);
            }
            out
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops writing (after the request in flight) and returns what it saw.
    pub fn finish(mut self) -> Written {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Probes two cells' workloads directly, back to back, for one tenant, until stopped; counts the
/// rounds in which both served it (at no instant may two cells accept the tenant's requests).
#[derive(Debug)]
pub struct DualServeProbe {
    stop: Arc<AtomicBool>,
    both: Arc<AtomicU64>,
    rounds: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl DualServeProbe {
    pub fn start(a: &str, b: &str, tenant: &str) -> DualServeProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let both = Arc::new(AtomicU64::new(0));
        let rounds = Arc::new(AtomicU64::new(0));
        let (a, b, tenant) = (a.to_owned(), b.to_owned(), tenant.to_owned());
        let (flag, both2, rounds2) = (stop.clone(), both.clone(), rounds.clone());
        let handle = std::thread::spawn(move || {
            // A lookup of a note that does not exist: 404 from a cell that serves the tenant,
            // a refusal from one that does not (cheap whatever the tenant's size).
            let serves = |cell: &str| {
                matches!(
                    http_request(cell, "GET", "/v1/notes/1", &[("X-Tenant-Id", &tenant)], ""),
                    Ok((404, _, _))
                )
            };
            while !flag.load(Ordering::SeqCst) {
                let (x, y) = (serves(&a), serves(&b));
                rounds2.fetch_add(1, Ordering::SeqCst);
                if x && y {
                    both2.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        DualServeProbe {
            stop,
            both,
            rounds,
            handle: Some(handle),
        }
    }

    /// Stops probing; returns `(rounds, rounds in which both cells served)`.
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.rounds.load(Ordering::SeqCst),
            self.both.load(Ordering::SeqCst),
        )
    }
}

impl Drop for DualServeProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP forwarder from a free local port to `target` that a test can pause: while paused, no
/// byte moves in either direction on any connection (a router behind it is cut off from the
/// control plane without being stopped).
#[derive(Debug)]
pub struct Forwarder {
    pub url: String,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn start(target: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let target = target.trim_start_matches("http://").to_owned();
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (paused.clone(), stop.clone());
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(upstream) = TcpStream::connect(&target) {
                            pipe(
                                client.try_clone(),
                                upstream.try_clone(),
                                p.clone(),
                                s.clone(),
                            );
                            pipe(Ok(upstream), Ok(client), p.clone(), s.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Forwarder { url, paused, stop }
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
    }
}

fn pipe(
    from: std::io::Result<TcpStream>,
    to: std::io::Result<TcpStream>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Hold what arrived while paused; deliver it when resumed.
            while paused.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl LocalFleet {
    /// Starts a move with the CLI (`args` after `move start`); returns its id.
    pub fn start_move(&self, args: &[&str]) -> String {
        let mut all = vec!["move", "start"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let run = self.run(&all);
        assert_eq!(
            run.code,
            0,
            "move start {args:?}: {}\n{}",
            run.stderr,
            self.agent_logs()
        );
        run.json()["move"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no move in {}", run.stdout))
            .to_owned()
    }

    /// The move's view.
    pub fn move_status(&self, id: &str) -> serde_json::Value {
        self.run(&["move", "status", id, "-o", "json"]).json()
    }

    /// Waits until move `id` reaches `phase` (or any terminal phase); returns its view.
    pub fn wait_move(&self, id: &str, phase: &str, within: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            last = self.move_status(id);
            let now = last["phase"].as_str().unwrap_or_default();
            if now == phase || ["done", "aborted", "rolled-back", "failed"].contains(&now) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "move {id} not {phase} within {within:?}: {last}\n{}",
            self.agent_logs()
        );
    }

    /// The last lines of every agent's log (for failure messages).
    pub fn agent_logs(&self) -> String {
        self.cells
            .iter()
            .map(|(cell, _, _)| {
                let log = std::fs::read_to_string(self.dir().join(cell).join("agent.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- {cell}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The fleet invariants at the end of a move test, once every move is over:
    /// - every tenant's notes are in exactly one cell: the one it is placed on;
    /// - no cell keeps a move's machinery (triggers, captured changes);
    /// - every cell's workload serves exactly the tenants placed on it (a write to any other cell
    ///   is refused as not placed there);
    /// - the audit chain verifies.
    pub async fn check_invariants(&self, tenants: &[&str]) {
        let open = self.run(&["move", "list", "-o", "json"]).json();
        assert_eq!(
            open.as_array().map(Vec::len),
            Some(0),
            "moves still open: {open}"
        );
        for tenant in tenants {
            let placed = self.cell_of(tenant);
            for (i, (cell, endpoint, _)) in self.cells.iter().enumerate() {
                let rows = self.cell_dbs[i].note_ids(tenant).await;
                let here = placed.as_deref() == Some(cell.as_str());
                if !here {
                    assert!(
                        rows.is_empty(),
                        "{tenant} has {} notes in {cell}, which does not serve it (placed on {placed:?})",
                        rows.len()
                    );
                }
                let probe = http_request(
                    endpoint,
                    "GET",
                    "/v1/notes/1",
                    &[("X-Tenant-Id", tenant)],
                    "",
                );
                let status = probe.as_ref().map(|(s, _, _)| *s).unwrap_or(0);
                if here {
                    assert_eq!(status, 404, "{cell} must serve {tenant} (no note 1 there)");
                } else {
                    assert_eq!(status, 421, "{cell} must refuse {tenant}");
                }
            }
        }
        for (i, (cell, _, _)) in self.cells.iter().enumerate() {
            let left = self.cell_dbs[i].move_leftovers().await;
            assert!(left.is_empty(), "{cell} keeps move machinery: {left:?}");
        }
        let verify = self.run(&["audit", "verify"]);
        assert_eq!(verify.code, 0, "audit verify: {}", verify.stdout);
    }
}

/// Asserts what a writer saw during moves: no error at all, and every acknowledged note exactly
/// once in `ids` (the rows of the cell the tenant ended on).
pub fn assert_every_write_landed_once(written: &Written, ids: &[i64]) {
    assert!(
        written.failed.is_empty(),
        "clients saw errors: {:?}",
        &written.failed[..written.failed.len().min(5)]
    );
    assert!(!written.acked.is_empty(), "the writer wrote nothing");
    let mut acked = written.acked.clone();
    acked.sort_unstable();
    let before = acked.len();
    acked.dedup();
    assert_eq!(before, acked.len(), "the edge acknowledged an id twice");
    let mut seen = ids.to_vec();
    seen.sort_unstable();
    let dupes = seen.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dupes, 0, "{dupes} notes are there twice");
    let missing: Vec<&i64> = acked
        .iter()
        .filter(|id| seen.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are lost (e.g. {:?})",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Waits until `cell` holds none of `tenant`'s notes (the source after its cleanup).
pub async fn wait_no_rows(fleet: &LocalFleet, cell: &str, tenant: &str) {
    let i = fleet.index_of(cell);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if fleet.cell_dbs[i].note_ids(tenant).await.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{cell} still holds {tenant}'s notes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `router` has told the control plane it serves the current table.
pub fn wait_router_live(fleet: &LocalFleet, count: usize) {
    eventually(Duration::from_secs(30), "routers seen live", || {
        let routers = fleet.run(&["router", "list", "-o", "json"]).json();
        routers
            .as_array()
            .map_or(0, |r| r.iter().filter(|r| r["status"] == "live").count())
            >= count
    });
}
