//! Pulling hosts over SSH (ARCHITECTURE.md invariant 10): run the system `ssh` to the client, whose forced
//! command is `xstore agent`, and back up the agent's stream as a [`RemoteSource`].
//!
//! A pull either commits a snapshot (complete, or partial with every failed path listed) or
//! commits nothing: a dropped connection, a protocol violation or the per-host timeout make
//! the backup fail before its commit ([`xstore::Source::finish`]), and its packs are removed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use xstore_format::host::HostName;

use crate::inventory::{Account, HostSpec};
use xstore::Repository;
use xstore::SharedIngest;
use xstore::StoreBudget;
use xstore::{BackupError, Error, Result};
use xstore::{BackupOptions, ParentChoice, Progress, TierChoice};
use xstore::{RemoteSource, SessionTerms};
use xstore_format::records::HostRecord;
use xstore_format::snapshot::{Snapshot, SnapshotId};

/// A parent snapshot with fewer files is never compared for a mass change.
pub const MASS_CHANGE_MIN_FILES: u64 = 50;
/// Requests kept in flight on one agent connection by default (ingest threads of a pull).
pub const DEFAULT_PULL_THREADS: usize = 16;
/// Stack of each ingest thread of a pull. The walk does not recurse per directory level (each
/// directory is a job of its own), so no depth a client chooses reaches a stack; this is
/// headroom for the jobs rayon runs on a thread that waits inside a scope. Only the pages
/// touched are ever committed.
pub const PULL_STACK_BYTES: usize = 16 * 1024 * 1024;
/// Lines of ssh's stderr kept for error messages.
const STDERR_LINES: usize = 20;
/// Longest line of ssh's (and the agent's) stderr kept; the rest of a longer line is
/// dropped and counted. A client must not make the server hold or print an unbounded line.
pub const STDERR_LINE_BYTES: usize = 1024;

/// Calls `each` with every line of `from`, at most `max` bytes of it kept (the rest counted
/// in the line's tail), control characters escaped ([`xstore::text::printable`]). Memory
/// stays bounded whatever `from` sends.
fn bounded_lines(from: impl std::io::Read, max: usize, mut each: impl FnMut(String)) {
    let mut reader = BufReader::with_capacity(64 * 1024, from);
    let mut line: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    let mut emit = |line: &mut Vec<u8>, dropped: &mut usize| {
        let mut text = xstore::text::printable_bytes(line);
        if *dropped > 0 {
            text.push_str(&format!("… ({dropped} more bytes)"));
        }
        each(text);
        line.clear();
        *dropped = 0;
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (len, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(line.len()).min(len);
        line.extend_from_slice(&buf[..room]);
        dropped += len - room;
        reader.consume(len + usize::from(newline));
        if newline {
            emit(&mut line, &mut dropped);
        }
    }
    if !line.is_empty() || dropped > 0 {
        emit(&mut line, &mut dropped);
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Replaces every host's timeout.
    pub timeout: Option<Duration>,
    /// Ingest threads, each with one request in flight (0: [`DEFAULT_PULL_THREADS`]).
    pub threads: usize,
    /// Which tier the new snapshot enters.
    pub tier: TierChoice,
    /// Read every file instead of trusting the previous snapshot's metadata.
    pub no_parent: bool,
    /// Live counters.
    pub progress: Option<Arc<Progress>>,
    /// The inventory's accounts: [`pull_all`] gives each account of the hosts it
    /// pulls a budget of its room below its hard limit ([`PullOptions::account_budgets`]).
    pub accounts: Vec<Account>,
    /// Per account, the stored bytes its pulls may still add (filled by
    /// [`pull_all`] from `accounts`; a single [`pull`] uses what
    /// is given here). Every pull is also capped by its host's `pull_cap`.
    pub account_budgets: HashMap<String, Arc<StoreBudget>>,
}

/// How a pull ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullOutcome {
    /// A complete snapshot was committed.
    Ok,
    /// A snapshot was committed, with paths that could not be read.
    Partial,
    /// Nothing was committed.
    Failed,
}

impl PullOutcome {
    /// `ok`, `partial` or `failed`.
    pub fn name(self) -> &'static str {
        match self {
            PullOutcome::Ok => "ok",
            PullOutcome::Partial => "partial",
            PullOutcome::Failed => "failed",
        }
    }
}

/// The outcome of one host's pull. The newest one of each host is kept in
/// `REPO/pulls/HOST.json` ([`last_pull`]; FORMAT.md §Pull records).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PullReport {
    /// Host name.
    pub host: HostName,
    /// Its account.
    pub account: String,
    /// How it ended.
    pub outcome: PullOutcome,
    /// The snapshot committed, if any (hex in the record).
    #[serde(with = "xstore_format::snapshot::opt_hex_serde", default)]
    pub snapshot: Option<SnapshotId>,
    /// Why it failed.
    pub error: Option<String>,
    /// Start, ns since the epoch.
    #[serde(default)]
    pub started_ns: i64,
    /// End, ns since the epoch.
    #[serde(default)]
    pub finished_ns: i64,
    /// Wall time of the pull.
    pub seconds: f64,
    /// Logical bytes of the snapshot (what was scanned).
    pub bytes_scanned: u64,
    /// Bytes over the connection, both directions.
    pub wire_bytes: u64,
    /// New bytes stored in packs.
    pub new_stored_bytes: u64,
    /// Paths that could not be read.
    pub errors: u64,
    /// Set when the pull rewrote or removed most of the host's files compared with its
    /// parent (ransomware, a wiped disk): what changed, and that the parent was pinned so
    /// it cannot rotate out before someone looks. Monitoring shows the host as WARNING.
    /// It stays on the host's later pull records while that snapshot is pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass_change: Option<MassChange>,
}

/// A mass-change alarm ([`PullReport::mass_change`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MassChange {
    /// What changed, in words.
    pub message: String,
    /// The snapshot pinned (hex in the record): the alarm lasts while it stays pinned.
    #[serde(with = "xstore_format::snapshot::hex_serde")]
    pub pinned: SnapshotId,
}

impl PullReport {
    fn of(
        host: &HostSpec,
        started_ns: i64,
        started: Instant,
        result: &Result<Snapshot>,
    ) -> PullReport {
        let mut r = PullReport {
            host: host.name.clone(),
            account: host.account.clone(),
            outcome: PullOutcome::Failed,
            snapshot: None,
            error: None,
            started_ns,
            finished_ns: xstore::now_ns(),
            seconds: started.elapsed().as_secs_f64(),
            bytes_scanned: 0,
            wire_bytes: 0,
            new_stored_bytes: 0,
            errors: 0,
            mass_change: None,
        };
        match result {
            Ok(s) => {
                r.outcome = if s.is_complete() {
                    PullOutcome::Ok
                } else {
                    PullOutcome::Partial
                };
                r.snapshot = Some(s.id);
                r.bytes_scanned = s.stats.logical_bytes;
                r.wire_bytes = s.stats.wire_bytes;
                r.new_stored_bytes = s.stats.new_stored_bytes;
                r.errors = s.stats.errors;
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        r
    }
}

/// The ssh option xstore adds for bulk transfers: AES-GCM ahead of ssh's default cipher
/// order, which starts with chacha20-poly1305. With the CPU's AES instructions (x86 AES-NI,
/// ARMv8's crypto extensions: every current server) AES-GCM costs a fraction of
/// chacha20-poly1305 on both ends; measured on a 676 MB first pull over a veth with the
/// client and the server on a core each, ssh's ciphers fell from about 22 % to 10 % of the
/// server's CPU samples and its user time from 1.98 s to 1.58 s (README, "Pull over SSH vs
/// rsync"). The rest of ssh's list stays behind it, so a peer without AES-GCM still connects.
pub const PREFER_AES_GCM: &str = "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com";

/// [`PREFER_AES_GCM`], unless `ssh_options` (the inventory's, or `sync`'s `--ssh-option`)
/// name `Ciphers` themselves: theirs then decide. A `Ciphers` line in an ssh configuration
/// file does not: options on the command line come first (set it in `ssh_options`; hosts
/// whose CPU lacks AES instructions, such as a Raspberry Pi 4, want
/// `Ciphers=chacha20-poly1305@openssh.com`).
pub fn cipher_preference(ssh_options: &[String]) -> Option<&'static str> {
    let names_ciphers = ssh_options.iter().any(|o| {
        o.trim_start()
            .split(['=', ' ', '\t'])
            .next()
            .is_some_and(|key| key.eq_ignore_ascii_case("ciphers"))
    });
    (!names_ciphers).then_some(PREFER_AES_GCM)
}

/// The `ssh` invocation that starts the agent on `host`: `ssh [-F CONFIG] -p PORT -l USER
/// [-i KEY -o IdentitiesOnly=yes] -o BatchMode=yes [-o OPTION]… [-o PREFER_AES_GCM] ADDRESS
/// xstore agent` ([`cipher_preference`]). Everything else (known_hosts, ConnectTimeout…)
/// comes from ssh's own configuration.
pub fn ssh_command(host: &HostSpec) -> Command {
    let mut cmd = Command::new(&host.ssh);
    if let Some(config) = &host.ssh_config {
        cmd.arg("-F").arg(config);
    }
    cmd.arg("-p").arg(host.port.to_string());
    cmd.arg("-l").arg(&host.user);
    if let Some(key) = &host.identity {
        cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    // Never prompt (cron has no terminal); never take stdin for anything but the protocol.
    cmd.args(["-o", "BatchMode=yes", "-T"]);
    for o in &host.ssh_options {
        cmd.arg("-o").arg(o);
    }
    if let Some(o) = cipher_preference(&host.ssh_options) {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("--").arg(&host.address).arg(&host.agent_command);
    cmd
}

/// Failures of a pull ([`pull`], [`backup_remote`]). Each converts into the core's
/// [`Error`] and back without loss.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// No session with the agent: ssh failed, or the other end is not a compatible agent.
    #[error("pull {host}: {source}{}", xstore::ssh_detail(ssh.as_deref()))]
    Connect {
        /// The host.
        host: String,
        /// The last line ssh wrote to stderr, when there was one.
        ssh: Option<String>,
        /// What went wrong in the handshake.
        #[source]
        source: xstore::RemoteError,
    },
    /// The pull started but did not complete (timed out, the agent broke off, an empty
    /// backup list); nothing was committed.
    #[error("pull {host}: {reason}")]
    Failed {
        /// The host.
        host: String,
        /// Why, with ssh's last line when it said something.
        reason: String,
    },
    /// The backup of what the agent sent failed (a limit crossed, the clock behind…).
    #[error(transparent)]
    Backup(xstore::BackupError),
    /// A failure of the repository.
    #[error(transparent)]
    Repository(Error),
}

impl From<Error> for PullError {
    fn from(e: Error) -> Self {
        match e {
            Error::Connect { host, ssh, source } => PullError::Connect { host, ssh, source },
            Error::Pull { host, reason } => PullError::Failed { host, reason },
            Error::Backup(b) => PullError::Backup(*b),
            other => PullError::Repository(other),
        }
    }
}

impl From<PullError> for Error {
    fn from(e: PullError) -> Self {
        match e {
            PullError::Connect { host, ssh, source } => Error::Connect { host, ssh, source },
            PullError::Failed { host, reason } => Error::Pull { host, reason },
            PullError::Backup(b) => b.into(),
            PullError::Repository(e) => e,
        }
    }
}

fn pull_error(host: &HostSpec, reason: impl Into<String>) -> Error {
    Error::Pull {
        host: host.name.to_string(),
        reason: reason.into(),
    }
}

/// Kills the ssh process when the pull runs past its time limit.
struct Watchdog {
    done: crossbeam_channel::Sender<()>,
    fired: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(child: Arc<Mutex<Child>>, limit: Duration) -> Watchdog {
        let (done, wait) = crossbeam_channel::bounded::<()>(1);
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        let handle = std::thread::spawn(move || {
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                if let Ok(mut c) = child.lock() {
                    let _ = c.kill();
                }
            }
        });
        Watchdog {
            done,
            fired,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> bool {
        let _ = self.done.send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.fired.load(Ordering::SeqCst)
    }
}

/// Waits for `child` to exit, killing it after `grace`. Polls from 1 ms up to 20 ms: ssh
/// usually exits within a millisecond or two of the session's end, and every pull waits here.
fn reap(child: &Mutex<Child>, grace: Duration) {
    let deadline = Instant::now() + grace;
    let mut pause = Duration::from_millis(1);
    loop {
        let Ok(mut c) = child.lock() else { return };
        match c.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            Ok(None) => {}
        }
        drop(c);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// ssh started to a host's agent, not yet spoken to. Starting it before the repository is
/// open hides the open behind ssh's connection setup ([`pull_fleet`]). Dropped while ssh
/// still runs, it closes ssh's input, kills it and waits for it (the agent sees its input end
/// and exits, having sent nothing). The pull's time limit starts when the pull does.
pub struct AgentConnection {
    child: Arc<Mutex<Child>>,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    collector: Option<std::thread::JoinHandle<()>>,
}

/// The size asked for the pipe that carries the agent's replies from ssh (Linux's default
/// `pipe-max-size`; 64 KiB otherwise).
const PIPE_BYTES: usize = 1 << 20;

impl AgentConnection {
    /// Spawns [`ssh_command`] for `host` with its three pipes; ssh's stderr lines are logged
    /// and the last ones kept for error messages.
    pub fn start(host: &HostSpec) -> Result<AgentConnection> {
        let mut cmd = ssh_command(host);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| pull_error(host, format!("starting {}: {e}", host.ssh)))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(pull_error(host, "ssh started without pipes"));
        };
        // The agent's replies carry every chunk: a larger pipe lets ssh hand them over in
        // fewer, larger writes, with fewer wake-ups of both sides (best effort: the
        // system's pipe limit may refuse).
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_BYTES);
        let stderr_lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let collector = {
            let lines = Arc::clone(&stderr_lines);
            let name = host.name.clone();
            std::thread::spawn(move || {
                bounded_lines(stderr, STDERR_LINE_BYTES, |line| {
                    tracing::info!(host = %name, "remote: {line}");
                    if let Ok(mut v) = lines.lock() {
                        if v.len() == STDERR_LINES {
                            v.remove(0);
                        }
                        v.push(line);
                    }
                })
            })
        };
        Ok(AgentConnection {
            child: Arc::new(Mutex::new(child)),
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr_lines,
            collector: Some(collector),
        })
    }

    /// Waits for the stderr collector (after ssh has exited: its stderr is closed).
    fn join_collector(&mut self) {
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
    }
}

impl Drop for AgentConnection {
    fn drop(&mut self) {
        // After a pull, `reap` has waited for ssh already: nothing is left to do.
        drop(self.stdin.take());
        if let Ok(mut c) = self.child.lock() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.join_collector();
    }
}

/// What the repository knows of one host ([`host_status`]).
#[derive(Debug, Clone, Default)]
pub struct HostStatus {
    /// The index's record of the host (`None`: never backed up, or all expired).
    pub record: Option<HostRecord>,
    /// The newest snapshot, complete or partial.
    pub newest: Option<Snapshot>,
    /// The newest complete snapshot.
    pub newest_complete: Option<Snapshot>,
    /// The newest pull, successful or not.
    pub last_pull: Option<PullReport>,
}

impl HostStatus {
    /// The newest snapshot when it is partial (newer than the newest complete one).
    pub fn newest_partial(&self) -> Option<&Snapshot> {
        self.newest.as_ref().filter(|s| !s.is_complete())
    }
}

/// Pulls one host: connects with [`ssh_command`], backs up the paths the inventory names
/// (or the agent's whole allow-list) as a snapshot of `host.name`, with the host's newest
/// snapshot as parent, and records the bytes that crossed the wire in its stats.
///
/// Every attempt, failed or not, is recorded as the host's [`last_pull`].
pub fn pull(
    repo: &Repository,
    host: &HostSpec,
    opts: &PullOptions,
) -> std::result::Result<Snapshot, PullError> {
    Ok(pull_reported(repo, host, opts, None).0?)
}

fn pull_reported(
    repo: &Repository,
    host: &HostSpec,
    opts: &PullOptions,
    shared: Option<&SharedIngest<'_>>,
) -> (Result<Snapshot>, PullReport) {
    let started_ns = xstore::now_ns();
    let started = Instant::now();
    // A panic in one host's pull fails that host alone (its record names the cause);
    // the run goes on with the others. Its uncommitted packs are left for recovery.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        repo.require_writable()
            .and_then(|()| pull_over_ssh(repo, host, opts, shared))
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        Err(pull_error(host, format!("the pull panicked: {what}")))
    });
    let mut report = PullReport::of(host, started_ns, started, &result);
    if let Ok(snapshot) = &result {
        match mass_change_alarm(repo, host, snapshot) {
            Ok(alarm) => report.mass_change = alarm,
            Err(e) => tracing::warn!(host = %host.name, "comparing with the parent: {e}"),
        }
    }
    if report.mass_change.is_none() {
        report.mass_change = standing_alarm(repo, &host.name);
    }
    if repo.is_writable() {
        if let Err(e) = record_pull(repo, &report) {
            tracing::warn!(host = %host.name, "could not record the pull's outcome: {e}");
        }
    }
    (result, report)
}

/// Whether `snapshot` rewrote or removed at least `host.mass_change` of the files its
/// parent had (and the parent had at least [`MASS_CHANGE_MIN_FILES`]). If so the parent
/// is pinned, so that the last good snapshot survives rotation until someone unpins it,
/// and the alarm text is returned.
fn mass_change_alarm(
    repo: &Repository,
    host: &HostSpec,
    snapshot: &Snapshot,
) -> Result<Option<MassChange>> {
    let Some(parent_id) = snapshot.parent else {
        return Ok(None);
    };
    let parent = repo.snapshot(&parent_id)?;
    let before = parent.stats.files;
    if before < MASS_CHANGE_MIN_FILES || host.mass_change > 1.0 {
        return Ok(None);
    }
    // Files kept unchanged are the ones not rewritten and not removed.
    let kept = snapshot.stats.files_unchanged.min(before);
    let changed = (before - kept) as f64 / before as f64;
    if changed < host.mass_change {
        return Ok(None);
    }
    if !parent.pinned {
        repo.set_pinned(&parent.id, true)?;
    }
    Ok(Some(MassChange {
        message: format!(
            "{:.0}% of the {before} files of snapshot {} were rewritten or removed by pull {} \
             ({} files now); {} is pinned until `xstore unpin` (ransomware or a wiped disk?)",
            changed * 100.0,
            parent.id.short(),
            snapshot.id.short(),
            snapshot.stats.files,
            parent.id.short()
        ),
        pinned: parent.id,
    }))
}

/// The alarm of the host's previous pull record, while the snapshot it pinned is still
/// pinned.
fn standing_alarm(repo: &Repository, host: &HostName) -> Option<MassChange> {
    let alarm = last_pull(repo, host).ok()??.mass_change?;
    repo.snapshot(&alarm.pinned).ok()?.pinned.then_some(alarm)
}

/// Keeps `report` as its host's newest pull (atomically replaced file).
fn record_pull(repo: &Repository, report: &PullReport) -> Result<()> {
    let dir = pulls_dir(repo);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        // The new directory's entry in the repository must survive a crash too.
        xstore::fsutil::sync_dir(repo.path())?;
    }
    let mut json = serde_json::to_vec_pretty(report).map_err(|e| Error::Io {
        path: dir.clone(),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    xstore::fsutil::write_atomic(
        &xstore::layout::pull_record(repo.path(), &report.host),
        &json,
    )
}

fn pulls_dir(repo: &Repository) -> std::path::PathBuf {
    xstore::layout::pulls(repo.path())
}

/// What the repository knows of `host` (monitoring, metrics and `xstore hosts` read it):
/// its host record, its newest and newest complete snapshots (from the record: no scan
/// of the snapshots), and its newest pull.
pub fn host_status(repo: &Repository, host: &HostName) -> Result<HostStatus> {
    let record = repo.host_record(host)?;
    let read = |id: Option<[u8; 32]>| id.map(|id| repo.snapshot(&SnapshotId(id))).transpose();
    let newest_complete = read(record.as_ref().and_then(|r| r.latest_complete))?;
    let newest = match record.as_ref().and_then(|r| r.latest) {
        Some(id) if newest_complete.as_ref().is_some_and(|s| s.id.0 == id) => {
            newest_complete.clone()
        }
        other => read(other)?,
    };
    Ok(HostStatus {
        record,
        newest,
        newest_complete,
        last_pull: last_pull(repo, host)?,
    })
}

/// The newest recorded pull of `host` (`None` if it was never pulled, or the record
/// predates pull records). A record that does not decode is an error naming its file.
pub fn last_pull(repo: &Repository, host: &HostName) -> Result<Option<PullReport>> {
    let path = xstore::layout::pull_record(repo.path(), host);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path, source }),
    };
    let report: PullReport = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.clone(),
        source: xstore::DecodeError::Invalid {
            what: "pull record",
            offset: e.column(),
            reason: e.to_string(),
        },
    })?;
    if report.host != *host {
        return Err(Error::Corrupt {
            path,
            source: xstore::DecodeError::Invalid {
                what: "pull record",
                offset: 0,
                reason: format!("names host {:?}", report.host),
            },
        });
    }
    Ok(Some(report))
}

fn pull_over_ssh(
    repo: &Repository,
    host: &HostSpec,
    opts: &PullOptions,
    shared: Option<&SharedIngest<'_>>,
) -> Result<Snapshot> {
    let mut connection = AgentConnection::start(host)?;
    let (Some(stdin), Some(stdout)) = (connection.stdin.take(), connection.stdout.take()) else {
        return Err(pull_error(host, "ssh started without pipes"));
    };
    let child = Arc::clone(&connection.child);
    let stderr_lines = Arc::clone(&connection.stderr_lines);
    let limit = opts.timeout.unwrap_or(host.timeout);
    let watchdog = Watchdog::start(Arc::clone(&child), limit);
    let result = pull_over(repo, host, opts, shared, stdout, stdin);
    let fired = watchdog.stop();
    reap(&child, Duration::from_secs(10));
    connection.join_collector();
    let last_stderr = stderr_lines
        .lock()
        .map(|v| v.last().cloned())
        .unwrap_or_default();
    match result {
        Ok(s) => Ok(s),
        Err(_) if fired => Err(pull_error(
            host,
            format!(
                "timed out after {}; nothing was committed",
                xstore::text::short_duration(limit.as_secs())
            ),
        )),
        Err(Error::Connect { host, source, .. }) => Err(Error::Connect {
            host,
            ssh: last_stderr,
            source,
        }),
        Err(e) => {
            let detail = format!("{e}{}", xstore::ssh_detail(last_stderr.as_deref()));
            Err(match e {
                Error::Pull { .. } => pull_error(host, detail),
                Error::Backup(b)
                    if matches!(
                        *b,
                        BackupError::SourceBroken { .. } | BackupError::Source { .. }
                    ) =>
                {
                    pull_error(host, detail)
                }
                other => other,
            })
        }
    }
}

fn pull_over(
    repo: &Repository,
    host: &HostSpec,
    opts: &PullOptions,
    shared: Option<&SharedIngest<'_>>,
    from_agent: impl std::io::Read + Send + 'static,
    to_agent: impl std::io::Write + Send + 'static,
) -> Result<Snapshot> {
    let source = RemoteSource::connect(
        from_agent,
        to_agent,
        SessionTerms {
            raw_chunks: host.raw_chunks,
            ..SessionTerms::for_repository(repo.chunker_params(), repo.config().compression_level)
        },
    )
    .map_err(|source| Error::Connect {
        host: host.name.to_string(),
        ssh: None,
        source,
    })?;
    let result = backup_remote_with(repo, host, opts, &source, shared);
    source.close();
    result
}

/// For a host never backed up: the newest snapshot of another host of its account
/// ([`BackupOptions::reference`]), so that a clone sends chunk ids for what the account
/// already holds. Never another account's: no answer to an agent depends on it.
fn account_reference(
    repo: &Repository,
    host: &HostSpec,
    accounts: &[Account],
) -> Result<Option<xstore::SnapshotId>> {
    if repo
        .host_record(&host.name)?
        .is_some_and(|h| h.latest.is_some())
    {
        return Ok(None);
    }
    let Some(account) = accounts.iter().find(|a| a.name == host.account) else {
        return Ok(None);
    };
    let mut newest: Option<Snapshot> = None;
    for sibling in account.hosts.iter().filter(|h| **h != host.name) {
        let Some(latest) = repo.host_record(sibling)?.and_then(|h| h.latest) else {
            continue;
        };
        let snapshot = repo.snapshot(&xstore::SnapshotId(latest))?;
        if newest
            .as_ref()
            .is_none_or(|n| n.start_ns < snapshot.start_ns)
        {
            newest = Some(snapshot);
        }
    }
    Ok(newest.map(|s| s.id))
}

/// Backs up an already connected agent as a snapshot of `host.name` (what
/// [`pull`] does after starting ssh). Public for tools with their own transport.
pub fn backup_remote(
    repo: &Repository,
    host: &HostSpec,
    opts: &PullOptions,
    source: &RemoteSource,
) -> std::result::Result<Snapshot, PullError> {
    Ok(backup_remote_with(repo, host, opts, source, None)?)
}

fn backup_remote_with(
    repo: &Repository,
    host: &HostSpec,
    opts: &PullOptions,
    source: &RemoteSource,
    shared: Option<&SharedIngest<'_>>,
) -> Result<Snapshot> {
    let paths = if host.paths.is_empty() {
        source.agent().roots.clone()
    } else {
        host.paths.clone()
    };
    if paths.is_empty() {
        return Err(pull_error(
            host,
            "the client's backup list is empty (or lists no existing path)",
        ));
    }
    let mut budgets = vec![StoreBudget::new(
        format!(
            "host {}'s pull cap of {}",
            host.name,
            xstore::text::human_bytes(host.pull_cap)
        ),
        host.pull_cap,
        host.pull_cap,
    )];
    budgets.extend(opts.account_budgets.get(&host.account).cloned());
    let reference = if opts.no_parent {
        None
    } else {
        account_reference(repo, host, &opts.accounts)?
    };
    let backup = BackupOptions {
        budgets,
        reference,
        parent: if opts.no_parent {
            ParentChoice::None
        } else {
            ParentChoice::Latest
        },
        progress: opts.progress.clone(),
        tier: opts.tier.clone(),
        ..BackupOptions::new(host.name.clone(), paths)
    };
    // Remote reads wait on the network: more threads than cores keep the agent busy.
    let threads = if opts.threads == 0 {
        DEFAULT_PULL_THREADS
    } else {
        opts.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(PULL_STACK_BYTES)
        .thread_name(|i| format!("pull-{i}"))
        .build()
        .map_err(|e| pull_error(host, format!("thread pool: {e}")))?;
    Ok(pool.install(|| match shared {
        Some(shared) => repo.backup_shared(source, &backup, shared),
        None => repo.backup(source, &backup),
    })?)
}

/// Pulls `hosts`, `jobs` at a time. One host failing or hanging does not stop the
/// others (each has its own time limit). `on_done` sees every report as it finishes;
/// the reports come back in the order of `hosts`.
///
/// With more than one job, the hosts of one account (of `opts.accounts`) share what they
/// fetch ([`SharedIngest`]): a chunk one of them fetched or is fetching is not asked for
/// again and is stored once. Never across accounts.
pub fn pull_all(
    repo: &Repository,
    hosts: &[HostSpec],
    jobs: usize,
    opts: &PullOptions,
    on_done: &(dyn Fn(&PullReport) + Sync),
) -> Vec<PullReport> {
    let mut opts = opts.clone();
    let computed = account_budgets(repo, hosts, &opts.accounts, &opts.account_budgets);
    opts.account_budgets.extend(computed);
    let opts = &opts;
    let shared = if jobs > 1 {
        shared_ingests(hosts, &opts.accounts)
    } else {
        HashMap::new()
    };
    let shared = &shared;
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, h) in hosts.iter().enumerate() {
        let _ = tx.send((i, h));
    }
    drop(tx);
    let reports = Mutex::new(Vec::with_capacity(hosts.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, hosts.len().max(1)) {
            let rx = rx.clone();
            let reports = &reports;
            scope.spawn(move || {
                for (i, host) in rx {
                    let shared = shared.get(host.account.as_str()).and_then(|once| {
                        once.get_or_init(|| {
                            repo.shared_ingest()
                                .inspect_err(|e| {
                                    tracing::warn!(account = %host.account, error = %e,
                                        "the account's hosts will not share what they fetch this run");
                                })
                                .ok()
                        })
                        .as_ref()
                    });
                    let (_, report) = pull_reported(repo, host, opts, shared);
                    on_done(&report);
                    if let Ok(mut r) = reports.lock() {
                        r.push((i, report));
                    }
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(|e| e.into_inner());
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// A place for one [`SharedIngest`] per account of `accounts` with more than one host in
/// `hosts`, filled when its first host starts (so sealer threads and gc protection exist
/// only for accounts being pulled). Without one (a warning), its hosts are pulled each on
/// its own.
fn shared_ingests<'h, 'r>(
    hosts: &'h [HostSpec],
    accounts: &[Account],
) -> HashMap<&'h str, OnceLock<Option<SharedIngest<'r>>>> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for h in hosts
        .iter()
        .filter(|h| accounts.iter().any(|a| a.name == h.account))
    {
        *count.entry(h.account.as_str()).or_default() += 1;
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(account, _)| (account, OnceLock::new()))
        .collect()
}

/// Each account of `hosts` (found in `accounts`) with its room below its hard limit:
/// its hard limit minus the stored bytes its snapshots reference now, one
/// [`Repository::fleet_usage`] pass for all of them. When usage cannot be computed the
/// accounts get no budget (a warning; each pull's cap still applies).
/// Accounts that already have a budget in `given` keep it.
fn account_budgets(
    repo: &Repository,
    hosts: &[HostSpec],
    accounts: &[Account],
    given: &HashMap<String, Arc<StoreBudget>>,
) -> HashMap<String, Arc<StoreBudget>> {
    let wanted: Vec<&Account> = accounts
        .iter()
        .filter(|a| !given.contains_key(&a.name))
        .filter(|a| hosts.iter().any(|h| h.account == a.name))
        .collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    let groups: Vec<Vec<HostName>> = wanted.iter().map(|a| a.hosts.clone()).collect();
    let usage = match repo.fleet_usage(&groups) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!("account usage unavailable, hard limits not enforced this run: {e}");
            return HashMap::new();
        }
    };
    wanted
        .iter()
        .zip(usage.groups)
        .map(|(a, u)| {
            let what = format!(
                "account {}'s hard limit of {} (it holds {})",
                a.name,
                xstore::text::human_bytes(a.hard_limit),
                xstore::text::human_bytes(u.referenced_bytes)
            );
            let left = a.hard_limit.saturating_sub(u.referenced_bytes);
            (a.name.clone(), StoreBudget::new(what, a.hard_limit, left))
        })
        .collect()
}

/// Makes the repository's per-host tier schedules match the inventory's overrides
/// (hosts without one keep whatever `tiers --set` gave them). Returns the hosts changed.
pub fn apply_inventory_schedules(repo: &Repository, hosts: &[HostSpec]) -> Result<Vec<HostName>> {
    let mut settings = repo.retention_settings()?;
    let mut changed = Vec::new();
    for h in hosts {
        if let Some(s) = &h.schedule {
            if settings.schedules.hosts.get(h.name.as_str()) != Some(s) {
                settings
                    .schedules
                    .hosts
                    .insert(h.name.to_string(), s.clone());
                changed.push(h.name.clone());
            }
        }
    }
    if !changed.is_empty() {
        repo.set_retention_settings(&settings)?;
    }
    Ok(changed)
}

/// What `xstore pull` does: opens the repository with `open` (taking its writer lock), then
/// pulls every host as [`pull_all`] does. No SSH session is opened before the
/// lock is held: a run refused by another writer contacts no host (ARCHITECTURE.md, "Trust
/// boundary"). If `open` fails, its error is returned.
pub fn pull_fleet<E>(
    open: impl FnOnce() -> std::result::Result<Repository, E>,
    hosts: &[HostSpec],
    jobs: usize,
    opts: &PullOptions,
    on_done: &(dyn Fn(&PullReport) + Sync),
) -> std::result::Result<(Repository, Vec<PullReport>), E> {
    let repo = open()?;
    let reports = pull_all(&repo, hosts, jobs, opts, on_done);
    Ok((repo, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_are_bounded_and_escaped() {
        let mut input = b"first\n\x1b[2Kfake OK\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 300_000));
        input.extend_from_slice(b"\nlast");
        let mut lines = Vec::new();
        bounded_lines(&input[..], 16, |l| lines.push(l));
        assert_eq!(
            lines,
            [
                "first".to_string(),
                "\\x1b[2Kfake OK".to_string(),
                format!("{}… (299984 more bytes)", "x".repeat(16)),
                "last".to_string(),
            ]
        );
    }

    #[test]
    fn aes_gcm_goes_first_unless_the_options_name_ciphers() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cipher_preference(&[]), Some(PREFER_AES_GCM));
        assert_eq!(
            cipher_preference(&opts(&["ConnectTimeout=5"])),
            Some(PREFER_AES_GCM)
        );
        for theirs in [
            "Ciphers=chacha20-poly1305@openssh.com",
            "ciphers=aes256-ctr",
            " CIPHERS = aes128-ctr",
        ] {
            assert_eq!(cipher_preference(&opts(&["Compression=no", theirs])), None);
        }
    }
}
