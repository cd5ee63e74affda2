//! `mount`: the read-only FUSE view of a repository (README §Restore a file from yesterday).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use xstore_browse::fsview::{FsView, ViewOptions};
use xstore_browse::nfs::NfsServer;

use crate::pull::DEFAULT_INVENTORY;
use crate::{repo_path, Cli, EXIT_OK};

#[derive(clap::Args)]
pub(crate) struct MountArgs {
    /// `[REPO] MOUNTPOINT`: the repository (default --repo / XSTORE_REPO) and an empty
    /// directory to mount on.
    #[arg(num_args = 1..=2, required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Show only this host (repeatable).
    #[arg(long = "host", value_name = "HOST", value_parser = crate::values::host)]
    hosts: Vec<xstore::HostName>,
    /// Let other users read the mount (root, or user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// Memory for decompressed chunks, in MiB (random reads across a large file want more).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    cache_mib: usize,
}

/// Sets a flag on SIGINT and SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

pub(crate) fn mount(cli: &Cli, args: &MountArgs) -> Result<u8> {
    let (repo, mountpoint) = match args.paths.as_slice() {
        [repo, mountpoint] => (repo.clone(), mountpoint.clone()),
        [mountpoint] => (repo_path(cli)?, mountpoint.clone()),
        _ => anyhow::bail!("give [REPO] MOUNTPOINT"),
    };
    let view = FsView::open(
        &repo,
        ViewOptions {
            hosts: (!args.hosts.is_empty()).then(|| args.hosts.clone()),
            cache_bytes: args.cache_mib.saturating_mul(1 << 20),
            ..ViewOptions::default()
        },
    )?;
    let stop = stop_flag()?;
    let mounted = xstore_browse::mount::mount(
        view,
        &mountpoint,
        &xstore_browse::mount::MountOptions {
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

#[derive(clap::Args)]
pub(crate) struct NfsArgs {
    /// Address to listen on, and the port counted from for accounts without `nfs_port`
    /// in the inventory (each further account: the next port).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: std::net::SocketAddr,
    /// Export only this account.
    #[arg(long)]
    account: Option<String>,
    /// Also allow this client address (repeatable; with --account).
    #[arg(long = "allow", value_name = "IP", requires = "account")]
    allow: Vec<std::net::IpAddr>,
    /// The inventory: accounts, their hosts, and the hosts' addresses (allowed clients).
    /// Re-read on SIGHUP.
    #[arg(long, env = "XSTORE_INVENTORY", default_value = DEFAULT_INVENTORY)]
    inventory: PathBuf,
    /// Memory for all exports' caches together, in MiB: decoded trees (half), file chunks
    /// and directory listings (a quarter each).
    #[arg(long, default_value_t = xstore_browse::nfs::DEFAULT_CACHE_BYTES >> 20, value_name = "MIB")]
    cache_mib: usize,
}

/// Serves the exports until SIGINT or SIGTERM; SIGHUP re-reads the inventory and applies
/// it without disturbing accounts that did not change (a bad inventory is logged and the
/// running exports stay).
pub(crate) fn serve_nfs(cli: &Cli, args: &NfsArgs) -> Result<u8> {
    let repo = repo_path(cli)?;
    let exports_now = || -> Result<Vec<xstore_browse::nfs::NfsExport>> {
        let inv = xstore_fleet::Inventory::load(&args.inventory)?;
        Ok(xstore_browse::nfs::exports_for(
            &inv,
            args.account.as_deref(),
            args.listen,
            &args.allow,
        )?)
    };
    let exports = exports_now()?;
    let stop = stop_flag()?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;
    let mut server = NfsServer::start(&repo, &exports, args.cache_mib.saturating_mul(1 << 20))?;
    print_exports(&server, &exports)?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if !reload.swap(false, Ordering::Relaxed) {
            continue;
        }
        let applied = exports_now().and_then(|exports| {
            let done = server.reload(&exports)?;
            Ok((exports, done))
        });
        match applied {
            Ok((exports, done)) => {
                tracing::info!(
                    "reloaded {}: added {:?}, removed {:?}, changed {:?}",
                    args.inventory.display(),
                    done.added,
                    done.removed,
                    done.changed
                );
                print_exports(&server, &exports)?;
            }
            Err(e) => tracing::error!("reload: {e:#}; the exports stay as they were"),
        }
    }
    server.shutdown();
    Ok(EXIT_OK)
}

/// One line per export: `NAME ADDR clients IP,IP`, the line tests and operators read.
fn print_exports(server: &NfsServer, exports: &[xstore_browse::nfs::NfsExport]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (name, addr) in server.addresses() {
        let clients: Vec<String> = exports
            .iter()
            .filter(|e| e.name == name)
            .flat_map(|e| e.clients.keys().map(|a| a.to_string()))
            .collect();
        writeln!(out, "{name} {addr} clients {}", clients.join(","))?;
    }
    out.flush()?;
    Ok(())
}
