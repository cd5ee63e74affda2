//! `mount`: the read-only FUSE view of a repository (README §Restore a file from yesterday).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use xstore::fsview::{FsView, ViewOptions};

use crate::{repo_path, Cli, EXIT_OK};

#[derive(clap::Args)]
pub(crate) struct MountArgs {
    /// `[REPO] MOUNTPOINT`: the repository (default --repo / XSTORE_REPO) and an empty
    /// directory to mount on.
    #[arg(num_args = 1..=2, required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Show only this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Let other users read the mount (root, or user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
}

pub(crate) fn mount(cli: &Cli, args: &MountArgs) -> Result<u8> {
    let (repo, mountpoint) = match args.paths.as_slice() {
        [repo, mountpoint] => (repo.clone(), mountpoint.clone()),
        [mountpoint] => (repo_path(cli)?, mountpoint.clone()),
        _ => anyhow::bail!("give [REPO] MOUNTPOINT"),
    };
    for h in &args.hosts {
        xstore::snapshot::validate_host(h).map_err(anyhow::Error::msg)?;
    }
    let view = FsView::open(
        &repo,
        ViewOptions {
            hosts: (!args.hosts.is_empty()).then(|| args.hosts.clone()),
            ..ViewOptions::default()
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mounted = xstore::mount::mount(
        view,
        &mountpoint,
        &xstore::mount::MountOptions {
            allow_other: args.allow_other,
        },
    )?;
    if !cli.quiet {
        eprintln!(
            "xstore: {} mounted read-only at {}; unmount with fusermount3 -u or Ctrl-C",
            repo.display(),
            mountpoint.display()
        );
    }
    while !stop.load(Ordering::Relaxed) && mounted.is_mounted() {
        std::thread::sleep(Duration::from_millis(100));
    }
    mounted.unmount(Duration::from_secs(2));
    Ok(EXIT_OK)
}
