//! `import rsnapshot`: an rsnapshot service's configuration and history into this repository
//! (README, "Migrating from rsnapshot").

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use xstore::Progress;
use xstore_fleet::{ImportAction, ImportEvent, ImportOutcome, RsnapshotConfig};

use crate::{open_ro, open_rw, print_json, size, time_of, Cli, EXIT_OK};

#[derive(clap::Subcommand)]
pub(crate) enum ImportWhat {
    /// Every backup point <snapshot_root>/<tier>.<n>/<host>/ as a snapshot of that host with
    /// rsnapshot's time and tier, oldest first; resumable, and the rsnapshot tree is only read.
    Rsnapshot(RsnapshotArgs),
}

#[derive(clap::Args)]
pub(crate) struct RsnapshotArgs {
    /// rsnapshot's configuration.
    #[arg(long, default_value = "/etc/rsnapshot.conf", value_name = "FILE")]
    config: PathBuf,
    /// Also write an inventory of the hosts rsnapshot pulls over ssh (never replaces a file).
    #[arg(long, value_name = "FILE")]
    inventory_out: Option<PathBuf>,
    /// List what would be imported, change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) fn import(cli: &Cli, what: &ImportWhat) -> Result<u8> {
    let ImportWhat::Rsnapshot(args) = what;
    let config = RsnapshotConfig::load(&args.config)?;
    if let Some(out) = &args.inventory_out {
        if args.dry_run {
            out!("{}", config.inventory_toml()?);
        } else {
            config.write_inventory(out)?;
            if !cli.quiet {
                outln!("inventory written to {}", out.display());
            }
        }
    }
    let repo = if args.dry_run {
        open_ro(cli)?
    } else {
        open_rw(cli)?
    };
    let plan = xstore_fleet::rsnapshot::plan_import(&repo, &config)?;
    if args.dry_run {
        if cli.json {
            let forgotten = plan
                .rotated_away
                .iter()
                .map(|id| serde_json::json!({ "snapshot": id.to_string(), "action": "forget" }));
            let items: Vec<_> = forgotten
                .chain(plan.items.iter().map(|(p, a)| {
                    serde_json::json!({
                        "host": p.host, "tier": p.tier, "position": p.position,
                        "time": time_of(p.time_ns), "dir": p.dir,
                        "action": match a {
                            ImportAction::Import => "import",
                            ImportAction::Present(_) => "present",
                            ImportAction::Relabel(_) => "relabel",
                        },
                    })
                }))
                .collect();
            print_json(&items)?;
        } else {
            for (p, a) in &plan.items {
                let what = match a {
                    ImportAction::Import => "import".to_string(),
                    ImportAction::Present(id) => format!("present as {}", id.short()),
                    ImportAction::Relabel(id) => format!("relabel {} as {}", id.short(), p.tier),
                };
                outln!(
                    "{}.{}/{:<28} {}  {what}",
                    p.tier,
                    p.position,
                    p.host,
                    time_of(p.time_ns)
                );
            }
            for id in &plan.rotated_away {
                outln!(
                    "{}  rotated away by rsnapshot: would be forgotten",
                    id.short()
                );
            }
            outln!(
                "{} of {} backup points to import (dry run: nothing changed)",
                plan.to_import(),
                plan.items.len()
            );
        }
        return Ok(EXIT_OK);
    }
    let progress = Arc::new(Progress::default());
    let tracker = crate::Tracker::start(cli, "import", progress.clone());
    let mut results = Vec::new();
    let applied =
        xstore_fleet::rsnapshot::apply_import(&repo, &plan, Some(progress.clone()), &mut |event| {
            match event {
                ImportEvent::Forgotten(id) => {
                    if !cli.quiet && !cli.json {
                        outln!("{}  rotated away by rsnapshot: forgotten", id.short());
                    }
                }
                ImportEvent::Point(point, outcome) => {
                    let (line, id) = match outcome {
                        ImportOutcome::Imported(s) => (
                            format!(
                                "imported as {} ({} read, {} new)",
                                s.id.short(),
                                size(cli, s.stats.bytes_read),
                                size(cli, s.stats.new_stored_bytes)
                            ),
                            Some(s.id),
                        ),
                        ImportOutcome::Present { id, relabelled } => (
                            match relabelled {
                                true => {
                                    format!("present as {}, relabelled {}", id.short(), point.tier)
                                }
                                false => format!("present as {}", id.short()),
                            },
                            Some(*id),
                        ),
                        ImportOutcome::Empty => ("empty: nothing to import".to_string(), None),
                    };
                    if !cli.quiet && !cli.json {
                        outln!(
                            "{}.{}/{:<28} {}  {line}",
                            point.tier,
                            point.position,
                            point.host,
                            time_of(point.time_ns)
                        );
                    }
                    results.push(serde_json::json!({
                        "host": point.host, "tier": point.tier, "position": point.position,
                        "time": time_of(point.time_ns), "snapshot": id.map(|i| i.to_string()),
                        "result": line,
                    }));
                }
            }
        });
    tracker.finish();
    let imported = applied?
        .iter()
        .filter(|o| matches!(o, ImportOutcome::Imported(_)))
        .count() as u64;
    if cli.json {
        crate::print_summary(
            &serde_json::json!({"imported": imported, "points": results}),
            &[],
        )?;
    } else if !cli.quiet {
        outln!(
            "{imported} backup points imported, {} already present",
            plan.items.len() as u64 - imported
        );
    }
    Ok(EXIT_OK)
}
