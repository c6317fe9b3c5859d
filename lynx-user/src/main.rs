use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = lynx::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_env("LYNX_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    match lynx::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The remote lynx has said why on standard error, passed through.
        Err(lynx::cli::CliError::RemoteExit(code)) => ExitCode::from(code),
        Err(error) => {
            eprintln!("lynx: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
