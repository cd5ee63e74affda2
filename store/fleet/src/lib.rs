//! # xstore-fleet
//!
//! Many hosts over one xstore repository: the policy of a backup service, kept out of the core
//! library that other tools link.
//!
//! - [`inventory`]: `hosts.toml` — accounts, their allocation and limits, their hosts and how
//!   to reach each one; host selection for the commands.
//! - [`pull`]: pulls over SSH from the hosts' agents, N at a time, each bounded in time and
//!   memory, with the record each pull leaves for monitoring.
//! - [`replica`]: a replica's sync from its primary over SSH (`xstore serve --read-only`).
//! - [`rsnapshot`]: migration from an rsnapshot service (plan, apply).
//! - [`monitor`]: monitoring plugins (freshness, usage against the allocations, verification).
//! - [`metrics`]: Prometheus text.
//!
//! Everything here is a free function or a type over a [`xstore::Repository`]: the core knows
//! nothing of inventories, ssh or plugins.

#![warn(missing_docs)]

pub mod inventory;
pub mod metrics;
pub mod monitor;
pub mod pull;
pub mod replica;
pub mod rsnapshot;

pub use inventory::{
    Account, HostSpec, Inventory, InventoryError, NfsPolicy, SelectError, DEFAULT_LOGICAL_RATIO,
};
pub use pull::{
    pull_fleet, ssh_command, AgentConnection, HostStatus, MassChange, PullOptions, PullOutcome,
    PullReport, DEFAULT_PULL_THREADS, MASS_CHANGE_MIN_FILES, PULL_STACK_BYTES,
};
pub use rsnapshot::{
    BackupPoint, ImportAction, ImportError, ImportEvent, ImportOutcome, ImportPlan,
    RsnapshotBackup, RsnapshotConfig, RsnapshotConfigError, RsnapshotSource,
};
