//! The binary's own command line: bad input fails with one line and a non-zero exit.

use std::process::Command;

#[test]
fn a_missing_token_file_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_cell-agent"))
        .args([
            "--control-plane",
            "http://127.0.0.1:1",
            "--cell",
            "c1",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--token-file")
        .arg(dir.path().join("missing.token"))
        .output()
        .expect("run cell-agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot read token file"), "{stderr}");
}
