//! What the runbook tests need besides a fleet: running a runbook with the CLI, waiting for a
//! run's phase, and reading what it did from the audit log and the events.

use std::time::Duration;

use crate::LocalFleet;

impl LocalFleet {
    /// A run as `runbook status -o json` shows it.
    pub fn run_status(&self, id: &str) -> serde_json::Value {
        self.run(&["runbook", "status", id, "-o", "json"]).json()
    }

    /// Starts a run with the CLI; returns its id.
    pub fn start_run(&self, name: &str, params: &[(&str, &str)]) -> String {
        let mut args = vec!["runbook".to_owned(), "run".to_owned(), name.to_owned()];
        for (k, v) in params {
            args.push("--param".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(["-o".into(), "json".into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.run(&argv);
        assert_eq!(run.code, 0, "runbook run {name}: {}", run.stderr);
        run.json()["run"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run in {}", run.stdout))
            .to_owned()
    }

    /// Waits until the run is in `phase`; panics with its status and the agents' logs if it
    /// ends elsewhere or takes longer than `within`.
    pub fn wait_run(&self, id: &str, phase: &str, within: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let r = self.run_status(id);
            if r["phase"] == phase {
                return r;
            }
            let ended =
                ["succeeded", "failed", "aborted"].contains(&r["phase"].as_str().unwrap_or(""));
            if ended || std::time::Instant::now() > deadline {
                panic!(
                    "run {id} is not {phase}: {}\n{}",
                    serde_json::to_string_pretty(&r).unwrap_or_default(),
                    self.agent_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// How many audit records there are.
    pub fn audit_count(&self) -> usize {
        self.run(&["audit", "list", "--limit", "100000", "-o", "json"])
            .json()
            .as_array()
            .map_or(0, Vec::len)
    }

    /// How many moves of `tenant` were ever started (its `move.start` audit records).
    pub fn moves_started(&self, tenant: &str) -> usize {
        self.run(&[
            "audit",
            "list",
            "--target",
            &format!("tenant/{tenant}"),
            "--limit",
            "10000",
            "-o",
            "json",
        ])
        .json()
        .as_array()
        .map_or(0, |a| {
            a.iter().filter(|r| r["action"] == "move.start").count()
        })
    }

    /// The events a run emitted.
    pub fn events_of(&self, run: &str) -> Vec<serde_json::Value> {
        self.run(&["event", "list", "--run", run, "-o", "json"])
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until no move is open (the last one's rollback window closed and cleaned up).
    pub fn wait_no_open_moves(&self) {
        crate::eventually(Duration::from_secs(60), "no move is open", || {
            self.run(&["move", "list", "-o", "json"])
                .json()
                .as_array()
                .is_some_and(Vec::is_empty)
        });
    }
}
