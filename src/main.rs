//! The `lakemount` binary: parse the command line, start logging, dispatch.
//! Started as `mount.fuse.lakemount` (a symlink, for `mount -t
//! fuse.lakemount` and `/etc/fstab`), it mounts in the background.

use std::ffi::OsString;

use clap::Parser;

fn main() -> std::process::ExitCode {
    lakemount::daemon::adopt_ready_pipe();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let helper = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "mount.fuse.lakemount" || n == "mount.lakemount");
    let argv = if helper {
        match lakemount::daemon::helper_args(&argv) {
            Ok(args) => std::iter::once(OsString::from("lakemount"))
                .chain(args)
                .collect(),
            Err(e) => {
                eprintln!("mount.fuse.lakemount: {e:#}");
                return std::process::ExitCode::from(e.kind().exit_code());
            }
        }
    } else {
        argv
    };
    let cli = lakemount::cli::Cli::parse_from(&argv);
    if cli.embeds_batches()
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
        && let Some(n) = lakemount::encode::threads_for_batches()
    {
        // SAFETY: no other thread exists yet (the runtime starts later), so
        // nothing reads the environment while it changes.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAKEMOUNT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    lakemount::cli::run(cli, argv)
}
