//! The `lakemount` binary: parse the command line, start logging, dispatch.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lakemount::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAKEMOUNT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    lakemount::cli::run(cli)
}
