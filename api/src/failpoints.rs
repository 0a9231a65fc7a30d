//! Failpoints: named places in the control plane and the agent where a test can make the process
//! die on the spot, as a `kill -9` would, to prove that every step of a long operation resumes.
//!
//! `CELLFLEET_FAILPOINTS=name[,name…]` in a process's environment arms them; a process that
//! reaches an armed failpoint prints its name on stderr and aborts (no destructors, no flushing:
//! whatever was not committed is lost, as in a crash). Unset — always, in production — a
//! failpoint costs one lookup in an empty list.

use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV: &str = "CELLFLEET_FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Dies here if `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
