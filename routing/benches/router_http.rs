//! Router HTTP lookups vs the alternatives (BENCHMARKS.md), measured side by side in one run:
//!
//! - `cellfleet-router` serving 100,000 routes, `GET /route/{tenant}` (JSON + `X-Cell-Id` +
//!   `X-Cell-Endpoint`), keep-alive;
//! - an nginx `map` of the same 100,000 tenants answering `return 200` with the same two headers
//!   (one worker) — what a user would otherwise push to the edge;
//! - `redis-benchmark -t get -c 50` against a Redis holding 100,000 keys.
//!
//! Every server is pinned to CPU 0 and every load generator to CPU 1 (`taskset`). Throughput is
//! `wrk -t1 -c50` (the same script and tenant sequence for router and nginx) and
//! `redis-benchmark --threads 1 -c 50`; rounds are interleaved and the median is reported. The
//! router's latency is then measured open-loop at 80 % of its median peak by a generator in this
//! binary (50 keep-alive connections, each sending on a fixed schedule; latency counts from the
//! scheduled send time, so a slow answer is not hidden by the sender waiting for it), and nginx
//! on the same schedule for comparison.
//!
//! The router serves the table restored from its cache directory with the control plane
//! unreachable: lookups never touch the control plane, so this is the serving path as it is.
//!
//! Needs `wrk`, `nginx`, `redis-server` and `redis-benchmark` (`apt-get install wrk nginx
//! redis-server`). Run:
//! `cargo build --release -p cellfleet-routing && cargo bench -p cellfleet-routing --bench router_http`
//! (`CELLFLEET_BENCH_SECS` sets the length of each run, default 10; `CELLFLEET_BENCH_ROUNDS` the
//! number of interleaved rounds, default 3).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cellfleet_e2e::free_port;

mod support;
use support::{
    CONNECTIONS, Kill, cached_router, env_num, median, percentile, pinned, table_of, tool,
    wait_port, wrk,
};

const TENANTS: usize = 100_000;

fn tenant(i: usize) -> String {
    format!("tenant-{i:06}")
}

fn cell(i: usize) -> String {
    format!("cell-{:03}", i % 1000)
}

fn endpoint(i: usize) -> String {
    format!("http://10.0.{}.{}:8080", i % 1000 / 250, i % 250)
}

/// A wrk script cycling through 1,000 random tenants (the requests are built once, so wrk spends
/// its time on the network, not in Lua).
fn wrk_script(dir: &Path) -> String {
    let path = dir.join("tenants.lua");
    std::fs::write(
        &path,
        format!(
            "local paths = {{}}\nlocal i = 0\n\
             init = function(args)\n  math.randomseed(42)\n  for n = 1, 1000 do\n    \
             paths[n] = wrk.format(\"GET\", string.format(\"/route/tenant-%06d\", math.random(0, {})))\n  end\nend\n\
             request = function()\n  i = i % 1000 + 1\n  return paths[i]\nend\n",
            TENANTS - 1
        ),
    )
    .expect("write wrk script");
    path.display().to_string()
}

/// `redis-benchmark -t get -c 50` on CPU 1 against the Redis on `port`: requests/s.
fn redis_get(port: u16, requests: u64) -> f64 {
    let out = pinned("1", &tool("redis-benchmark"))
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "get",
            "-c",
            "50",
            "--threads",
            "1",
        ])
        .args([
            "-r",
            &TENANTS.to_string(),
            "-n",
            &requests.to_string(),
            "--csv",
        ])
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("\"GET\""))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no GET figure in redis-benchmark output:\n{text}"))
}

fn nginx_map_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let mut cells = String::new();
    let mut endpoints = String::new();
    for i in 0..TENANTS {
        let t = tenant(i);
        cells.push_str(&format!("    /route/{t} {};\n", cell(i)));
        endpoints.push_str(&format!("    /route/{t} {};\n", endpoint(i)));
    }
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         map_hash_max_size 262144;\n  map_hash_bucket_size 128;\n\
         map $uri $cell_id {{\n    default \"\";\n{cells}  }}\n\
         map $uri $cell_endpoint {{\n    default \"\";\n{endpoints}  }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location /route/ {{\n      \
         if ($cell_id = \"\") {{ return 403; }}\n      add_header X-Cell-Id $cell_id;\n      \
         add_header X-Cell-Endpoint $cell_endpoint;\n      return 200;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx-map.conf");
    std::fs::write(&path, conf).expect("write nginx map config");
    path
}

/// Open-loop latency: `rate` requests/s over 50 keep-alive connections for `secs`, on CPU 1.
/// Returns sorted latencies in milliseconds, each from its request's scheduled send time.
///
/// One busy-polling thread: it sends every request that is due on an idle connection, then asks
/// epoll (without blocking) which connections have answers. A connection that is still waiting
/// when its next request is due sends it late, and that lateness is part of the latency.
fn open_loop(port: u16, rate: f64, secs: u64) -> Vec<f64> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &{
        let mut set = nix::sched::CpuSet::new();
        let _ = set.set(1);
        set
    });
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
        next_due: Instant,
        sent_for: Option<Instant>,
        n: usize,
    }
    let epoll = Epoll::new(EpollCreateFlags::empty()).expect("epoll");
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let mut conns: Vec<Conn> = (0..CONNECTIONS)
        .map(|k| {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            stream.set_nonblocking(true).expect("nonblocking");
            epoll
                .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, k as u64))
                .expect("epoll add");
            Conn {
                stream,
                buf: Vec::with_capacity(1024),
                next_due: start + interval.mul_f64(k as f64 / CONNECTIONS as f64),
                sent_for: None,
                n: k * 7919,
            }
        })
        .collect();
    let end = start + Duration::from_secs(secs);
    let mut latencies = Vec::with_capacity((rate * secs as f64) as usize + 1024);
    let mut events = vec![EpollEvent::empty(); CONNECTIONS];
    let mut chunk = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= end && conns.iter().all(|c| c.sent_for.is_none()) {
            break;
        }
        for c in &mut conns {
            if c.sent_for.is_none() && c.next_due <= now && now < end {
                let request = format!(
                    "GET /route/{} HTTP/1.1\r\nHost: bench\r\n\r\n",
                    tenant(c.n % TENANTS)
                );
                c.n += 1;
                // A tiny request on an idle connection goes out in one write.
                c.stream
                    .write_all(request.as_bytes())
                    .expect("send request");
                c.sent_for = Some(c.next_due);
                c.next_due += interval;
            }
        }
        let ready = epoll
            .wait(&mut events, EpollTimeout::ZERO)
            .expect("epoll wait");
        for event in &events[..ready] {
            let c = &mut conns[event.data() as usize];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => panic!("the router closed a connection"),
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            while let Some(len) = complete_response(&c.buf) {
                assert!(c.buf.starts_with(b"HTTP/1.1 200"), "not a 200 under load");
                if let Some(due) = c.sent_for.take() {
                    latencies.push(due.elapsed().as_secs_f64() * 1000.0);
                }
                c.buf.drain(..len);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// The length of the first complete HTTP response in `buf` (headers + Content-Length body).
fn complete_response(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

fn main() {
    let secs = env_num("CELLFLEET_BENCH_SECS", 10);
    let rounds = env_num("CELLFLEET_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut children = Kill(Vec::new());

    // The router, restored from a cache holding 100k routes.
    let table = table_of(TENANTS, |i| (tenant(i), cell(i), endpoint(i)));
    let router_port = cached_router(&mut children, d, &table, &[]);

    // nginx with a map of the same tenants.
    let nginx_port = free_port();
    let conf = nginx_map_config(d, nginx_port);
    children.0.push(
        pinned("0", &tool("nginx"))
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(d.join("nginx-error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );

    // Redis with the same number of keys.
    let redis_port = free_port();
    children.0.push(
        pinned("0", &tool("redis-server"))
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    for port in [router_port, nginx_port, redis_port] {
        wait_port(port);
    }
    let loaded = Command::new(tool("redis-benchmark"))
        .args(["-p", &redis_port.to_string(), "-t", "set", "-c", "50"])
        .args([
            "-r",
            &TENANTS.to_string(),
            "-n",
            &(TENANTS * 5).to_string(),
            "-q",
        ])
        .output()
        .expect("preload redis");
    assert!(loaded.status.success(), "preloading redis failed");

    let script = wrk_script(d);
    let router_url = format!("http://127.0.0.1:{router_port}");
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");
    // Warm-up (and a check that both answer 200 to every request of the script).
    wrk(&router_url, &script, 2);
    wrk(&nginx_url, &script, 2);

    let (mut router_rps, mut nginx_rps, mut redis_rps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut router_p99, mut nginx_p99) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (r, r99) = wrk(&router_url, &script, secs);
        let (n, n99) = wrk(&nginx_url, &script, secs);
        // As many GETs as the router answered in its run, so the runs are about as long.
        let g = redis_get(redis_port, (r * secs as f64) as u64);
        eprintln!(
            "round {round}: router {r:.0}/s (closed-loop p99 {r99:.2} ms), nginx map {n:.0}/s (p99 {n99:.2} ms), redis GET {g:.0}/s"
        );
        router_rps.push(r);
        nginx_rps.push(n);
        redis_rps.push(g);
        router_p99.push(r99);
        nginx_p99.push(n99);
    }
    let (r, n, g) = (median(router_rps), median(nginx_rps), median(redis_rps));
    let rate = r * 0.8;
    let latencies = open_loop(router_port, rate, secs);
    let achieved = latencies.len() as f64 / secs as f64;
    // The same schedule against nginx, for how much of the tail is this machine's.
    let nginx_latencies = open_loop(nginx_port, rate, secs);

    println!(
        "\nrouter HTTP lookups, {TENANTS} routes, {CONNECTIONS} connections, servers on CPU 0, load on CPU 1 ({rounds} rounds of {secs} s, medians)\n"
    );
    println!("| server | requests/s | vs router | closed-loop p99 |");
    println!("|---|---|---|---|");
    println!(
        "| cellfleet-router `GET /route/{{tenant}}` | {r:.0} | 1.00 | {:.2} ms |",
        median(router_p99)
    );
    println!(
        "| nginx `map` + `return 200` (1 worker) | {n:.0} | router {:.2}× | {:.2} ms |",
        r / n,
        median(nginx_p99)
    );
    println!(
        "| redis-benchmark -t get -c 50 | {g:.0} | router {:.2}× | — |",
        r / g
    );
    println!(
        "\nrouter open-loop at 80 % of its peak ({rate:.0}/s requested, {achieved:.0}/s answered): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "nginx map on the same schedule: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        percentile(&nginx_latencies, 0.50),
        percentile(&nginx_latencies, 0.99),
        percentile(&nginx_latencies, 0.999),
        nginx_latencies.last().copied().unwrap_or(f64::NAN),
    );
    drop(children);
}
