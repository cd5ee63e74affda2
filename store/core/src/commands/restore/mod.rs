//! Restore: a snapshot (or one path of it) into a target directory, bit-exact with metadata.
//!
//! Safety (ARCHITECTURE.md invariants 6 and 15): every name was validated when its tree was decoded (no `..`, `/`, NUL),
//! and every path operation is relative to a directory descriptor. The target is reached from
//! `/` without following a symlink another user could have planted (`open_target`) and
//! opened once;
//! each directory below it is reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (a walk of `openat(O_NOFOLLOW | O_DIRECTORY)` where the kernel lacks openat2), so a
//! directory that another user swaps for a symlink fails that path instead of leading out of
//! the target. Entries are created with `*at` calls in their parent's descriptor (files with
//! `O_EXCL | O_NOFOLLOW`), metadata goes through descriptors of what was created (checked to be
//! the same inode), directories are created 0700 and get their real mode last, and symlinks
//! from the snapshot are created after everything else, so nothing is written through one.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags};

use rayon::prelude::*;

mod existing;

pub use existing::Overwrite;

use crate::commands::safe_fs::{
    self, apply_meta, clear_name, errno_at, make_dir, owner_ids, times, Beneath,
};
use crate::error::{Error, IoContext, RestoreError, Result};
use crate::index::BlobLoc;
use crate::progress::Progress;
use crate::repo::{poisoned, Node, Repository};
use crate::storage::read_ahead::RangeRead;
use crate::storage::PackId;
use existing::Existing;
use xstore_chunker::ChunkId;
use xstore_format::meta::EntryKind;
use xstore_format::snapshot::{PathError, Snapshot};
use xstore_format::tree::{ChunkRef, Entry};

/// A file to write: its place in the read order (pack rank, offset of its first chunk), its
/// path, its entry and its located chunks.
type FileToWrite<'a> = (
    Option<(usize, u64)>,
    &'a PathBuf,
    &'a Entry,
    Vec<(ChunkRef, BlobLoc)>,
);

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only this path of the snapshot (e.g. `/etc/ssh`); its last component is
    /// created inside the target. `None` restores everything.
    pub path: Option<String>,
    /// Set numeric owners (needs root). `None`: when running as root.
    pub owners: Option<bool>,
    /// What to do with entries that already exist in the target.
    pub overwrite: Overwrite,
    /// Remove what the restored directories hold that the snapshot does not have (and a
    /// directory standing where the snapshot has something else), never following a symlink.
    pub delete: bool,
    /// Live counters for a progress display (`total_bytes` is set first).
    pub progress: Option<Arc<Progress>>,
    /// Restore everything the snapshot holds, as the host had it: device nodes, set-uid,
    /// set-gid and sticky bits, `security.*` and `trusted.*` xattrs (file capabilities,
    /// SELinux labels). Off by default: the snapshot is what a customer's host sent, and
    /// these would be weapons on the machine restored to ([`Withheld`]).
    pub trusted_specials: bool,
}

/// What a restore without [`RestoreOptions::trusted_specials`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Withheld {
    /// Block and character devices not created.
    pub devices: u64,
    /// Files and directories restored without their set-uid, set-gid or sticky bits: all
    /// of them on files; on a directory, set-uid always and set-gid and sticky on the
    /// restore's top directories (those whose parent the restore did not make).
    pub mode_bits: u64,
    /// `security.*` and `trusted.*` extended attributes not set.
    pub xattrs: u64,
}

impl Withheld {
    /// Whether anything was left out.
    pub fn any(&self) -> bool {
        self.devices + self.mode_bits + self.xattrs > 0
    }

    /// The entry as a restore without `trusted_specials` makes it, or `None` when it is not
    /// made at all (devices). `top`: the entry's parent is not one the restore makes.
    fn defuse(&mut self, entry: &Entry, top: bool) -> Option<Entry> {
        if matches!(entry.kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
            self.devices += 1;
            return None;
        }
        let mut safe = entry.clone();
        let keep = match entry.kind {
            EntryKind::Dir if !top => 0o3777,
            _ => 0o0777,
        };
        if safe.attrs.mode & 0o7777 & !keep != 0 {
            safe.attrs.mode &= !(0o7777 & !keep);
            self.mode_bits += 1;
        }
        let before = safe.xattrs.len();
        safe.xattrs
            .retain(|(k, _)| !k.starts_with(b"security.") && !k.starts_with(b"trusted."));
        self.xattrs += (before - safe.xattrs.len()) as u64;
        Some(safe)
    }
}

/// What a dry run would do at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlannedAction {
    /// Write a file that is not there.
    Write,
    /// Replace the content of a file that is there and differs.
    Overwrite,
    /// Create a directory, link, symlink, device or fifo.
    Create,
    /// Leave it: the content already matches (or `--overwrite never`).
    Skip,
    /// Remove it and what it holds (`--delete`).
    Delete,
}

/// One line of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedChange {
    /// What would happen.
    pub action: PlannedAction,
    /// The path in the target.
    pub path: String,
}

/// What a restore did (or, from [`Repository::preview_restore`], would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created (or whose metadata was applied).
    pub dirs: u64,
    /// Symlinks, devices, fifos and hard links created.
    pub others: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Existing entries left as they were: files whose content matched (their metadata is
    /// reapplied), and under `Overwrite::Never` everything that existed.
    pub skipped: u64,
    /// Entries removed by `delete` (everything inside a removed directory counts).
    pub deleted: u64,
    /// From [`Repository::preview_restore`]: each change, in order.
    pub planned: Vec<PlannedChange>,
    /// Paths that could not be restored.
    pub errors: Vec<PathError>,
    /// What was left out because the snapshot is not trusted (counted by a dry run too).
    pub withheld: Withheld,
}

/// A restore decided before anything is written ([`Repository::plan_restore`]): the
/// snapshot, the target and the options, and every entry to restore (after
/// [`Withheld::defuse`] unless `trusted_specials`). [`Repository::restore`] carries it out;
/// [`Repository::preview_restore`] says what that would change in the target as it stands.
#[derive(Debug)]
pub struct RestorePlan {
    /// The snapshot restored from.
    pub snapshot: Snapshot,
    /// The target directory.
    pub target: PathBuf,
    /// How.
    pub options: RestoreOptions,
    entries: Plan,
}

impl RestorePlan {
    /// What is left out because the snapshot is not trusted.
    pub fn withheld(&self) -> Withheld {
        self.entries.withheld.unwrap_or_default()
    }
}

#[derive(Debug)]
struct Plan {
    /// `None`: restore everything as it is (`trusted_specials`).
    withheld: Option<Withheld>,
    dirs: Vec<(PathBuf, Entry)>,
    files: Vec<(PathBuf, Entry)>,
    links: Vec<(PathBuf, PathBuf)>,
    specials: Vec<(PathBuf, Entry)>,
    symlinks: Vec<(PathBuf, Entry)>,
    first_of_inode: HashMap<(u64, u64), PathBuf>,
    /// The names each restored directory holds in the snapshot (`""`: the target itself, when
    /// the whole snapshot is restored): what `delete` keeps.
    names: HashMap<PathBuf, HashSet<Vec<u8>>>,
}

/// A file of the plan after comparing it with what stands at its place.
enum Compared<'p> {
    /// Left as it is (content matched, or `Never`).
    Kept,
    /// Its path failed (recorded).
    Failed,
    /// To be written, with its chunks and where they are.
    Write(&'p PathBuf, &'p Entry, Vec<(ChunkRef, BlobLoc)>),
}

impl Repository {
    fn plan(&self, rel: &Path, entry: &Entry, plan: &mut Plan) -> Result<()> {
        let defused;
        let entry = match plan.withheld.as_mut() {
            None => entry,
            Some(withheld) => {
                let top = rel.components().nth(1).is_none();
                match withheld.defuse(entry, top) {
                    Some(e) => {
                        defused = e;
                        &defused
                    }
                    None => return Ok(()),
                }
            }
        };
        match entry.kind {
            EntryKind::Dir => {
                plan.dirs.push((rel.to_path_buf(), entry.clone()));
                if let Some(id) = entry.subtree() {
                    let tree = self.tree(&id)?;
                    plan.names.insert(
                        rel.to_path_buf(),
                        tree.entries.iter().map(|c| c.name.clone()).collect(),
                    );
                    for child in &tree.entries {
                        self.plan(&rel.join(OsStr::from_bytes(&child.name)), child, plan)?;
                    }
                }
            }
            EntryKind::File => {
                if entry.attrs.nlink > 1 {
                    let key = (entry.attrs.dev, entry.attrs.inode);
                    if let Some(first) = plan.first_of_inode.get(&key) {
                        plan.links.push((first.clone(), rel.to_path_buf()));
                        return Ok(());
                    }
                    plan.first_of_inode.insert(key, rel.to_path_buf());
                }
                plan.files.push((rel.to_path_buf(), entry.clone()));
            }
            EntryKind::Symlink => plan.symlinks.push((rel.to_path_buf(), entry.clone())),
            _ => plan.specials.push((rel.to_path_buf(), entry.clone())),
        }
        Ok(())
    }

    /// Plans restoring `snapshot` (or `opts.path` of it) into `target`: reads the snapshot's
    /// trees (a path that is not in it is an error here), touches nothing in `target`.
    pub fn plan_restore(
        &self,
        snapshot: &Snapshot,
        target: &Path,
        opts: &RestoreOptions,
    ) -> Result<RestorePlan, RestoreError> {
        Ok(RestorePlan {
            snapshot: snapshot.clone(),
            target: target.to_path_buf(),
            options: opts.clone(),
            entries: self.plan_entries(snapshot, opts)?,
        })
    }

    fn plan_entries(&self, snapshot: &Snapshot, opts: &RestoreOptions) -> Result<Plan> {
        let mut plan = Plan {
            withheld: (!opts.trusted_specials).then(Withheld::default),
            dirs: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            specials: Vec::new(),
            symlinks: Vec::new(),
            first_of_inode: HashMap::new(),
            names: HashMap::new(),
        };
        let node = self.lookup(snapshot, opts.path.as_deref().unwrap_or("/"))?;
        match &node {
            Node::Root(id) => {
                let tree = self.tree(id)?;
                plan.names.insert(
                    PathBuf::new(),
                    tree.entries.iter().map(|c| c.name.clone()).collect(),
                );
                for child in &tree.entries {
                    self.plan(Path::new(OsStr::from_bytes(&child.name)), child, &mut plan)?;
                }
            }
            Node::Entry(e) => self.plan(Path::new(OsStr::from_bytes(&e.name)), e, &mut plan)?,
        }
        Ok(plan)
    }

    /// Carries out `plan`: restores into its target, creating the target if needed. Into a
    /// tree that exists, the options' `overwrite` decides what is rewritten (each file is
    /// compared as it stands now, not as a preview saw it) and `delete` removes what the
    /// snapshot does not have. Per-path failures are collected in the summary; repository
    /// errors abort. Nothing is created, changed or removed outside the target, whatever
    /// another user does inside it meanwhile (module documentation).
    pub fn restore(&self, plan: &RestorePlan) -> Result<RestoreSummary, RestoreError> {
        let (target, opts) = (plan.target.as_path(), &plan.options);
        let mut beneath = Beneath::open(target)?;
        beneath.remove_dirs_in_way = opts.delete;
        let run = RestoreRun {
            repo: self,
            target,
            opts,
            beneath,
            owners: opts
                .owners
                .unwrap_or_else(|| rustix::process::geteuid().is_root()),
            never: opts.overwrite == Overwrite::Never,
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            errors: Mutex::new(Vec::new()),
        };
        let plan = &plan.entries;
        let mut summary = RestoreSummary {
            withheld: plan.withheld.unwrap_or_default(),
            ..RestoreSummary::default()
        };
        let dirs = run.make_dirs(plan);
        if let Some(p) = &opts.progress {
            p.total_bytes.store(
                plan.files.iter().map(|(_, e)| e.attrs.size).sum(),
                Ordering::Relaxed,
            );
        }
        let files = run.files_to_write(plan, &dirs, &mut summary)?;
        run.write_files(&files, &dirs, &mut summary)?;
        drop(files);
        run.link_files(plan, &mut summary);
        run.make_others(plan, &mut summary);
        if opts.delete {
            run.delete_extras(plan, &dirs, &mut summary);
        }
        run.apply_dir_metas(plan, &dirs, &mut summary);
        let mut errors = run.errors.into_inner().map_err(poisoned)?;
        // Parallel passes record in any order: by path, so a directory precedes what is
        // below it and reruns print the same.
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        summary.errors = errors;
        Ok(summary)
    }

    /// What [`Repository::restore`] of `plan` would change in the target as it stands,
    /// changing nothing (no directory is created, no file opened for writing): each change
    /// in `planned`, and the counts a restore would report.
    pub fn preview_restore(&self, plan: &RestorePlan) -> Result<RestoreSummary, RestoreError> {
        let (target, opts) = (plan.target.as_path(), &plan.options);
        let plan = &plan.entries;
        let owners = opts
            .owners
            .unwrap_or_else(|| rustix::process::geteuid().is_root());
        let beneath = Beneath::open_existing(target)?;
        let mut summary = RestoreSummary {
            withheld: plan.withheld.unwrap_or_default(),
            ..RestoreSummary::default()
        };
        let shown = |rel: &Path| target.join(rel).display().to_string();
        let note = |summary: &mut RestoreSummary, action, rel: &Path| {
            summary.planned.push(PlannedChange {
                action,
                path: shown(rel),
            });
        };
        let parent = |rel: &Path| -> Option<(OwnedFd, OsString)> {
            let (dir, name) = beneath.as_ref()?.parent(rel).ok()?;
            Some((dir, name.to_owned()))
        };
        let exists = |rel: &Path| {
            parent(rel).is_some_and(|(dir, name)| {
                rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
            })
        };
        let never = opts.overwrite == Overwrite::Never;
        for (rel, _) in &plan.dirs {
            let is_dir = beneath.as_ref().is_some_and(|b| b.dir(rel).is_ok());
            if !is_dir {
                note(&mut summary, PlannedAction::Create, rel);
                summary.dirs += 1;
            }
        }
        for (rel, entry) in &plan.files {
            let chunks = self.file_chunks(entry)?;
            let found = match parent(rel) {
                Some((dir, name)) => existing::existing_file(
                    &dir,
                    &name,
                    entry,
                    &chunks,
                    opts.overwrite,
                    owners,
                    self.encryption(),
                )
                .unwrap_or(Existing::Differs),
                None => Existing::Missing,
            };
            match found {
                Existing::Same(_) | Existing::Kept | Existing::Unchanged => {
                    note(&mut summary, PlannedAction::Skip, rel);
                    summary.skipped += 1;
                }
                Existing::Missing | Existing::Differs => {
                    let action = match found {
                        Existing::Missing => PlannedAction::Write,
                        _ => PlannedAction::Overwrite,
                    };
                    note(&mut summary, action, rel);
                    summary.files += 1;
                    summary.bytes += entry.attrs.size;
                }
            }
        }
        let inode = |rel: &Path| {
            parent(rel).and_then(|(dir, name)| {
                rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .map(|st| (st.st_dev, st.st_ino))
            })
        };
        let linked: HashSet<&Path> = plan
            .links
            .iter()
            .filter(|(first, link)| inode(link).is_some() && inode(link) == inode(first))
            .map(|(_, link)| link.as_path())
            .collect();
        let others = plan
            .links
            .iter()
            .map(|(_, l)| l.as_path())
            .chain(plan.specials.iter().map(|(r, _)| r.as_path()))
            .chain(plan.symlinks.iter().map(|(r, _)| r.as_path()));
        for rel in others {
            if (never && exists(rel)) || linked.contains(rel) {
                note(&mut summary, PlannedAction::Skip, rel);
                summary.skipped += 1;
            } else {
                note(&mut summary, PlannedAction::Create, rel);
                summary.others += 1;
            }
        }
        if let (true, Some(b)) = (opts.delete, &beneath) {
            let mut dirs: Vec<_> = plan.names.iter().collect();
            dirs.sort_by(|a, b| a.0.cmp(b.0));
            for (dir, keep) in dirs {
                let Ok(names) = b.dir(dir).and_then(|fd| existing::names_in(&fd)) else {
                    continue;
                };
                for name in names.iter().filter(|n| !keep.contains(n.as_bytes())) {
                    note(&mut summary, PlannedAction::Delete, &dir.join(name));
                    summary.deleted += 1;
                }
            }
        }
        Ok(summary)
    }
}

/// The directories a restore made or found, by path.
struct Dirs<'p> {
    /// Directories this restore made, or (unless `Never`) found and checked: their metadata
    /// is applied at the end, to the same inode (device, inode).
    made: HashMap<&'p Path, (u64, u64)>,
    /// Directories this restore created: nothing stood in them to compare with (an entry
    /// another user slips in meanwhile is replaced by the O_EXCL create as before). The
    /// value: a file created in one is owned by us and our group, so no chown is needed when
    /// the entry's owner is ours too.
    created: HashMap<&'p Path, bool>,
}

/// One restore being carried out: its phases, in the order [`Repository::restore`] runs
/// them, and what they share.
struct RestoreRun<'a> {
    repo: &'a Repository,
    target: &'a Path,
    opts: &'a RestoreOptions,
    beneath: Beneath,
    /// Whether owners are restored (root, or asked for).
    owners: bool,
    /// `Overwrite::Never`: whatever exists stays.
    never: bool,
    euid: u32,
    egid: u32,
    /// Per-path failures, in any order.
    errors: Mutex<Vec<PathError>>,
}

impl RestoreRun<'_> {
    fn shown(&self, rel: &Path) -> PathBuf {
        self.target.join(rel)
    }

    /// Records the failure of one path; the path is said once (errors that name it already
    /// lose that prefix).
    fn fail(&self, rel: &Path, e: &dyn std::fmt::Display) {
        let path = self.shown(rel).display().to_string();
        let text = e.to_string();
        let message = text
            .strip_prefix(&format!("{path}: "))
            .map(str::to_string)
            .or_else(|| {
                text.strip_prefix(&format!("restore refused {path}: "))
                    .map(|r| format!("refused: {r}"))
            })
            .unwrap_or(text);
        if let Ok(mut v) = self.errors.lock() {
            v.push(PathError { path, message });
        }
    }

    /// Whether something stands at `rel` (not following a symlink there).
    fn exists(&self, rel: &Path) -> bool {
        self.beneath.parent(rel).is_ok_and(|(dir, name)| {
            rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
        })
    }

    /// Directories, parents first, one depth at a time (the directories of one depth are
    /// independent of each other and made in parallel). One that cannot be made (something
    /// else is in its place) fails with everything below it. Under `Never`, a directory that
    /// existed keeps its metadata.
    fn make_dirs<'p>(&self, plan: &'p Plan) -> Dirs<'p> {
        let mut dirs = Dirs {
            made: HashMap::new(),
            created: HashMap::new(),
        };
        for level in by_depth(&plan.dirs) {
            let results: Vec<_> = level
                .par_iter()
                .map(|&(rel, _)| {
                    self.beneath
                        .parent(rel)
                        .at(self.shown(rel))
                        .and_then(|(parent, name)| {
                            make_dir(&parent, name, &self.shown(rel), !self.never)
                        })
                })
                .collect();
            for (&(rel, _), made_dir) in level.iter().zip(results) {
                match made_dir {
                    Ok(dir) => {
                        if dir.created || !self.never {
                            dirs.made.insert(rel.as_path(), dir.id);
                        }
                        if dir.created {
                            dirs.created.insert(rel.as_path(), dir.gid == self.egid);
                        }
                    }
                    Err(e) => self.fail(rel, &e),
                }
            }
        }
        dirs
    }

    /// The files to write, in read order. What already stands at each file's place is
    /// compared first (in parallel); only the files to write are located: one batched lookup
    /// per file, in the same parallel pass (a missing blob fails the restore before anything
    /// is written).
    fn files_to_write<'p>(
        &self,
        plan: &'p Plan,
        dirs: &Dirs<'_>,
        summary: &mut RestoreSummary,
    ) -> Result<Vec<FileToWrite<'p>>> {
        let locate = |refs: Vec<ChunkRef>| -> Result<Vec<(ChunkRef, BlobLoc)>> {
            let ids: Vec<ChunkId> = refs.iter().map(|c| c.id).collect();
            let mut located = Vec::with_capacity(ids.len());
            for (c, loc) in refs.into_iter().zip(self.repo.index.blobs(&ids)?) {
                let loc = loc.ok_or(Error::MissingBlob(c.id))?;
                // The bytes written must be what the entry's size accounts for.
                crate::repo::check_file_chunk(&c, &loc)?;
                located.push((c, loc));
            }
            Ok(located)
        };
        let compared: Vec<Result<Compared<'_>>> = plan
            .files
            .par_iter()
            .map(|(rel, entry)| {
                let refs = self.repo.file_chunks(entry)?;
                if rel.parent().is_some_and(|p| dirs.created.contains_key(p)) {
                    return Ok(Compared::Write(rel, entry, locate(refs)?));
                }
                Ok(match self.keep_existing(rel, entry, &refs) {
                    Ok(true) => Compared::Kept,
                    Ok(false) => Compared::Write(rel, entry, locate(refs)?),
                    Err(e) => {
                        self.fail(rel, &e);
                        Compared::Failed
                    }
                })
            })
            .collect();
        let mut keyed: Vec<FileToWrite> = Vec::with_capacity(plan.files.len());
        for c in compared {
            match c? {
                Compared::Write(rel, entry, located) => keyed.push((None, rel, entry, located)),
                Compared::Kept => summary.skipped += 1,
                Compared::Failed => {}
            }
        }
        // Files in the order of their first chunk's place: its pack, ranked by where the
        // snapshot's walk (the order the backup wrote in) first meets the pack, then its
        // offset. A large file's later chunks are then in the packs read next (ranking packs
        // by id instead sent the reads back and forth between distant packs: a read-ahead
        // then holds a pack's range from a file's first touch until that pack's turn).
        let mut pack_rank: HashMap<PackId, usize> = HashMap::new();
        for (key, _, _, located) in keyed.iter_mut() {
            for (_, loc) in located.iter() {
                let next = pack_rank.len();
                pack_rank.entry(loc.pack).or_insert(next);
            }
            *key = located
                .first()
                .and_then(|(_, l)| Some((*pack_rank.get(&l.pack)?, l.offset)));
        }
        keyed.sort_by_key(|k| k.0);
        Ok(keyed)
    }

    /// Writes `files` in their order, every thread taking the next (not one contiguous half
    /// per thread, as a parallel iterator would): reads move through the packs together.
    fn write_files(
        &self,
        files: &[FileToWrite<'_>],
        dirs: &Dirs<'_>,
        summary: &mut RestoreSummary,
    ) -> Result<()> {
        // The reads in the order they will be made: a remote storage fetches them ahead.
        let reads: Vec<RangeRead> = files
            .iter()
            .flat_map(|(_, _, _, chunks)| chunks.iter())
            .map(|(_, loc)| RangeRead {
                pack: loc.pack,
                offset: loc.offset,
                len: loc.span(),
            })
            .collect();
        // Test hook: every chunk is located, nothing read yet (a gc running now retires
        // packs this restore will read).
        crate::failpoint::pause("restore-located");
        let _read_ahead = self.repo.storage().read_ahead(&reads);
        drop(reads);
        let next_file = AtomicUsize::new(0);
        let write_one = |(_, rel, entry, chunks): &FileToWrite| {
            let ours_already = entry.attrs.uid == self.euid
                && entry.attrs.gid == self.egid
                && rel
                    .parent()
                    .and_then(|p| dirs.created.get(p))
                    .is_some_and(|&our_group| our_group);
            let chown = self.owners && !ours_already;
            match self.restore_file(rel, entry, chunks, chown) {
                Ok(outcome) => Ok(Some(outcome)),
                Err(
                    e @ (Error::MissingBlob(_) | Error::CorruptBlob { .. } | Error::Index { .. }),
                ) => Err(e),
                Err(e) => {
                    self.fail(rel, &e);
                    Ok(None)
                }
            }
        };
        let written: Vec<Result<Option<u64>>> = (0..rayon::current_num_threads())
            .into_par_iter()
            .flat_map_iter(|_| {
                let mut mine = Vec::new();
                while let Some(file) = files.get(next_file.fetch_add(1, Ordering::Relaxed)) {
                    mine.push(write_one(file));
                }
                mine
            })
            .collect();
        for w in written {
            if let Some(n) = w? {
                summary.bytes += n;
                summary.files += 1;
            }
        }
        Ok(())
    }

    /// Hard links to the files written. Under `Never` an existing entry at a link's place
    /// stays; a link that already is one to its first name is left.
    fn link_files(&self, plan: &Plan, summary: &mut RestoreSummary) {
        for (first, link) in &plan.links {
            if self.never && self.exists(link) {
                summary.skipped += 1;
                continue;
            }
            match self.link_file(first, link) {
                Ok(true) => summary.others += 1,
                Ok(false) => summary.skipped += 1,
                Err(e) => self.fail(link, &e),
            }
        }
    }

    fn link_file(&self, first: &Path, link: &Path) -> Result<bool> {
        let (from_dir, from_name) = self.beneath.parent(first).at(self.shown(first))?;
        let (to_dir, to_name) = self.beneath.parent(link).at(self.shown(link))?;
        let same_inode = |dir: &OwnedFd, name: &OsStr| {
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .ok()
                .map(|st| (st.st_dev, st.st_ino))
        };
        if same_inode(&to_dir, to_name).is_some()
            && same_inode(&to_dir, to_name) == same_inode(&from_dir, from_name)
        {
            return Ok(false);
        }
        let (to_dir, to_name) = self.beneath.make_room(link, &self.shown(link))?;
        // Flags 0: a symlink swapped in for `first` is linked itself, never followed.
        rustix::fs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())
            .map_err(std::io::Error::from)
            .at(self.shown(link))?;
        Ok(true)
    }

    /// Special files, then symlinks: nothing is created through one. Each is independent of
    /// the others (no path is resolved through a symlink or a special file), so in parallel.
    fn make_others(&self, plan: &Plan, summary: &mut RestoreSummary) {
        let others: Vec<Option<bool>> = plan
            .specials
            .par_iter()
            .chain(plan.symlinks.par_iter())
            .map(|(rel, entry)| {
                if self.never && self.exists(rel) {
                    return Some(false);
                }
                let created = if entry.kind == EntryKind::Symlink {
                    restore_symlink(&self.beneath, rel, &self.shown(rel), entry, self.owners)
                } else {
                    restore_special(&self.beneath, rel, &self.shown(rel), entry, self.owners)
                };
                match created {
                    Ok(()) => Some(true),
                    Err(e) => {
                        self.fail(rel, &e);
                        None
                    }
                }
            })
            .collect();
        for made_one in others.into_iter().flatten() {
            if made_one {
                summary.others += 1;
            } else {
                summary.skipped += 1;
            }
        }
    }

    /// `delete`: removes what the snapshot does not have from the directories this restore
    /// made or checked (and the target itself when the whole snapshot is restored).
    fn delete_extras(&self, plan: &Plan, dirs: &Dirs<'_>, summary: &mut RestoreSummary) {
        for (dir, keep) in &plan.names {
            if !dir.as_os_str().is_empty() && !dirs.made.contains_key(dir.as_path()) {
                continue;
            }
            let io_error = |rel: &Path, source| Error::Io {
                path: self.shown(rel),
                source,
            };
            let extras = self
                .beneath
                .dir(dir)
                .and_then(|fd| Ok((existing::names_in(&fd)?, fd)));
            let (names, fd) = match extras {
                Ok(found) => found,
                Err(e) => {
                    self.fail(dir, &io_error(dir, e));
                    continue;
                }
            };
            for name in names.iter().filter(|n| !keep.contains(n.as_bytes())) {
                match safe_fs::remove_tree(&fd, name) {
                    Ok(n) => summary.deleted += n,
                    Err(e) => self.fail(&dir.join(name), &io_error(&dir.join(name), e)),
                }
            }
        }
    }

    /// Directory metadata last, so creating children does not touch mtimes; deepest first
    /// (a parent's mode may shut us out of its children), each depth in parallel; only on
    /// the directory this restore made or checked (same inode).
    fn apply_dir_metas(&self, plan: &Plan, dirs: &Dirs<'_>, summary: &mut RestoreSummary) {
        for level in by_depth(&plan.dirs).iter().rev() {
            let applied: Vec<Option<bool>> = level
                .par_iter()
                .map(|&(rel, entry)| {
                    let want = dirs.made.get(rel.as_path())?;
                    let shown = self.shown(rel);
                    let r = apply_dir_meta(&self.beneath, rel, &shown, entry, want, self.owners);
                    Some(r.map_err(|e| self.fail(rel, &e)).is_ok())
                })
                .collect();
            summary.dirs += applied.into_iter().flatten().filter(|&ok| ok).count() as u64;
        }
    }

    /// Whether the file at `rel` already is the snapshot's (or stays, under `Never`): then
    /// its metadata is made the snapshot's where it differs and it is not written.
    fn keep_existing(&self, rel: &Path, entry: &Entry, refs: &[ChunkRef]) -> Result<bool> {
        let path = &self.shown(rel);
        let (parent, name) = self.beneath.parent(rel).at(path)?;
        let found = existing::existing_file(
            &parent,
            name,
            entry,
            refs,
            self.opts.overwrite,
            self.owners,
            self.repo.encryption(),
        )
        .at(path)?;
        let kept = match found {
            Existing::Missing | Existing::Differs => return Ok(false),
            Existing::Kept | Existing::Unchanged => true,
            Existing::Same(fd) => {
                // Same content: only the metadata is made the snapshot's.
                let st = rustix::fs::fstat(&fd)
                    .map_err(std::io::Error::from)
                    .at(path)?;
                if !existing::meta_matches(&st, entry, self.owners) || !entry.xattrs.is_empty() {
                    apply_meta(&fd, path, entry, self.owners)?;
                } else if !existing::same_mtime(&st, entry) {
                    rustix::fs::futimens(&fd, &times(entry))
                        .map_err(std::io::Error::from)
                        .at(path)?;
                }
                existing::drop_extra_xattrs(&fd, entry).at(path)?;
                true
            }
        };
        if let Some(p) = self.opts.progress.as_deref() {
            p.bytes.fetch_add(entry.attrs.size, Ordering::Relaxed);
            p.files.fetch_add(1, Ordering::Relaxed);
        }
        Ok(kept)
    }

    fn restore_file(
        &self,
        rel: &Path,
        entry: &Entry,
        chunks: &[(ChunkRef, BlobLoc)],
        chown: bool,
    ) -> Result<u64> {
        let path = &self.shown(rel);
        // Create first and clear the name only when something stands there: a restore into
        // new directories then costs no stat per file. O_EXCL | O_NOFOLLOW either way: the
        // file written is always a new inode made here.
        let (parent, name) = self.beneath.parent(rel).at(path)?;
        let create = || {
            rustix::fs::openat(
                &parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        };
        let fd = match create() {
            Err(rustix::io::Errno::EXIST) => {
                clear_name(&parent, name, path, self.beneath.remove_dirs_in_way)?;
                create()
            }
            other => other,
        }
        .map_err(std::io::Error::from)
        .at(path)?;
        let mut f = File::from(fd);
        // A file whose content could not be written is not left half-restored under its name
        // (one whose metadata could not be set keeps its content; both are reported).
        let written = match self.fill_file(&mut f, path, chunks) {
            Ok(written) => written,
            Err(e) => {
                remove_if_ours(&parent, name, &f);
                return Err(e);
            }
        };
        apply_meta(&f, path, entry, chown)?;
        if let Some(p) = self.opts.progress.as_deref() {
            p.files.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written)
    }

    /// Writes a newly created file's content (restore_file).
    fn fill_file(&self, f: &mut File, path: &Path, chunks: &[(ChunkRef, BlobLoc)]) -> Result<u64> {
        let mut written = 0u64;
        let mut trailing_hole = false;
        for (c, loc) in chunks {
            let data = self.repo.read_located(&c.id, loc)?;
            let hole = write_sparse(f, &data).at(path)?;
            if !data.is_empty() {
                trailing_hole = hole;
            }
            written += data.len() as u64;
            if let Some(p) = self.opts.progress.as_deref() {
                p.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        // Only a file that ends in skipped zero blocks is shorter than its writes.
        if trailing_hole {
            f.set_len(written).at(path)?;
        }
        Ok(written)
    }
}

/// Removes `name` in `parent` if it is still the file `ours` that this restore created
/// (same device and inode), without following anything: if the owner of the directory put
/// something else there, that is left alone. Between the check and the unlink that owner
/// could swap the name again; what is then unlinked is a name in their own directory.
fn remove_if_ours(parent: &OwnedFd, name: &OsStr, ours: &File) {
    let same = rustix::fs::fstat(ours)
        .ok()
        .zip(rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).ok());
    if let Some((a, b)) = same {
        if a.st_dev == b.st_dev && a.st_ino == b.st_ino {
            let _ = rustix::fs::unlinkat(parent, name, AtFlags::empty());
        }
    }
}

/// Writes `data` at the current position, seeking over all-zero 4 KiB blocks instead of
/// writing them, so sparse files stay sparse (as `cp --sparse=auto` does). True when `data`
/// ends in such a skipped block: the file's length is then short of the position until a
/// later write or `set_len`.
fn write_sparse(f: &mut File, data: &[u8]) -> std::io::Result<bool> {
    const BLOCK: usize = 4096;
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    let mut i = 0;
    let mut hole = false;
    while i < data.len() {
        let end = (i + BLOCK).min(data.len());
        if zero(&data[i..end]) {
            f.seek(SeekFrom::Current((end - i) as i64))?;
            hole = true;
            i = end;
            continue;
        }
        let mut j = end;
        while j < data.len() {
            let next = (j + BLOCK).min(data.len());
            if zero(&data[j..next]) {
                break;
            }
            j = next;
        }
        f.write_all(&data[i..j])?;
        hole = false;
        i = j;
    }
    Ok(hole)
}

/// An `O_PATH` descriptor of the entry just created at `name`, checked to be of `kind`: the
/// metadata of devices, fifos and symlinks goes through it (they must not be opened for
/// I/O), so an entry swapped in by another user is never the one changed.
fn open_created(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    kind: rustix::fs::FileType,
) -> Result<OwnedFd> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .at(path)?;
    let st = rustix::fs::fstat(&fd)
        .map_err(std::io::Error::from)
        .at(path)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != kind {
        return Err(Error::Unsafe {
            path: path.to_path_buf(),
            reason: "replaced during the restore; its metadata was not applied".into(),
        });
    }
    Ok(fd)
}

/// `/proc/self/fd/N`: names exactly the inode of an `O_PATH` descriptor, for the calls
/// (chmod, setxattr, utimensat) that take no such descriptor.
fn proc_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The plan's directories grouped by depth, shallowest first (the plan lists parents before
/// children; within a depth the plan's order is kept).
fn by_depth(dirs: &[(PathBuf, Entry)]) -> Vec<Vec<(&PathBuf, &Entry)>> {
    let mut levels: Vec<Vec<(&PathBuf, &Entry)>> = Vec::new();
    for (rel, entry) in dirs {
        // Every planned path has at least one component: depth 1 is index 0.
        let index = rel.components().count().saturating_sub(1);
        if levels.len() <= index {
            levels.resize_with(index + 1, Vec::new);
        }
        if let Some(level) = levels.get_mut(index) {
            level.push((rel, entry));
        }
    }
    levels
}

/// A directory's metadata, on the directory this restore made or checked (`want`, its
/// (device, inode)): one swapped in meanwhile is left alone and reported.
fn apply_dir_meta(
    beneath: &Beneath,
    rel: &Path,
    path: &Path,
    entry: &Entry,
    want: &(u64, u64),
    owners: bool,
) -> Result<()> {
    let fd = beneath.dir(rel).at(path)?;
    let st = rustix::fs::fstat(&fd)
        .map_err(std::io::Error::from)
        .at(path)?;
    if (st.st_dev as u64, st.st_ino as u64) != *want {
        return Err(Error::Unsafe {
            path: path.to_path_buf(),
            reason:
                "replaced by another directory during the restore; its metadata was not applied"
                    .into(),
        });
    }
    apply_meta(&fd, path, entry, owners)?;
    existing::drop_extra_xattrs(&fd, entry).at(path)
}

fn restore_symlink(
    beneath: &Beneath,
    rel: &Path,
    path: &Path,
    entry: &Entry,
    owners: bool,
) -> Result<()> {
    let target = match &entry.content {
        xstore_format::tree::Content::Target(t) => t,
        _ => return Ok(()),
    };
    let (parent, name) = beneath.make_room(rel, path)?;
    let io = errno_at(path);
    rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name).map_err(io)?;
    if owners {
        let fd = open_created(&parent, name, path, rustix::fs::FileType::Symlink)?;
        let (u, g) = owner_ids(entry);
        rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH).map_err(io)?;
    }
    // Symlinks have no mode of their own and, on Linux, no user xattrs. Their times are set
    // by name without following: at worst on an entry another user put there.
    rustix::fs::utimensat(&parent, name, &times(entry), AtFlags::SYMLINK_NOFOLLOW).map_err(io)
}

fn restore_special(
    beneath: &Beneath,
    rel: &Path,
    path: &Path,
    entry: &Entry,
    owners: bool,
) -> Result<()> {
    use rustix::fs::FileType;
    let (parent, name) = beneath.make_room(rel, path)?;
    let (ft, dev) = match entry.kind {
        EntryKind::Fifo => (FileType::Fifo, 0),
        EntryKind::CharDevice => (FileType::CharacterDevice, entry.attrs.rdev),
        EntryKind::BlockDevice => (FileType::BlockDevice, entry.attrs.rdev),
        _ => return Ok(()),
    };
    let io = errno_at(path);
    rustix::fs::mknodat(&parent, name, ft, Mode::from_raw_mode(0o600), dev).map_err(io)?;
    let fd = open_created(&parent, name, path, ft)?;
    if owners {
        let (u, g) = owner_ids(entry);
        rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH).map_err(io)?;
    }
    let exact = proc_path(&fd);
    rustix::fs::chmod(&exact, Mode::from_raw_mode(entry.attrs.mode)).map_err(io)?;
    for (k, v) in &entry.xattrs {
        rustix::fs::setxattr(
            &exact,
            OsStr::from_bytes(k),
            v,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(io)?;
    }
    rustix::fs::utimensat(rustix::fs::CWD, &exact, &times(entry), AtFlags::empty()).map_err(io)
}
