//! `xstore-agent setup`: a client host's "finishing up", done safely and idempotently, and
//! undone exactly (README, "Set up a client").
//!
//! Plan, then apply: [`plan_setup`] reads the files and returns every change it would make;
//! [`apply`] records the files' previous contents in a state file (durably, before touching
//! anything), writes each file under a temporary name with fsync and rename, checks the sshd
//! configuration with `sshd -t` and that sshd really listens on the backup port (`sshd -T`),
//! and puts everything back if either check fails. [`plan_undo`] reads the state file: a file
//! still as setup left it gets its previous bytes and mode back; an `authorized_keys` edited
//! since loses only the lines setup added; any other file edited since is left alone (named).

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::AgentError;
use crate::ssh::authorized_keys_line;

/// The port sshd listens on for the backup server (besides its existing ports).
pub const DEFAULT_BACKUP_PORT: u16 = 22344;
/// Where setup records what it changed, for `--undo`.
pub const DEFAULT_STATE: &str = "/var/lib/xstore-agent/setup.state";
const STATE_MAGIC: &str = "xstore-agent setup state 1";

/// Everything setup needs; the paths default to Debian's locations.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The backup server's public key (one OpenSSH line).
    pub server_key: String,
    /// The server's address(es), as sshd's `from="…"` takes them.
    pub from: String,
    /// The port sshd listens on for the backup server.
    pub port: u16,
    /// The allow-list's paths; empty writes a commented template.
    pub paths: Vec<PathBuf>,
    /// The forced command of the server's key.
    pub agent_command: String,
    /// root's `authorized_keys`.
    pub authorized_keys: PathBuf,
    /// sshd's main configuration (`/etc/ssh/sshd_config`); the drop-in goes into its
    /// `sshd_config.d/`, which Debian's main configuration includes.
    pub sshd_config: PathBuf,
    /// The agent's allow-list (`/etc/backup.conf`).
    pub backup_conf: PathBuf,
    /// The state file for `--undo`.
    pub state: PathBuf,
    /// The sshd binary for `sshd -t` and `sshd -T`.
    pub sshd: PathBuf,
}

impl SetupOptions {
    /// The sshd drop-in setup writes.
    pub fn dropin(&self) -> PathBuf {
        self.sshd_config
            .parent()
            .unwrap_or(Path::new("/etc/ssh"))
            .join("sshd_config.d/xstore-agent.conf")
    }
}

/// One file's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The file.
    pub path: PathBuf,
    /// Its bytes and mode before (`None`: it did not exist).
    pub before: Option<(Vec<u8>, u32)>,
    /// Its bytes and mode after (`None`: it is removed).
    pub after: Option<(Vec<u8>, u32)>,
    /// Directories to create first (mode 0700), outermost first.
    pub create_dirs: Vec<PathBuf>,
}

impl FileChange {
    /// The change as a unified diff (and mode changes), for `--dry-run`.
    pub fn diff(&self) -> String {
        let text = |v: &Option<(Vec<u8>, u32)>| {
            v.as_ref()
                .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let (old, new) = (text(&self.before), text(&self.after));
        let name = self.path.display().to_string();
        let old_name = match self.before {
            Some(_) => name.clone(),
            None => "/dev/null".into(),
        };
        let new_name = match self.after {
            Some(_) => name.clone(),
            None => "/dev/null".into(),
        };
        let mut out = String::new();
        for d in &self.create_dirs {
            let _ = writeln!(out, "mkdir -m 0700 {}", d.display());
        }
        if old != new || self.before.is_none() != self.after.is_none() {
            let _ = write!(
                out,
                "{}",
                similar::TextDiff::from_lines(&old, &new)
                    .unified_diff()
                    .header(&old_name, &new_name)
            );
        }
        if let (Some((_, a)), Some((_, b))) = (&self.before, &self.after) {
            if a != b {
                let _ = writeln!(out, "chmod {:04o} {name}  (was {:04o})", b, a);
            }
        } else if let (None, Some((_, m))) = (&self.before, &self.after) {
            let _ = writeln!(out, "chmod {m:04o} {name}");
        }
        out
    }
}

/// A plan: the file changes, and what to tell the operator.
#[derive(Debug, Clone, Default)]
pub struct SetupPlan {
    /// Changes, in the order they are applied.
    pub changes: Vec<FileChange>,
    /// Notes (a file kept, a file left alone because it was edited since setup).
    pub notes: Vec<String>,
    /// The state file after the plan (`None`: removed, by an undo).
    state: Option<Vec<u8>>,
    /// Whether the sshd configuration changes (then it is checked and sshd reloaded).
    pub sshd_changes: bool,
    /// Directories setup created, innermost first: an undo removes those left empty.
    pub remove_dirs: Vec<PathBuf>,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> AgentError + '_ {
    move |e| AgentError::Setup(format!("{}: {e}", path.display()))
}

fn read_file(path: &Path) -> Result<Option<(Vec<u8>, u32)>, AgentError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || !m.is_file() => Err(AgentError::Setup(format!(
            "{}: not a regular file; setup does not follow or replace it",
            path.display()
        ))),
        Ok(m) => Ok(Some((
            fs::read(path).map_err(io_at(path))?,
            m.permissions().mode() & 0o7777,
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Directories missing above `path`, outermost first.
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        out.push(d.to_path_buf());
        dir = d.parent();
    }
    out.reverse();
    out
}

/// The drop-in's text for `port`, keeping `keep_ports` (sshd's ports that would otherwise
/// stop: an explicit `Port` replaces the implicit 22). `listen`: whether it names `port`
/// (not when another file does already: sshd would bind it twice and log "Address already
/// in use" at every start).
fn dropin_text(port: u16, keep_ports: &[u16], listen: bool) -> Vec<u8> {
    let mut t = String::from(
        "# Added by `xstore-agent setup` (undo: xstore-agent setup --undo).\n\
         # The backup server's key logs in as root on the backup port and may run only the\n\
         # agent (its authorized_keys line forces the command).\n",
    );
    for p in keep_ports {
        let _ = writeln!(t, "Port {p}");
    }
    if listen {
        let _ = writeln!(t, "Port {port}");
    }
    let _ = write!(
        t,
        "Match LocalPort {port}\n\
         \tPermitRootLogin forced-commands-only\n\
         \tAuthenticationMethods publickey\n\
         \tPasswordAuthentication no\n\
         \tKbdInteractiveAuthentication no\n\
         \tAllowTcpForwarding no\n\
         \tAllowAgentForwarding no\n\
         \tX11Forwarding no\n\
         \tPermitTTY no\n"
    );
    t.into_bytes()
}

fn backup_conf_text(paths: &[PathBuf]) -> Vec<u8> {
    let mut t = String::from(
        "# The trees the xstore backup server may read from this host: one absolute path per\n\
         # line (written by `xstore-agent setup`).\n",
    );
    if paths.is_empty() {
        t.push_str("#/etc\n#/home\n#/var/log\n#/var/www\n");
    }
    for p in paths {
        let _ = writeln!(t, "{}", p.display());
    }
    t.into_bytes()
}

/// The ports named by `Port` lines in the main configuration and the drop-ins other than
/// `ours` (empty: sshd's ports come from our drop-in or the implicit 22).
fn ports_elsewhere(main: &Path, ours: &Path) -> Result<Vec<u16>, AgentError> {
    let mut files = vec![main.to_path_buf()];
    if let Some(dir) = ours.parent() {
        if let Ok(items) = fs::read_dir(dir) {
            for item in items.flatten() {
                let p = item.path();
                if p != ours && p.extension().is_some_and(|e| e == "conf") {
                    files.push(p);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for f in files {
        let text = match fs::read(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_at(&f)(e)),
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let mut words = line.split_whitespace();
            if words.next().is_some_and(|k| k.eq_ignore_ascii_case("port")) {
                // An unparsable value still counts as an explicit port (sshd -t judges it).
                ports.push(words.next().and_then(|p| p.parse().ok()).unwrap_or(0));
            }
        }
    }
    Ok(ports)
}

/// sshd's effective settings with `config` for root connecting to `lport` (`sshd -T -C`,
/// which evaluates Match blocks).
fn sshd_settings(sshd: &Path, config: &Path, lport: u16) -> Result<String, AgentError> {
    let out = Command::new(sshd)
        .arg("-T")
        .arg("-f")
        .arg(config)
        .arg("-C")
        .arg(format!(
            "user=root,host=backup-server,addr=127.0.0.1,laddr=127.0.0.1,lport={lport}"
        ))
        .output()
        .map_err(|e| AgentError::Setup(format!("{}: {e}", sshd.display())))?;
    if !out.status.success() {
        return Err(AgentError::Setup(format!(
            "{} -T -f {}: {}",
            sshd.display(),
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ports sshd listens on with `config`.
fn sshd_ports(sshd: &Path, config: &Path) -> Result<Vec<u16>, AgentError> {
    let settings = sshd_settings(sshd, config, 22)?;
    let mut ports: Vec<u16> = settings
        .lines()
        .filter_map(|l| l.strip_prefix("port "))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Plans setup: reads the files, changes nothing. A second run on a host already set up
/// plans no change.
pub fn plan_setup(opts: &SetupOptions) -> Result<SetupPlan, AgentError> {
    let line = authorized_keys_line(&opts.agent_command, &opts.server_key, &opts.from)?;
    let mut plan = SetupPlan::default();

    // authorized_keys: the line appended once, existing lines kept, mode 0600.
    let keys = read_file(&opts.authorized_keys)?;
    let (mut bytes, mode) = keys.clone().unwrap_or((Vec::new(), 0o600));
    let present = String::from_utf8_lossy(&bytes)
        .lines()
        .any(|l| l.trim() == line);
    if !present {
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    let after = (bytes, mode & 0o7000 | 0o600);
    if keys.as_ref() != Some(&after) {
        plan.changes.push(FileChange {
            path: opts.authorized_keys.clone(),
            create_dirs: missing_dirs(&opts.authorized_keys),
            before: keys,
            after: Some(after),
        });
    }
    if let Some(dir) = opts.authorized_keys.parent().filter(|d| d.exists()) {
        let m = fs::metadata(dir).map_err(io_at(dir))?.permissions().mode();
        if m & 0o022 != 0 {
            plan.notes.push(format!(
                "{} is writable by group or others ({:04o}): sshd's StrictModes refuses keys there; chmod 0700 it",
                dir.display(),
                m & 0o7777
            ));
        }
    }

    // The sshd drop-in: the backup port added, the existing ports kept.
    let dropin = opts.dropin();
    let current = read_file(&dropin)?;
    // `Port` lines add up, but the first one replaces sshd's implicit 22: when no other
    // file names a port, the drop-in names the ports sshd listens on now.
    let elsewhere = ports_elsewhere(&opts.sshd_config, &dropin)?;
    let listen = !elsewhere.contains(&opts.port);
    if !listen {
        plan.notes.push(format!(
            "sshd already listens on port {} (a Port line outside the drop-in): the drop-in adds \
             only its Match block",
            opts.port
        ));
    }
    let keep: Vec<u16> = if !elsewhere.is_empty() {
        Vec::new()
    } else {
        let mut ports = match &current {
            // Our drop-in from an earlier run: the ports it kept are still to keep.
            Some((text, _)) => String::from_utf8_lossy(text)
                .lines()
                .filter_map(|l| l.strip_prefix("Port "))
                .filter_map(|p| p.trim().parse::<u16>().ok())
                .collect(),
            None => sshd_ports(&opts.sshd, &opts.sshd_config)?,
        };
        ports.retain(|p| *p != opts.port);
        ports
    };
    let text = dropin_text(opts.port, &keep, listen);
    if current.as_ref().map(|(t, _)| t) != Some(&text) {
        plan.sshd_changes = true;
        plan.changes.push(FileChange {
            path: dropin.clone(),
            create_dirs: missing_dirs(&dropin),
            before: current,
            after: Some((text, 0o644)),
        });
    }

    // The allow-list: created, never overwritten.
    match read_file(&opts.backup_conf)? {
        Some(_) => plan.notes.push(format!(
            "{} exists: kept as it is",
            opts.backup_conf.display()
        )),
        None => plan.changes.push(FileChange {
            path: opts.backup_conf.clone(),
            create_dirs: missing_dirs(&opts.backup_conf),
            before: None,
            after: Some((backup_conf_text(&opts.paths), 0o644)),
        }),
    }

    // The state: the earliest "before" of each file stays (a second setup does not forget
    // what the host looked like before the first).
    let mut records = match read_file(&opts.state)? {
        Some((bytes, _)) => decode_state(&bytes, &opts.state)?,
        None => Vec::new(),
    };
    for c in &plan.changes {
        match records.iter_mut().find(|r| r.path == c.path) {
            Some(r) => r.after = c.after.clone(),
            None => records.push(c.clone()),
        }
    }
    plan.state = Some(encode_state(&records));
    Ok(plan)
}

/// Plans `--undo` from the state file.
pub fn plan_undo(state: &Path) -> Result<SetupPlan, AgentError> {
    let Some((bytes, _)) = read_file(state)? else {
        return Err(AgentError::Setup(format!(
            "{}: no setup to undo (the state file does not exist)",
            state.display()
        )));
    };
    let mut plan = SetupPlan::default();
    for r in decode_state(&bytes, state)? {
        plan.remove_dirs.extend(r.create_dirs.iter().rev().cloned());
        let now = read_file(&r.path)?;
        if now == r.before {
            continue;
        }
        let dropin = r.path.ends_with("sshd_config.d/xstore-agent.conf");
        if now == r.after {
            plan.sshd_changes |= dropin;
            plan.changes.push(FileChange {
                path: r.path.clone(),
                before: now,
                after: r.before.clone(),
                create_dirs: Vec::new(),
            });
        } else if r.path.file_name().is_some_and(|n| n == "authorized_keys") {
            // Edited since: remove only the lines setup added.
            let before_lines: Vec<String> = r
                .before
                .as_ref()
                .map(|(b, _)| {
                    String::from_utf8_lossy(b)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let added: Vec<String> = r
                .after
                .as_ref()
                .map(|(b, _)| {
                    String::from_utf8_lossy(b)
                        .lines()
                        .filter(|l| !before_lines.iter().any(|x| x == l))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if let Some((bytes, mode)) = &now {
                let kept: String = String::from_utf8_lossy(bytes)
                    .lines()
                    .filter(|l| !added.iter().any(|a| a == l))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if kept.as_bytes() != bytes.as_slice() {
                    plan.changes.push(FileChange {
                        path: r.path.clone(),
                        before: now.clone(),
                        after: Some((kept.into_bytes(), *mode)),
                        create_dirs: Vec::new(),
                    });
                }
            }
            plan.notes.push(format!(
                "{} was edited since setup: removed only the lines setup added",
                r.path.display()
            ));
        } else {
            plan.notes.push(format!(
                "{} was edited since setup: left as it is",
                r.path.display()
            ));
        }
    }
    plan.state = None;
    Ok(plan)
}

/// Writes `bytes` to `path` with `mode` durably: a temporary name in the same directory,
/// fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.xstore-agent-setup.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_at(path))
}

/// Creates `dir` (mode 0700) and fsyncs its parent, so that the entry survives a crash
/// before the files written into it do.
fn create_dir_durably(dir: &Path) -> Result<(), AgentError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_at(parent))
}

fn set_file(path: &Path, content: &Option<(Vec<u8>, u32)>) -> Result<(), AgentError> {
    match content {
        Some((bytes, mode)) => write_durably(path, bytes, *mode),
        None => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(path)(e)),
        },
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Files changed.
    pub changed: Vec<PathBuf>,
}

/// Applies a plan: the state file first, then each file; with sshd changes, `sshd -t` and a
/// check that sshd listens on every port it listened on before plus `port` (for a setup),
/// rolling every file back when a check fails. Reloading sshd is the caller's step.
pub fn apply(
    plan: &SetupPlan,
    opts_state: &Path,
    sshd: &Path,
    sshd_config: &Path,
    port: Option<u16>,
) -> Result<Applied, AgentError> {
    if plan.changes.is_empty() {
        if plan.state.is_none() {
            set_file(opts_state, &None)?;
            for d in &plan.remove_dirs {
                let _ = fs::remove_dir(d);
            }
        }
        return Ok(Applied::default());
    }
    let ports_before = match (plan.sshd_changes, port) {
        (true, Some(_)) => sshd_ports(sshd, sshd_config)?,
        _ => Vec::new(),
    };
    if let Some(state) = &plan.state {
        for d in missing_dirs(opts_state) {
            create_dir_durably(&d)?;
        }
        write_durably(opts_state, state, 0o600)?;
    }
    let mut done: Vec<&FileChange> = Vec::new();
    let result = (|| {
        for c in &plan.changes {
            for d in &c.create_dirs {
                create_dir_durably(d)?;
            }
            done.push(c);
            set_file(&c.path, &c.after)?;
        }
        if plan.sshd_changes {
            check_sshd(sshd, sshd_config, &ports_before, port)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Roll back what was written, newest first; the state then describes nothing new.
        for c in done.iter().rev() {
            let _ = set_file(&c.path, &c.before);
            for d in c.create_dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
        if plan.state.is_some() {
            let _ = fs::remove_file(opts_state);
        }
        return Err(e);
    }
    if plan.state.is_none() {
        set_file(opts_state, &None)?;
        for d in &plan.remove_dirs {
            // Only when empty: what someone put there since stays.
            let _ = fs::remove_dir(d);
        }
    }
    Ok(Applied {
        changed: plan.changes.iter().map(|c| c.path.clone()).collect(),
    })
}

fn check_sshd(
    sshd: &Path,
    config: &Path,
    ports_before: &[u16],
    port: Option<u16>,
) -> Result<(), AgentError> {
    let out = Command::new(sshd)
        .arg("-t")
        .arg("-f")
        .arg(config)
        .output()
        .map_err(|e| AgentError::Setup(format!("{}: {e}", sshd.display())))?;
    if !out.status.success() {
        return Err(AgentError::Setup(format!(
            "sshd -t refused the new configuration (rolled back): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if let Some(port) = port {
        let now = sshd_ports(sshd, config)?;
        let lost: Vec<u16> = ports_before
            .iter()
            .copied()
            .filter(|p| !now.contains(p))
            .collect();
        if !now.contains(&port) {
            return Err(AgentError::Setup(format!(
                "sshd does not read the drop-in (rolled back): {} must include sshd_config.d/*.conf",
                config.display()
            )));
        }
        if !lost.is_empty() {
            return Err(AgentError::Setup(format!(
                "sshd would stop listening on {lost:?} (rolled back)"
            )));
        }
        let on_port = sshd_settings(sshd, config, port)?;
        if !on_port
            .lines()
            .any(|l| l == "permitrootlogin forced-commands-only")
        {
            return Err(AgentError::Setup(format!(
                "an earlier PermitRootLogin in {} overrides the drop-in's on port {port} (rolled back)",
                config.display()
            )));
        }
    }
    Ok(())
}

/// The firewall rules that open `port` to the backup server only (printed, never applied).
pub fn firewall_hint(from: &str, port: u16) -> String {
    let mut out = String::from("Open the backup port to the server only, for example:\n");
    for addr in from.split(',').filter(|a| !a.starts_with('!')) {
        let family = if addr.contains(':') { "ip6" } else { "ip" };
        let _ = writeln!(
            out,
            "  nft add rule inet filter input {family} saddr {addr} tcp dport {port} accept"
        );
    }
    let _ = writeln!(
        out,
        "  nft add rule inet filter input tcp dport {port} drop"
    );
    out
}

fn encode_state(records: &[FileChange]) -> Vec<u8> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let content = |v: &Option<(Vec<u8>, u32)>| match v {
        Some((b, m)) => format!("{m:o} {}", hex(b)),
        None => "-".into(),
    };
    let mut out = format!("{STATE_MAGIC}\n");
    for r in records {
        let _ = writeln!(out, "file {}", hex(r.path.as_os_str().as_encoded_bytes()));
        let dirs: Vec<String> = r
            .create_dirs
            .iter()
            .map(|d| hex(d.as_os_str().as_encoded_bytes()))
            .collect();
        let _ = writeln!(out, "dirs {}", dirs.join(" "));
        let _ = writeln!(out, "before {}", content(&r.before));
        let _ = writeln!(out, "after {}", content(&r.after));
    }
    out.into_bytes()
}

fn decode_state(bytes: &[u8], origin: &Path) -> Result<Vec<FileChange>, AgentError> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |n: usize, what: &str| {
        AgentError::Setup(format!(
            "{}: line {n}: {what} (not a setup state file?)",
            origin.display()
        ))
    };
    let unhex = |n: usize, s: &str| -> Result<Vec<u8>, AgentError> {
        if !s.len().is_multiple_of(2) {
            return Err(bad(n, "odd hex length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad(n, "bad hex"))
            })
            .collect()
    };
    let content = |n: usize, s: &str| -> Result<Option<(Vec<u8>, u32)>, AgentError> {
        if s == "-" {
            return Ok(None);
        }
        let (mode, hex) = s.split_once(' ').unwrap_or((s, ""));
        let mode = u32::from_str_radix(mode, 8).map_err(|_| bad(n, "bad mode"))?;
        Ok(Some((unhex(n, hex)?, mode & 0o7777)))
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad(1, "not UTF-8"))?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    if lines.next().map(|(_, l)| l) != Some(STATE_MAGIC) {
        return Err(bad(1, "wrong header"));
    }
    let mut out = Vec::new();
    while let Some((n, l)) = lines.next() {
        let path = l
            .strip_prefix("file ")
            .ok_or_else(|| bad(n, "expected file"))?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&unhex(n, path)?));
        let mut field = |key: &str| -> Result<(usize, String), AgentError> {
            let (n, l) = lines.next().ok_or_else(|| bad(n, "truncated"))?;
            let v = l
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix(' ').or(r.is_empty().then_some("")))
                .ok_or_else(|| bad(n, key))?;
            Ok((n, v.to_string()))
        };
        let (dn, dirs) = field("dirs")?;
        let (bn, before) = field("before")?;
        let (an, after) = field("after")?;
        let create_dirs = dirs
            .split_whitespace()
            .map(|d| unhex(dn, d).map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b))))
            .collect::<Result<_, _>>()?;
        out.push(FileChange {
            path,
            create_dirs,
            before: content(bn, &before)?,
            after: content(an, &after)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let records = vec![
            FileChange {
                path: "/root/.ssh/authorized_keys".into(),
                before: Some((b"ssh-ed25519 AAAA x\n".to_vec(), 0o644)),
                after: Some((b"ssh-ed25519 AAAA x\nmore\n".to_vec(), 0o600)),
                create_dirs: vec![],
            },
            FileChange {
                path: "/etc/backup.conf".into(),
                before: None,
                after: Some((Vec::new(), 0o644)),
                create_dirs: vec!["/etc/a".into(), "/etc/a/b".into()],
            },
        ];
        let bytes = encode_state(&records);
        assert_eq!(decode_state(&bytes, Path::new("s")).unwrap(), records);
        for bad in [
            &b""[..],
            b"xstore-agent setup state 1\nfile zz\n",
            b"xstore-agent setup state 1\nfile 2f\ndirs\nbefore 644 abc\nafter -\n",
            b"xstore-agent setup state 1\nfile 2f\ndirs\n",
            b"other\n",
        ] {
            assert!(decode_state(bad, Path::new("s")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn firewall_hint_names_each_address() {
        let h = firewall_hint("192.0.2.1,2001:db8::1", 22344);
        assert!(h.contains("ip saddr 192.0.2.1 tcp dport 22344 accept"));
        assert!(h.contains("ip6 saddr 2001:db8::1 tcp dport 22344 accept"));
    }
}
