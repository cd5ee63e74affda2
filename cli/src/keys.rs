//! `xstore key …`: the key slots of an encrypted repository (README, "Encryption").

use std::path::PathBuf;

use anyhow::{Context, Result};
use xstore::keys::read_passphrase_file;
use xstore::{SlotChange, SlotChanged};

use crate::{key_access, open_ro, open_rw, print_json, time_of, Cli, EXIT_OK};

#[derive(clap::Subcommand)]
pub(crate) enum KeyWhat {
    /// List the key slots: id, kind, label, when added.
    List,
    /// Add a key slot: a passphrase (read from a file's first line) or a key file (created
    /// 0600 when missing). Unlocks with the current key first.
    Add(AddArgs),
    /// Remove a key slot (never the last one). Unlocks with a current key first.
    Remove {
        /// The slot's id (`xstore key list`).
        id: u32,
    },
    /// Change a passphrase: the slot XSTORE_PASSPHRASE (or XSTORE_PASSPHRASE_FILE) opens is
    /// replaced by one for the new passphrase.
    Passwd {
        /// The new passphrase, first line of this file.
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: PathBuf,
    },
    /// Print the master key as a recovery text, for paper in a safe. Whoever holds it can
    /// read every backup.
    Export,
}

#[derive(clap::Args)]
pub(crate) struct AddArgs {
    /// Add a passphrase slot for the first line of this file.
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
    /// Add a key-file slot for this file (created when missing).
    #[arg(long, value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// A name for the slot (default: the key file's path, or "passphrase").
    #[arg(long)]
    label: Option<String>,
}

pub(crate) fn key(cli: &Cli, what: &KeyWhat) -> Result<u8> {
    match what {
        KeyWhat::List => list(cli),
        KeyWhat::Export => {
            let repo = open_ro(cli)?;
            let text = repo.recovery_text(&key_access(cli)?)?;
            outln!("{}", text.as_str());
            Ok(EXIT_OK)
        }
        KeyWhat::Add(args) => {
            let change = match (&args.new_passphrase_file, &args.new_key_file) {
                (Some(_), Some(_)) => {
                    anyhow::bail!("give one of --new-passphrase-file and --new-key-file")
                }
                (Some(file), None) => SlotChange::AddPassphrase {
                    passphrase: read_passphrase_file(file)?,
                    label: args.label.clone().unwrap_or_else(|| "passphrase".into()),
                },
                (None, Some(file)) => SlotChange::AddKeyFile {
                    path: std::path::absolute(file).unwrap_or_else(|_| file.clone()),
                    label: args
                        .label
                        .clone()
                        .unwrap_or_else(|| format!("key file {}", file.display())),
                },
                (None, None) => anyhow::bail!("give --new-passphrase-file or --new-key-file"),
            };
            change_slots(cli, change)
        }
        KeyWhat::Remove { id } => change_slots(cli, SlotChange::Remove(*id)),
        KeyWhat::Passwd {
            new_passphrase_file,
        } => {
            let old = key_access(cli)?.passphrase.context(
                "give the current passphrase in XSTORE_PASSPHRASE or XSTORE_PASSPHRASE_FILE",
            )?;
            let new = read_passphrase_file(new_passphrase_file)?;
            change_slots(cli, SlotChange::ChangePassphrase { old, new })
        }
    }
}

fn change_slots(cli: &Cli, change: SlotChange) -> Result<u8> {
    let repo = open_rw(cli)?;
    let changed = repo.change_key_slots(&key_access(cli)?, change)?;
    if cli.quiet {
        return Ok(EXIT_OK);
    }
    match changed {
        SlotChanged::Added {
            id,
            created_key_file,
        } => {
            outln!("added key slot {id}");
            if let Some(path) = created_key_file {
                eprintln!(
                    "xstore: key file {} created: copy it somewhere safe, off this server",
                    path.display()
                );
            }
        }
        SlotChanged::Removed(slot) => outln!("removed key slot {} ({})", slot.id, slot.label),
        SlotChanged::Replaced { old, new } => {
            outln!("passphrase changed: key slot {old} replaced by slot {new}")
        }
    }
    Ok(EXIT_OK)
}

fn list(cli: &Cli) -> Result<u8> {
    let repo = open_ro(cli)?;
    let slots = repo.key_slots()?;
    if cli.json {
        let rows: Vec<_> = slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "kind": slot_kind(s),
                    "label": s.label,
                    "created_ns": s.created_ns,
                })
            })
            .collect();
        return print_json(&rows).map(|()| EXIT_OK);
    }
    outln!("{:>4}  {:<10}  {:<20}  LABEL", "ID", "KIND", "ADDED");
    for s in &slots {
        outln!(
            "{:>4}  {:<10}  {:<20}  {}",
            s.id,
            slot_kind(s),
            time_of(s.created_ns),
            xstore::text::printable(&s.label)
        );
    }
    Ok(EXIT_OK)
}

fn slot_kind(slot: &xstore::keys::KeySlot) -> &'static str {
    slot.kek.name()
}
