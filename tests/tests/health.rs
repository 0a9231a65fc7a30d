//! Health is the workload's own: with another process holding a cell's port, the workload the
//! agent starts cannot bind and exits, again and again. The agent must not take the squatter's
//! answers for its workload: it reports a crash loop (restarts, the last exit and what the
//! process said), no running release, and the cell shows it — then recovers once the port is
//! free.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cellfleet_e2e::{LocalFleet, eventually, free_port};

/// Answers every connection on `listener` with `200 ok` (like any other service would) until
/// stopped.
fn squat(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap_or_default();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_cannot_bind_is_a_reported_crash_loop_not_a_healthy_cell() {
    let port = free_port();
    let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("bind: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let squatting = squat(squatter, stop.clone());
    // (The squatter answers /healthz with 200 like anything else would: only the agent's own
    // check tells them apart.)
    let fleet = LocalFleet::start_on(&[("cell-a", 50, port)]).await;
    let run = |args: &[&str]| fleet.run(args);

    eventually(
        Duration::from_secs(60),
        "the crash loop is reported",
        || {
            let v = run(&["cell", "get", "cell-a", "-o", "json"]).json();
            let w = &v["workload"];
            w["state"] == "crash-loop"
                && w["recentExits"].as_u64().unwrap_or(0) >= 3
                && v["release"].is_null()
                && v["errors"].as_array().is_some_and(|e| {
                    e.iter().any(|e| {
                        e.as_str().is_some_and(|e| {
                            e.contains("workload crash loop")
                                && e.contains("Address already in use")
                        })
                    })
                })
        },
    );
    // What people read says the same: the cell is flagged, its workload crash-looping.
    let table = run(&["cell", "list"]).ok().to_owned();
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("cell-a"))
        .unwrap_or_default();
    assert!(row.contains('!') && row.contains("crash-loop"), "{table}");
    let detail = run(&["cell", "get", "cell-a"]).ok().to_owned();
    assert!(
        detail.contains("last exit: ") && detail.contains("Address already in use"),
        "{detail}"
    );

    // The port is freed: the next restart takes it, and the cell is healthy again.
    stop.store(true, Ordering::Relaxed);
    let _ = squatting.join();
    eventually(Duration::from_secs(90), "the workload recovers", || {
        let v = run(&["cell", "get", "cell-a", "-o", "json"]).json();
        v["workload"]["state"] == "running"
            && v["release"] == "1.0.0"
            && v["errors"].as_array().is_some_and(Vec::is_empty)
    });
    drop(fleet);
}
