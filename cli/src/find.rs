//! Finding what a customer lost: `find` (which snapshots hold a path).

use super::*;

#[derive(clap::Args)]
pub(crate) struct FindArgs {
    /// Glob: without `/` it matches names (`config.php`, `*.php`), with `/` full paths
    /// (`/var/www/shop/config.php`, `/var/www/**/*.php`).
    #[arg(required = true)]
    patterns: Vec<String>,
    /// Only this host's snapshots.
    #[arg(long, value_parser = crate::values::host)]
    host: Option<xstore::HostName>,
    /// Only snapshots since this time: RFC 3339 (2026-11-24T00:00:00Z) or an age (7d).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<i64>,
}

/// An instant, or an age counted back from now.
fn parse_since(text: &str) -> Result<i64> {
    if let Ok(t) = xstore::retention::parse_instant(text) {
        return Ok(t);
    }
    let age = xstore::retention::parse_duration(text).map_err(|_| {
        anyhow::anyhow!(
            "--since {text:?}: expected an RFC 3339 time (2026-11-24T00:00:00Z) or an age (7d)"
        )
    })?;
    Ok(xstore::now_ns().saturating_sub(age))
}

pub(crate) fn find(cli: &Cli, args: &FindArgs) -> Result<u8> {
    let FindArgs {
        patterns,
        host,
        since,
    } = args;
    let repo = open_ro(cli)?;
    let report = repo.find(&xstore::FindOptions {
        patterns: patterns.clone(),
        host: host.clone(),
        since_ns: *since,
    })?;
    if report.paths.is_empty() {
        anyhow::bail!(
            "no path matching {} in {} snapshots",
            patterns.join(" or "),
            report.snapshots
        );
    }
    if cli.json {
        print_json(&report)?;
        return Ok(EXIT_OK);
    }
    for p in &report.paths {
        outln!("{} {}", p.host, xstore::text::printable(&p.path));
        for v in &p.versions {
            let change = match v.change {
                xstore::VersionChange::First => "first",
                xstore::VersionChange::Changed => "changed",
                xstore::VersionChange::Same => "same",
            };
            outln!(
                "  {}  {:<8}  {:<16}  {}  {:>10}  mtime {}  {}",
                time_of(v.time_ns),
                v.snapshot.short(),
                positions_text(&v.positions),
                v.kind.letter(),
                if cli.bytes {
                    v.size.to_string()
                } else {
                    human_bytes(v.size)
                },
                time_of(v.mtime_ns),
                change
            );
        }
        if let Some(a) = &p.absent_since {
            outln!(
                "  {}  {:<8}  {:<16}  absent from this snapshot on",
                time_of(a.time_ns),
                a.snapshot.short(),
                positions_text(&a.positions),
            );
        }
    }
    if !cli.quiet {
        outln!(
            "{} paths in {} snapshots ({} trees read)",
            report.paths.len(),
            report.snapshots,
            report.trees_read
        );
    }
    Ok(EXIT_OK)
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ArchiveFormat {
    /// POSIX pax tar: owners, ns times, xattrs, hard links, devices, sparse files.
    Tar,
    /// zip: files, directories and symlinks with mode and mtime.
    Zip,
}

#[derive(clap::Args)]
pub(crate) struct DumpArgs {
    /// Snapshot: id prefix, latest, HOST@latest, HOST@latest-complete or HOST@TIER.N (web1@daily.0).
    snapshot: String,
    /// Path inside the snapshot (a directory becomes an archive, a file its bytes).
    path: String,
    /// Archive format (default for a directory: tar).
    #[arg(long, value_enum)]
    format: Option<ArchiveFormat>,
    /// Write to this new file (never overwritten) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub(crate) fn dump(cli: &Cli, args: &DumpArgs) -> Result<u8> {
    let DumpArgs {
        snapshot,
        path,
        format,
        output,
    } = args;
    let format = format.map(|f| match f {
        ArchiveFormat::Tar => xstore::DumpFormat::Tar,
        ArchiveFormat::Zip => xstore::DumpFormat::Zip,
    });
    let repo = open_ro(cli)?;
    let snap = repo.resolve(snapshot)?;
    let summary = match output {
        Some(file) => repo.dump_to_file(&snap, path, format, file)?,
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                anyhow::bail!(
                    "refusing to write {path} of snapshot {} to a terminal: use -o FILE or a pipe",
                    snap.id.short()
                );
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let summary = repo.dump(&snap, path, format, &mut out)?;
            out.flush().context("<stdout>")?;
            summary
        }
    };
    for s in &summary.skipped {
        eprintln!("xstore: not in the archive (the format cannot hold it): {s}");
    }
    for s in &summary.renamed {
        eprintln!("xstore: stored as {s}: the name is not UTF-8");
    }
    if let Some(file) = output {
        if cli.json {
            print_json(&summary)?;
        } else if !cli.quiet {
            outln!(
                "wrote {path} of snapshot {} of {} to {}: {} files, {} directories, {} other, {}",
                snap.id.short(),
                snap.host,
                file.display(),
                summary.files,
                summary.dirs,
                summary.others,
                human_bytes(summary.bytes)
            );
        }
    }
    Ok(EXIT_OK)
}

/// A snapshot's tier positions for a table cell: `daily.0,weekly.1`, or `-`.
fn positions_text(positions: &[String]) -> String {
    if positions.is_empty() {
        "-".to_string()
    } else {
        positions.join(",")
    }
}
