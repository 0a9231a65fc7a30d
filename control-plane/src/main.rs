//! `cellfleet`: the control plane server and the operator CLI in one binary.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = cellfleet::cli::Cli::parse();
    // Logs go to stderr so `-o json` output on stdout stays clean; the server logs at info, the
    // CLI only warnings unless RUST_LOG says otherwise.
    // `up` keeps the terminal for its banner: request logs stay in RUST_LOG's hands there.
    let default = match cli.command {
        cellfleet::cli::Command::Serve(_) => "info,sqlx=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cellfleet::cli::run(cli)) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // The reader of our output went away (`… | head`): nothing more to say.
        Err(e) if cellfleet::cli::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
