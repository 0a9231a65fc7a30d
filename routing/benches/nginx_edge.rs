//! What an nginx edge pays for routing through `cellfleet-router` (BENCHMARKS.md): the same nginx
//! (one worker), the same cells and the same load, measured side by side in one run:
//!
//! - **router**: the shipped `examples/nginx/cellfleet.conf` — `auth_request` to the router for
//!   every request, then `proxy_pass` to the cell through the per-cell `upstream` blocks the
//!   router renders (keep-alive to cells);
//! - **static map**: the same edge with a `map` of the same tenants to the same upstream blocks
//!   instead of asking the router (what an edge without cellfleet would hard-code).
//!
//! The cells are one nginx answering `200` on ten ports (so the edge's own cost is what
//! differs). 100,000 tenants over the ten cells; wrk sends `X-Tenant-Id` from 1,000 random
//! tenants. The edge, the router and the cells are pinned to CPU 0, wrk to CPU 1. Rounds are
//! interleaved; medians are reported.
//!
//! Needs `wrk` and `nginx`. Run:
//! `cargo build --release -p cellfleet-routing && cargo bench -p cellfleet-routing --bench nginx_edge`
//! (`CELLFLEET_BENCH_SECS`, default 10; `CELLFLEET_BENCH_ROUNDS`, default 3).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cellfleet_e2e::free_port;
use cellfleet_routing::router::nginx_upstreams::upstream_name;

mod support;
use support::{
    CONNECTIONS, Kill, cached_router, env_num, median, pinned, table_of, tool, wait_port, wrk,
};

const TENANTS: usize = 100_000;
const CELLS: usize = 10;

fn tenant(i: usize) -> String {
    format!("tenant-{i:06}")
}

fn cell(i: usize) -> String {
    format!("cell-{:02}", i % CELLS)
}

/// The nginx preamble every instance here shares (one worker, files in `dir/name-*`).
fn nginx_main(dir: &Path, name: &str, http: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes 1;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/{name}-body;\n  proxy_temp_path {d}/{name}-proxy;\n\
         fastcgi_temp_path {d}/{name}-fastcgi;\n  uwsgi_temp_path {d}/{name}-uwsgi;\n\
         scgi_temp_path {d}/{name}-scgi;\n{http}\n}}\n"
    )
}

fn start_nginx(kill: &mut Kill, dir: &Path, name: &str, http: &str) -> PathBuf {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, nginx_main(dir, name, http)).expect("write nginx config");
    kill.0.push(
        pinned("0", &tool("nginx"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join(format!("{name}-error.log")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    conf
}

/// A wrk script sending `X-Tenant-Id` from 1,000 random tenants.
fn wrk_script(dir: &Path) -> String {
    let path = dir.join("tenants.lua");
    std::fs::write(
        &path,
        format!(
            "local reqs = {{}}\nlocal i = 0\n\
             init = function(args)\n  math.randomseed(42)\n  for n = 1, 1000 do\n    \
             reqs[n] = wrk.format(\"GET\", \"/v1/notes\", {{[\"X-Tenant-Id\"] = string.format(\"tenant-%06d\", math.random(0, {}))}})\n  end\nend\n\
             request = function()\n  i = i % 1000 + 1\n  return reqs[i]\nend\n",
            TENANTS - 1
        ),
    )
    .expect("write wrk script");
    path.display().to_string()
}

/// Whether the router reports a successful nginx reload.
fn reloaded(router_port: u16) -> bool {
    use std::io::{Read, Write};
    let mut text = String::new();
    let asked = std::net::TcpStream::connect(("127.0.0.1", router_port)).and_then(|mut s| {
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        s.read_to_string(&mut text)
    });
    asked.is_ok() && text.contains("cellfleet_router_nginx_reloads_total{outcome=\"ok\"} 1")
}

fn main() {
    let secs = env_num("CELLFLEET_BENCH_SECS", 10);
    let rounds = env_num("CELLFLEET_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut children = Kill(Vec::new());

    // The cells: one nginx answering 200 on ten ports.
    let cell_ports: Vec<u16> = (0..CELLS).map(|_| free_port()).collect();
    let cells_http: String = cell_ports
        .iter()
        .map(|p| {
            format!("  server {{ listen 127.0.0.1:{p}; location / {{ return 200 \"ok\\n\"; }} }}\n")
        })
        .collect();
    start_nginx(&mut children, d, "cells", &cells_http);

    // The router, restored from a cache of 100,000 routes over the ten cells; it renders the
    // upstreams and reloads the edge nginx (signal to its pid file).
    let table = table_of(TENANTS, |i| {
        (
            tenant(i),
            cell(i),
            format!("http://127.0.0.1:{}", cell_ports[i % CELLS]),
        )
    });
    let upstreams_dir = d.join("upstreams");
    let router_port = cached_router(
        &mut children,
        d,
        &table,
        &[
            "--nginx-upstreams".to_owned(),
            upstreams_dir.join("upstreams.conf").display().to_string(),
            "--nginx-reload-command".to_owned(),
            format!("kill -HUP $(cat {}/edge.pid)", d.display()),
        ],
    );

    // Edge 1: the shipped configuration, in front of the router (which retries its reload until
    // this nginx runs).
    let edge_port = free_port();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nginx/cellfleet.conf");
    let shipped = std::fs::read_to_string(&example)
        .expect("read the shipped nginx config")
        .replace("listen 8080;", &format!("listen 127.0.0.1:{edge_port};"))
        .replace(
            "server 127.0.0.1:7480;",
            &format!("server 127.0.0.1:{router_port};"),
        )
        .replace(
            "/var/lib/cellfleet-router/nginx/upstreams*.conf",
            &format!("{}/upstreams*.conf", upstreams_dir.display()),
        );
    start_nginx(&mut children, d, "edge", &shipped);
    wait_port(edge_port);
    // Edge 2: the same edge with a static map of the same tenants to the same upstreams.
    let map_port = free_port();
    let mut map = String::from(
        "  map_hash_max_size 262144;\n  map_hash_bucket_size 64;\n  map $http_x_tenant_id $cell_upstream {\n    default \"\";\n",
    );
    for i in 0..TENANTS {
        map.push_str(&format!("    {} {};\n", tenant(i), upstream_name(&cell(i))));
    }
    map.push_str("  }\n");
    for (i, port) in cell_ports.iter().enumerate() {
        map.push_str(&format!(
            "  upstream {} {{ server 127.0.0.1:{port}; keepalive 32; }}\n",
            upstream_name(&cell(i))
        ));
    }
    map.push_str(&format!(
        "  server {{\n    listen 127.0.0.1:{map_port};\n    location / {{\n      \
         if ($cell_upstream = \"\") {{ return 403; }}\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      proxy_pass http://$cell_upstream;\n    }}\n  }}\n"
    ));
    start_nginx(&mut children, d, "map", &map);
    for port in [router_port, map_port] {
        wait_port(port);
    }

    let script = wrk_script(d);
    let router_url = format!("http://127.0.0.1:{edge_port}");
    let map_url = format!("http://127.0.0.1:{map_port}");
    // The router renders and reloads at start: wait until nginx has the upstreams (a reload
    // that worked, then the router's grace), then warm up (and check every answer is a 200
    // through both edges).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !reloaded(router_port) {
        assert!(
            std::time::Instant::now() < deadline,
            "the router never reloaded the edge with its upstreams"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    wrk(&router_url, &script, 2);
    wrk(&map_url, &script, 2);

    let (mut via_router, mut via_map) = (Vec::new(), Vec::new());
    let (mut router_p99, mut map_p99) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (r, r99) = wrk(&router_url, &script, secs);
        let (m, m99) = wrk(&map_url, &script, secs);
        eprintln!(
            "round {round}: through the router {r:.0}/s (p99 {r99:.2} ms), static map {m:.0}/s (p99 {m99:.2} ms)"
        );
        via_router.push(r);
        via_map.push(m);
        router_p99.push(r99);
        map_p99.push(m99);
    }
    let (r, m) = (median(via_router), median(via_map));
    println!(
        "\nnginx edge (1 worker) in front of {CELLS} cells, {TENANTS} tenants, {CONNECTIONS} connections; edge, router and cells on CPU 0, wrk on CPU 1 ({rounds} rounds of {secs} s, medians)\n"
    );
    println!("| edge | requests/s | vs static map | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| static `map` → per-cell upstreams (keepalive) | {m:.0} | 1.00 | {:.2} ms |",
        median(map_p99)
    );
    println!(
        "| shipped config: `auth_request` → cellfleet-router → per-cell upstreams (keepalive) | {r:.0} | {:.2}× | {:.2} ms |",
        r / m,
        median(router_p99)
    );
    drop(children);
}
