//! The inventory (`hosts.toml`): accounts, their package (soft allocation) and their hosts,
//! with how to reach each one. `pull --all` backs up every host it lists; the operations
//! commands compare usage with the allocations. See README §Set up the server for an example.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use xstore_format::host::HostName;

use serde::Deserialize;
use xstore_retention::Schedule;

/// Default SSH port of the backup agent on clients.
pub const DEFAULT_AGENT_PORT: u16 = 22344;
/// Default hard limit of an account, as a multiple of its allocation.
pub const DEFAULT_HARD_LIMIT_FACTOR: f64 = 3.0;
/// Default [`Account::logical_ratio`]: far above any honest host's (see
/// [`xstore::Usage::logical_ratio`]).
pub const DEFAULT_LOGICAL_RATIO: u64 = 1000;
/// Default fraction of a host's files a pull may rewrite or remove before it raises the
/// mass-change alarm.
pub const DEFAULT_MASS_CHANGE: f64 = 0.5;
/// Default per-host time limit of a pull.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// A problem with the inventory file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InventoryError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, and where.
    pub reason: String,
}

/// Why [`Inventory::select`] found no hosts to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No host names, no `--all`, no `--account`.
    #[error("name the hosts, or give --all or --account")]
    NothingNamed,
    /// The account is not in the inventory.
    #[error("account {0} is not in the inventory")]
    UnknownAccount(String),
    /// The host is not in the inventory; `similar` names inventory hosts whose short name
    /// it is (`web1` for `web1.example.net`).
    #[error("host {name} is not in the inventory{}", did_you_mean(similar))]
    UnknownHost {
        /// The name asked for.
        name: String,
        /// Inventory hosts it may have meant.
        similar: Vec<String>,
    },
}

fn did_you_mean(similar: &[String]) -> String {
    match similar {
        [] => String::new(),
        names => format!(" (did you mean {}?)", names.join(" or ")),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    port: Option<u16>,
    user: Option<String>,
    identity: Option<PathBuf>,
    timeout: Option<String>,
    ssh: Option<String>,
    ssh_config: Option<PathBuf>,
    #[serde(default)]
    ssh_options: Vec<String>,
    agent_command: Option<String>,
    warning_age: Option<String>,
    critical_age: Option<String>,
    hard_limit_factor: Option<f64>,
    pull_cap: Option<toml::Value>,
    mass_change: Option<f64>,
    raw_chunks: Option<bool>,
    logical_ratio: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<PathBuf>,
    timeout: Option<String>,
    #[serde(default)]
    ssh_options: Vec<String>,
    paths: Option<Vec<PathBuf>>,
    schedule: Option<String>,
    warning_age: Option<String>,
    critical_age: Option<String>,
    mass_change: Option<f64>,
    raw_chunks: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    package: Option<String>,
    allocation: Option<toml::Value>,
    hard_limit: Option<toml::Value>,
    logical_ratio: Option<u64>,
    nfs_port: Option<u16>,
    #[serde(default)]
    no_root_squash: bool,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    nfs_per_host: bool,
    #[serde(default, rename = "host")]
    hosts: Vec<RawHost>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    packages: BTreeMap<String, toml::Value>,
    #[serde(default, rename = "account")]
    accounts: Vec<RawAccount>,
}

/// One account (a customer) and its soft allocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    /// Account name.
    pub name: String,
    /// The package's name, if the allocation came from one.
    pub package: Option<String>,
    /// Soft allocation in bytes: exceeding it is reported, backups keep running.
    pub allocation: u64,
    /// Hard limit in bytes (referenced stored bytes, as check-usage counts them): a pull
    /// that would take the account past it fails before its commit. `hard_limit`, or the
    /// allocation times `hard_limit_factor` ([`DEFAULT_HARD_LIMIT_FACTOR`]).
    pub hard_limit: u64,
    /// A host of the account whose newest snapshot holds more than this many times the
    /// distinct bytes it references ([`xstore::Usage::logical_ratio`]) is flagged in `du`,
    /// `check-usage` (WARNING) and metrics: it names far more file bytes than it ever sent,
    /// and restoring it would write all of them. `logical_ratio` (per account or in the
    /// defaults; [`DEFAULT_LOGICAL_RATIO`]).
    pub logical_ratio: u64,
    /// How the account's NFS export treats its clients.
    pub nfs: NfsPolicy,
    /// The account's host names.
    pub hosts: Vec<HostName>,
}

/// An account's NFS export settings (`nfs_port`, `no_root_squash`, `insecure`,
/// `nfs_per_host` in its `[[account]]` table). The defaults are the kernel server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct NfsPolicy {
    /// The export's fixed port (`nfs_port`); `None`: counted from the listen port by the
    /// account's position, which moves when accounts are added or removed.
    pub port: Option<u16>,
    /// Root (uid 0) keeps its powers instead of acting as the anonymous user
    /// (`no_root_squash = true`).
    pub no_root_squash: bool,
    /// Requests from unprivileged source ports (1024 and up) are served (`insecure = true`).
    pub insecure: bool,
    /// Each client address sees only the snapshots of the hosts at that address, not the
    /// whole account's (`nfs_per_host = true`), as the per-host exports of rsnapshot did.
    pub per_host: bool,
}

/// Everything needed to pull one host, with defaults applied.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostSpec {
    /// Host name (snapshots are recorded under it).
    pub name: HostName,
    /// The account it belongs to.
    pub account: String,
    /// Address or name to connect to.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private key file (`ssh -i`), if not from ssh's own configuration.
    pub identity: Option<PathBuf>,
    /// The ssh program.
    pub ssh: String,
    /// `ssh -F FILE`, if set.
    pub ssh_config: Option<PathBuf>,
    /// Extra `-o KEY=VALUE` options.
    pub ssh_options: Vec<String>,
    /// The command asked of the remote side (its forced command runs the agent anyway).
    pub agent_command: String,
    /// Paths to back up; empty means the client's whole allow-list.
    pub paths: Vec<PathBuf>,
    /// Tier schedule override for this host.
    #[serde(serialize_with = "ser_schedule")]
    pub schedule: Option<Schedule>,
    /// Time limit of one pull.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Fraction (0–1) of the previous snapshot's files that a pull may rewrite or remove
    /// before it raises the mass-change alarm (`mass_change`, default
    /// [`DEFAULT_MASS_CHANGE`]; above 1 turns it off).
    pub mass_change: f64,
    /// Most new stored bytes one pull of the host may add (`pull_cap`; default: its
    /// account's hard limit). A pull that would add more fails before its commit.
    pub pull_cap: u64,
    /// Whether the agent may send chunks uncompressed when its CPU bounds the pull, to be
    /// stored so until `xstore compact` (`raw_chunks`, default true;
    /// [`xstore::SessionTerms::raw_chunks`]).
    pub raw_chunks: bool,
    /// Freshness: WARNING once the newest complete snapshot is older (None: the check's own).
    #[serde(serialize_with = "ser_opt_duration")]
    pub warning_age: Option<Duration>,
    /// Freshness: CRITICAL once the newest complete snapshot is older (None: the check's own).
    #[serde(serialize_with = "ser_opt_duration")]
    pub critical_age: Option<Duration>,
}

fn ser_schedule<S: serde::Serializer>(v: &Option<Schedule>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => s.serialize_some(&x.to_string()),
        None => s.serialize_none(),
    }
}

fn ser_duration<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.as_secs())
}

fn ser_opt_duration<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

/// A parsed, validated inventory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Inventory {
    /// Accounts in file order.
    pub accounts: Vec<Account>,
    /// Hosts in file order.
    pub hosts: Vec<HostSpec>,
}

/// A text [`parse_size`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number where the size starts.
    #[error("{0:?}: expected a size such as 2GiB or 500MB")]
    NotASize(String),
    /// A unit other than B, kB, K, KiB, MB, M, MiB, GB, G, GiB, TB, T, TiB.
    #[error("{text:?}: unknown unit {unit:?}")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// Its unit.
        unit: String,
    },
    /// More bytes than 64 bits count.
    #[error("{0:?}: out of range")]
    OutOfRange(String),
}

/// Parses `2 GiB`, `500MB`, `8G`, `1048576` (bytes). Binary units (KiB…) are powers of 1024,
/// decimal units (kB, MB, GB, TB) powers of 1000; a bare `K`/`M`/`G`/`T` is binary.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| SizeError::NotASize(text.to_string()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "KB" => 1000,
        "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(SizeError::UnknownUnit {
                text: text.to_string(),
                unit: other.to_string(),
            })
        }
    };
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(SizeError::OutOfRange(text.to_string()));
    }
    Ok(bytes.round() as u64)
}

fn size_value(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        toml::Value::String(s) => parse_size(s).map_err(|e| e.to_string()),
        other => Err(format!(
            "{} {other:?}: expected a size such as \"2 GiB\"",
            other.type_str()
        )),
    }
}

/// Characters an account name may have: it appears in status lines, perfdata labels,
/// metrics labels and file names.
const ACCOUNT_CHARS: &str = "._-@+";
/// Characters a host name may have besides letters and digits.
const HOST_CHARS: &str = "._-";
/// Characters an address may have besides letters and digits (names, IPv4, IPv6, zones).
const ADDRESS_CHARS: &str = "._-:%";
/// Characters a remote user name may have besides letters and digits.
const USER_CHARS: &str = "._-";

/// Refuses a name from the inventory with anything but ASCII letters, digits and `extra`:
/// no control characters (they would forge lines in plugin output and logs), no shell
/// metacharacters or spaces, and no leading `-` (never an option to ssh).
fn check_word(value: &str, what: &str, extra: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.starts_with('-') {
        return Err(format!("{what} {value:?} starts with '-'"));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
    {
        // Debug formatting escapes control characters: the message is one safe line.
        Some(c) => Err(format!(
            "{what} {value:?} contains {c:?}; allowed: letters, digits and {extra:?}"
        )),
        None => Ok(()),
    }
}

/// Whether `name` may name an account (the rule `hosts.toml` is read with), for tools that
/// take an account name elsewhere (the web front's users).
pub fn check_account_name(name: &str) -> Result<(), String> {
    check_word(name, "account name", ACCOUNT_CHARS)
}

fn duration_value(text: &str) -> Result<Duration, String> {
    let ns = xstore_retention::parse_duration(text).map_err(|e| e.to_string())?;
    let ns = u64::try_from(ns).map_err(|_| format!("{text:?}: must be positive"))?;
    if ns == 0 {
        return Err(format!("{text:?}: must be positive"));
    }
    Ok(Duration::from_nanos(ns))
}

impl Inventory {
    /// Parses and validates inventory text. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Inventory, InventoryError> {
        let fail = |reason: String| InventoryError {
            path: origin.to_path_buf(),
            reason,
        };
        let raw: RawInventory = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        let mut packages = BTreeMap::new();
        for (name, v) in &raw.packages {
            let size = size_value(v).map_err(|e| fail(format!("package {name}: {e}")))?;
            packages.insert(name.clone(), size);
        }
        let d = &raw.defaults;
        let defaults = resolve_defaults(d).map_err(fail)?;
        let mut accounts: Vec<Account> = Vec::new();
        let mut hosts = Vec::new();
        let mut host_names = HashSet::new();
        for a in &raw.accounts {
            let mut account = account(a, &packages, d, &defaults, &accounts).map_err(fail)?;
            for h in &a.hosts {
                let at =
                    |e: String| fail(format!("host {}: {e}", xstore::text::printable(&h.name)));
                let spec = host_spec(
                    h,
                    &a.name,
                    account.hard_limit,
                    d,
                    &defaults,
                    &mut host_names,
                );
                let spec = spec.map_err(at)?;
                account.hosts.push(spec.name.clone());
                hosts.push(spec);
            }
            accounts.push(account);
        }
        Ok(Inventory { accounts, hosts })
    }

    /// Reads and parses an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|e| InventoryError {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// The inventory at a default location: `None` only when no file is there. A file (or a
    /// directory on the way) that cannot be read is an error naming the path, never taken
    /// for "no inventory": a check run by a user who may not read it must say UNKNOWN, not
    /// judge hosts without their thresholds.
    pub fn load_default(path: &Path) -> Result<Option<Inventory>, InventoryError> {
        match path.try_exists() {
            Ok(false) => Ok(None),
            Ok(true) => Self::load(path).map(Some),
            Err(e) => Err(InventoryError {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// An account by name.
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The hosts a command names: every host (`all`), the hosts of `account`, or the hosts
    /// in `names`, in inventory order for the first two and in the given order for names.
    /// Naming nothing, an unknown account or an unknown host is an error.
    pub fn select(
        &self,
        names: &[String],
        all: bool,
        account: Option<&str>,
    ) -> Result<Vec<HostSpec>, SelectError> {
        if all {
            return Ok(self.hosts.clone());
        }
        if let Some(a) = account {
            let account = self
                .account(a)
                .ok_or_else(|| SelectError::UnknownAccount(a.to_string()))?;
            return Ok(self
                .hosts
                .iter()
                .filter(|h| account.hosts.contains(&h.name))
                .cloned()
                .collect());
        }
        if names.is_empty() {
            return Err(SelectError::NothingNamed);
        }
        names
            .iter()
            .map(|name| {
                self.host(name)
                    .cloned()
                    .ok_or_else(|| SelectError::UnknownHost {
                        name: name.clone(),
                        similar: self
                            .hosts
                            .iter()
                            .filter(|h| h.name.split('.').next() == Some(name.as_str()))
                            .map(|h| h.name.to_string())
                            .collect(),
                    })
            })
            .collect()
    }
}

/// The defaults of `[defaults]`, resolved.
struct Defaults {
    timeout: Duration,
    warning_age: Option<Duration>,
    critical_age: Option<Duration>,
    pull_cap: Option<u64>,
    hard_limit_factor: f64,
}

/// `duration_value` of an optional field, the field named in its error.
fn age(v: &Option<String>, what: &str) -> Result<Option<Duration>, String> {
    v.as_deref()
        .map(duration_value)
        .transpose()
        .map_err(|e| format!("{what}: {e}"))
}

fn resolve_defaults(d: &RawDefaults) -> Result<Defaults, String> {
    let timeout = match &d.timeout {
        Some(t) => duration_value(t).map_err(|e| format!("defaults.timeout: {e}"))?,
        None => DEFAULT_PULL_TIMEOUT,
    };
    let hard_limit_factor = d.hard_limit_factor.unwrap_or(DEFAULT_HARD_LIMIT_FACTOR);
    if !(hard_limit_factor.is_finite() && hard_limit_factor >= 1.0) {
        return Err(format!(
            "defaults.hard_limit_factor {hard_limit_factor}: must be at least 1"
        ));
    }
    let pull_cap = d
        .pull_cap
        .as_ref()
        .map(size_value)
        .transpose()
        .map_err(|e| format!("defaults.pull_cap: {e}"))?;
    Ok(Defaults {
        timeout,
        warning_age: age(&d.warning_age, "defaults.warning_age")?,
        critical_age: age(&d.critical_age, "defaults.critical_age")?,
        pull_cap,
        hard_limit_factor,
    })
}

/// One host of account `account` (whose hard limit caps its pulls), checked; the error does
/// not name the host (the caller does).
fn host_spec(
    h: &RawHost,
    account: &str,
    hard_limit: u64,
    d: &RawDefaults,
    defaults: &Defaults,
    host_names: &mut HashSet<String>,
) -> Result<HostSpec, String> {
    let name = HostName::parse(&h.name).map_err(|e| e.to_string())?;
    check_word(&h.name, "host name", HOST_CHARS)?;
    if let Some(address) = &h.address {
        check_word(address, "address", ADDRESS_CHARS)?;
    }
    if let Some(user) = h.user.as_ref().or(d.user.as_ref()) {
        check_word(user, "user", USER_CHARS)?;
    }
    if !host_names.insert(h.name.clone()) {
        return Err("listed twice".into());
    }
    let mut paths = Vec::new();
    for p in h.paths.iter().flatten() {
        if !p.is_absolute() {
            return Err(format!("path {} is not absolute", p.display()));
        }
        paths.push(p.clone());
    }
    let schedule = match &h.schedule {
        Some(s) => Some(Schedule::parse(s).map_err(|e| e.to_string())?),
        None => None,
    };
    let timeout = match &h.timeout {
        Some(t) => duration_value(t).map_err(|e| format!("timeout: {e}"))?,
        None => defaults.timeout,
    };
    let warning_age = age(&h.warning_age, "warning_age")?.or(defaults.warning_age);
    let critical_age = age(&h.critical_age, "critical_age")?.or(defaults.critical_age);
    if let (Some(w), Some(c)) = (warning_age, critical_age) {
        if w > c {
            return Err("warning_age is longer than critical_age".into());
        }
    }
    let mass_change = h
        .mass_change
        .or(d.mass_change)
        .unwrap_or(DEFAULT_MASS_CHANGE);
    if !(mass_change.is_finite() && mass_change > 0.0) {
        return Err(format!("mass_change {mass_change}: must be above 0"));
    }
    let mut ssh_options = d.ssh_options.clone();
    ssh_options.extend(h.ssh_options.iter().cloned());
    if let Some(bad) = ssh_options.iter().find(|o| !o.contains('=')) {
        return Err(format!("ssh option {bad:?} is not KEY=VALUE"));
    }
    Ok(HostSpec {
        name,
        account: account.to_string(),
        address: h.address.clone().unwrap_or_else(|| h.name.clone()),
        port: h.port.or(d.port).unwrap_or(DEFAULT_AGENT_PORT),
        user: h
            .user
            .clone()
            .or_else(|| d.user.clone())
            .unwrap_or_else(|| "root".into()),
        identity: h.identity.clone().or_else(|| d.identity.clone()),
        ssh: d.ssh.clone().unwrap_or_else(|| "ssh".into()),
        ssh_config: d.ssh_config.clone(),
        ssh_options,
        agent_command: d
            .agent_command
            .clone()
            .unwrap_or_else(|| "xstore agent".into()),
        paths,
        schedule,
        timeout,
        pull_cap: defaults.pull_cap.unwrap_or(hard_limit).min(hard_limit),
        raw_chunks: h.raw_chunks.or(d.raw_chunks).unwrap_or(true),
        mass_change,
        warning_age,
        critical_age,
    })
}

/// One account, checked (its hosts are checked by [`host_spec`]), against the accounts
/// before it.
fn account(
    a: &RawAccount,
    packages: &BTreeMap<String, u64>,
    d: &RawDefaults,
    defaults: &Defaults,
    accounts: &[Account],
) -> Result<Account, String> {
    if a.name.trim().is_empty() {
        return Err("an account has an empty name".into());
    }
    check_account_name(&a.name).map_err(|e| format!("account {:?}: {e}", a.name))?;
    if accounts.iter().any(|o| o.name == a.name) {
        return Err(format!("account {} is listed twice", a.name));
    }
    let allocation = match (&a.package, &a.allocation) {
        (Some(p), None) => *packages
            .get(p)
            .ok_or_else(|| format!("account {}: package {p:?} is not in [packages]", a.name))?,
        (None, Some(v)) => size_value(v).map_err(|e| format!("account {}: {e}", a.name))?,
        _ => {
            return Err(format!(
                "account {}: give exactly one of package or allocation",
                a.name
            ))
        }
    };
    let hard_limit = match &a.hard_limit {
        Some(v) => size_value(v).map_err(|e| format!("account {}: {e}", a.name))?,
        None => (allocation as f64 * defaults.hard_limit_factor).min(u64::MAX as f64) as u64,
    };
    let logical_ratio = a
        .logical_ratio
        .or(d.logical_ratio)
        .unwrap_or(DEFAULT_LOGICAL_RATIO);
    if logical_ratio == 0 {
        return Err(format!(
            "account {}: logical_ratio must be at least 1",
            a.name
        ));
    }
    if hard_limit < allocation {
        return Err(format!(
            "account {}: hard_limit is below the allocation",
            a.name
        ));
    }
    if let Some(port) = a.nfs_port {
        if port == 0 {
            return Err(format!("account {}: nfs_port 0", a.name));
        }
        if let Some(other) = accounts
            .iter()
            .find(|o: &&Account| o.nfs.port == Some(port))
        {
            return Err(format!(
                "account {}: nfs_port {port} is already account {}'s",
                a.name, other.name
            ));
        }
    }
    Ok(Account {
        name: a.name.clone(),
        package: a.package.clone(),
        allocation,
        hard_limit,
        logical_ratio,
        nfs: NfsPolicy {
            port: a.nfs_port,
            no_root_squash: a.no_root_squash,
            insecure: a.insecure,
            per_host: a.nfs_per_host,
        },
        // Filled by the caller as each host is checked.
        hosts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/hosts.toml");

    #[test]
    fn names_with_control_or_shell_characters_are_refused_naming_the_entry() {
        let inventory = |account: &str, host: &str, extra: &str| {
            format!(
                "[[account]]\nname = \"{account}\"\nallocation = \"1 GiB\"\n\n\
                 [[account.host]]\nname = \"{host}\"\n{extra}"
            )
        };
        let error = |text: String| {
            Inventory::parse(&text, Path::new("hosts.toml"))
                .expect_err("refused")
                .to_string()
        };
        assert!(Inventory::parse(
            &inventory("acme-1", "web1.example.net", "address = \"fe80::1%eth0\"\n"),
            Path::new("hosts.toml")
        )
        .is_ok());
        let e = error(inventory("acme\\nOK: fine", "web1", ""));
        assert!(
            e.starts_with("hosts.toml: account \"acme\\nOK: fine\": account name"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = error(inventory("acme\\\"x", "web1", ""));
        assert!(e.contains("contains '\"'"), "{e}");
        let e = error(inventory(
            "acme",
            "web1",
            "address = \"-oProxyCommand=sh\"\n",
        ));
        assert!(
            e.contains("host web1: address \"-oProxyCommand=sh\" starts with '-'"),
            "{e}"
        );
        let e = error(inventory("acme", "web1", "address = \"h;reboot\"\n"));
        assert!(e.contains("contains ';'"), "{e}");
        let e = error(inventory("acme", "web1", "user = \"root$(id)\"\n"));
        assert!(e.contains("user \"root$(id)\" contains '$'"), "{e}");
    }

    #[test]
    fn select_names_all_an_account_or_hosts_and_refuses_the_unknown() {
        let inv = Inventory::parse(EXAMPLE, Path::new("hosts.toml")).expect("example");
        let names = |hosts: Vec<HostSpec>| hosts.into_iter().map(|h| h.name).collect::<Vec<_>>();
        assert_eq!(
            names(inv.select(&[], true, None).expect("all")),
            ["web1.example.net", "web2.example.net", "db1.example.org"]
        );
        assert_eq!(
            names(inv.select(&[], false, Some("acme")).expect("acme")),
            ["web1.example.net", "web2.example.net"]
        );
        let asked = [
            "db1.example.org".to_string(),
            "web1.example.net".to_string(),
        ];
        assert_eq!(
            names(inv.select(&asked, false, None).expect("named")),
            asked
        );
        assert_eq!(
            inv.select(&[], false, None).err(),
            Some(SelectError::NothingNamed)
        );
        assert_eq!(
            inv.select(&[], false, Some("nobody")).err(),
            Some(SelectError::UnknownAccount("nobody".into()))
        );
        assert_eq!(
            inv.select(&["web9".to_string()], false, None).err(),
            Some(SelectError::UnknownHost {
                name: "web9".into(),
                similar: Vec::new()
            })
        );
        let short = inv
            .select(&["web1".to_string()], false, None)
            .expect_err("a short name");
        assert_eq!(
            short.to_string(),
            "host web1 is not in the inventory (did you mean web1.example.net?)"
        );
    }

    #[test]
    fn the_documented_example_parses() {
        let inv = Inventory::parse(EXAMPLE, Path::new("hosts.toml")).expect("example");
        assert_eq!(inv.accounts.len(), 2);
        let acme = inv.account("acme").expect("acme");
        assert_eq!(acme.allocation, 2 << 30);
        let web1 = inv.host("web1.example.net").expect("web1");
        assert_eq!(web1.port, DEFAULT_AGENT_PORT);
        assert_eq!(web1.user, "root");
        assert_eq!(web1.account, "acme");
        let db = inv.host("db1.example.org").expect("db1");
        assert_eq!(
            db.paths,
            vec![PathBuf::from("/etc"), PathBuf::from("/var/lib/backup")]
        );
        assert_eq!(
            db.schedule.as_ref().map(ToString::to_string).as_deref(),
            Some("hourly=6,daily=14,weekly=4,monthly=3")
        );
        assert_eq!(db.timeout, Duration::from_secs(3 * 3600));
        assert_eq!(db.warning_age, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(db.critical_age, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(web1.warning_age, None);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("[[account]]\nname = \"a\"\npackage = \"nope\"\n", "package \"nope\""),
            ("[[account]]\nname = \"a\"\n", "exactly one of package or allocation"),
            (
                "[[account]]\nname = \"a\"\nallocation = \"2 GiB\"\n[[account.host]]\nname = \"h\"\npaths = [\"etc\"]\n",
                "not absolute",
            ),
            (
                "[[account]]\nname = \"a\"\nallocation = 5\n[[account.host]]\nname = \"h\"\n[[account.host]]\nname = \"h\"\n",
                "listed twice",
            ),
            ("[defaults]\nprot = 1\n", "unknown field"),
            ("[packages]\nsmall = \"2 parsecs\"\n", "unknown unit"),
            (
                "[[account]]\nname = \"a\"\nallocation = 5\n[[account.host]]\nname = \"h\"\nwarning_age = \"9h\"\ncritical_age = \"8h\"\n",
                "host h: warning_age is longer",
            ),
            ("[defaults]\nwarning_age = \"soon\"\n", "defaults.warning_age"),
        ];
        for (text, want) in cases {
            let e = Inventory::parse(text, Path::new("inv.toml")).expect_err(text);
            assert!(e.to_string().contains(want), "{e} should mention {want}");
            assert!(e.to_string().starts_with("inv.toml: "), "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
    }
}
