//! The NFSv3 front end of [`crate::fsview::FsView`] (the `nfsserve` crate, userspace, no
//! kernel server): read-only, one export per account, each on its own port.
//!
//! Who may connect is decided by client address at accept: an export is open to the
//! addresses its account's hosts resolve to (in `nfs_per_host` mode each address sees only
//! the snapshots of the hosts at it). What a connected client may read is decided per call
//! by [`gate`], as the kernel server decides it: secure ports, AUTH_SYS credentials, root
//! squashing, and the snapshot's owners and modes. Addresses can be spoofed on a shared
//! network segment and AUTH_SYS uids are the client's word: export only on networks you
//! trust, to hosts whose root you trust with the account's files.

mod gate;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use xstore::HostName;

use async_trait::async_trait;
use nfsserve::nfs::{
    fattr3, fileid3, filename3, ftype3, nfs_fh3, nfspath3, nfsstat3, nfstime3, sattr3, specdata3,
};
use nfsserve::tcp::{NFSTcp, NFSTcpListener};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};

use crate::cache::ByteLru;
use crate::fsview::{FsError, FsView, NodeAttr, ViewOptions, ROOT_INO};
use gate::{Connection, HandleKey, Route};
use xstore::Error;
use xstore_fleet::NfsPolicy;
use xstore_format::meta::EntryKind;

/// Client connections one export serves at once; further ones are closed at accept.
const MAX_CONNECTIONS: usize = 256;

/// One export: which hosts it shows and who may mount it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsExport {
    /// A name for logs (the account).
    pub name: String,
    /// Where its public listener binds.
    pub listen: SocketAddr,
    /// Client addresses allowed to connect, each with the hosts whose snapshots it sees.
    pub clients: BTreeMap<IpAddr, Vec<HostName>>,
    /// Squashing, secure ports.
    pub policy: NfsPolicy,
}

/// Why [`exports_for`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// `--account` names an account the inventory does not have.
    #[error("account {0} is not in the inventory")]
    UnknownAccount(String),
    /// Consecutive ports from the base port would pass 65535.
    #[error("listen port {base}: too many accounts ({accounts}) for the ports above it")]
    PortsExhausted {
        /// The base port.
        base: u16,
        /// How many exports were asked for.
        accounts: usize,
    },
    /// Two accounts would listen on the same port.
    #[error("accounts {0} and {1} would both listen on port {2}; give them distinct nfs_port")]
    PortTaken(String, String, u16),
}

/// The exports of `inventory`'s accounts (or only `account`): one per account, on its
/// `nfs_port` at `listen`'s address. An account without `nfs_port` gets `listen`'s port
/// plus its position among the exported accounts, with a warning: that port moves when an
/// account before it is added or removed (port 0: any free port each). Each is open to the
/// addresses its hosts' names resolve to, plus `extra_allowed` (which see the whole
/// account). A host name that does not resolve is logged and contributes no address.
pub fn exports_for(
    inventory: &xstore_fleet::Inventory,
    account: Option<&str>,
    listen: SocketAddr,
    extra_allowed: &[IpAddr],
) -> Result<Vec<NfsExport>, ExportError> {
    let accounts: Vec<&xstore_fleet::Account> = match account {
        Some(a) => vec![inventory
            .account(a)
            .ok_or_else(|| ExportError::UnknownAccount(a.to_string()))?],
        None => inventory.accounts.iter().collect(),
    };
    let mut exports: Vec<NfsExport> = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let mut at = listen;
        match account.nfs.port {
            Some(port) => at.set_port(port),
            None if listen.port() == 0 => {}
            None => {
                let port = u16::try_from(usize::from(listen.port()) + i).map_err(|_| {
                    ExportError::PortsExhausted {
                        base: listen.port(),
                        accounts: accounts.len(),
                    }
                })?;
                tracing::warn!(
                    "account {}: no nfs_port in the inventory; port {port} counts from --listen \
                     and moves when an account before it is added or removed",
                    account.name
                );
                at.set_port(port);
            }
        }
        if at.port() != 0 {
            if let Some(other) = exports.iter().find(|e| e.listen.port() == at.port()) {
                return Err(ExportError::PortTaken(
                    other.name.clone(),
                    account.name.clone(),
                    at.port(),
                ));
            }
        }
        let mut clients: BTreeMap<IpAddr, Vec<HostName>> = BTreeMap::new();
        for host in account.hosts.iter().filter_map(|h| inventory.host(h)) {
            for address in addresses_of(&host.address) {
                let sees = clients.entry(address).or_default();
                if account.nfs.per_host {
                    sees.push(host.name.clone());
                } else {
                    *sees = account.hosts.clone();
                }
            }
        }
        for address in extra_allowed {
            clients.insert(canonical(*address), account.hosts.clone());
        }
        for sees in clients.values_mut() {
            sees.sort();
            sees.dedup();
        }
        exports.push(NfsExport {
            name: account.name.clone(),
            listen: at,
            clients,
            policy: account.nfs,
        });
    }
    Ok(exports)
}

fn addresses_of(address: &str) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    match (address, 0).to_socket_addrs() {
        Ok(it) => it.map(|a| canonical(a.ip())).collect(),
        Err(e) => {
            tracing::warn!("{address}: {e}; its account cannot mount from it");
            Vec::new()
        }
    }
}

/// What [`NfsServer::reload`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Exports started.
    pub added: Vec<String>,
    /// Exports stopped (their clients disconnected).
    pub removed: Vec<String>,
    /// Exports whose clients, hosts or policy changed (kept running; a client whose view
    /// changed is disconnected).
    pub changed: Vec<String>,
}

/// An export's routes by the hosts they show.
type ViewsByHosts = HashMap<Vec<HostName>, Arc<Route>>;

/// An export's routes: client address → what it sees.
struct Routes {
    by_address: HashMap<IpAddr, Arc<Route>>,
    policy: NfsPolicy,
}

struct Running {
    export: NfsExport,
    bound: SocketAddr,
    routes: Arc<RwLock<Routes>>,
    /// Views by the hosts they show, kept across reloads so that mounts stay valid.
    views: HashMap<Vec<HostName>, Arc<Route>>,
    /// Turns true to stop the export and every connection through it.
    stop: tokio::sync::watch::Sender<bool>,
}

/// Running exports; dropping it stops them.
pub struct NfsServer {
    runtime: tokio::runtime::Runtime,
    repo: PathBuf,
    running: BTreeMap<String, Running>,
    shared: Shared,
}

/// The default of [`NfsServer::start`]'s `cache_bytes`: sized for a small server.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// Views running at once on the blocking pool: each may decode a tree, whose size the
/// customer's host decided, so their number bounds the transient memory.
const CONCURRENT_VIEW_CALLS: usize = 4;

/// What every view of one server shares: its memory budget.
#[derive(Clone)]
struct Shared {
    caches: Arc<crate::fsview::ViewCaches>,
    listings: Arc<std::sync::Mutex<ByteLru<(u64, fileid3), Listing>>>,
    calls: Arc<tokio::sync::Semaphore>,
}

impl NfsServer {
    /// Starts every export of `repo`. `cache_bytes` bounds what all exports keep together:
    /// half for decoded trees, a quarter each for file chunks and directory listings
    /// ([`DEFAULT_CACHE_BYTES`]). Memory beyond it: the views' nodes (a few hundred bytes per
    /// entry looked up) and at most [`CONCURRENT_VIEW_CALLS`] trees being decoded.
    pub fn start(
        repo: &Path,
        exports: &[NfsExport],
        cache_bytes: usize,
    ) -> xstore::Result<NfsServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|e| io_error(repo, e))?;
        let mut server = NfsServer {
            runtime,
            repo: repo.to_path_buf(),
            running: BTreeMap::new(),
            shared: Shared {
                caches: crate::fsview::ViewCaches::new(cache_bytes / 2, cache_bytes / 4),
                listings: Arc::new(std::sync::Mutex::new(ByteLru::new(cache_bytes / 4))),
                calls: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_VIEW_CALLS)),
            },
        };
        for export in exports {
            let running = server.launch(export)?;
            server.running.insert(export.name.clone(), running);
        }
        Ok(server)
    }

    /// Applies a new set of exports (the inventory was reloaded): starts new ones, stops
    /// removed ones and those whose port changed, updates the rest in place. Exports that
    /// did not change are not touched: their clients keep their connections and handles.
    pub fn reload(&mut self, exports: &[NfsExport]) -> xstore::Result<Reloaded> {
        let mut done = Reloaded::default();
        let wanted: BTreeMap<&str, &NfsExport> =
            exports.iter().map(|e| (e.name.as_str(), e)).collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|e| e.listen != r.export.listen)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                let _ = r.stop.send(true);
            }
            if !wanted.contains_key(name.as_str()) {
                done.removed.push(name);
            }
        }
        for export in exports {
            match self.running.get(&export.name) {
                Some(r) if r.export == *export => {}
                Some(r) => {
                    let (routes, views) = self.routes_for(export, r.views.clone())?;
                    if let Some(r) = self.running.get_mut(&export.name) {
                        *r.routes.write().map_err(|_| poisoned())? = routes;
                        r.views = views;
                        r.export = export.clone();
                    }
                    done.changed.push(export.name.clone());
                }
                None => {
                    let running = self.launch(export)?;
                    self.running.insert(export.name.clone(), running);
                    done.added.push(export.name.clone());
                }
            }
        }
        Ok(done)
    }

    /// The routes of an export, reusing the views (and their servers) of host sets it had.
    fn routes_for(
        &self,
        export: &NfsExport,
        mut old: HashMap<Vec<HostName>, Arc<Route>>,
    ) -> xstore::Result<(Routes, ViewsByHosts)> {
        let mut views: HashMap<Vec<HostName>, Arc<Route>> = HashMap::new();
        let mut by_address = HashMap::new();
        for (address, hosts) in &export.clients {
            let route = match views.get(hosts) {
                Some(r) => r.clone(),
                None => {
                    let r = match old.remove(hosts) {
                        Some(r) => r,
                        None => Arc::new(self.runtime.block_on(start_route(
                            &self.repo,
                            &export.name,
                            hosts,
                            self.shared.clone(),
                        ))?),
                    };
                    views.insert(hosts.clone(), r.clone());
                    r
                }
            };
            by_address.insert(*address, route);
        }
        Ok((
            Routes {
                by_address,
                policy: export.policy,
            },
            views,
        ))
    }

    fn launch(&self, export: &NfsExport) -> xstore::Result<Running> {
        let (routes, views) = self.routes_for(export, HashMap::new())?;
        let routes = Arc::new(RwLock::new(routes));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let bound = self
            .runtime
            .block_on(listen(export, routes.clone(), stopped))?;
        Ok(Running {
            export: export.clone(),
            bound,
            routes,
            views,
            stop,
        })
    }

    /// Each export's name and the address its public listener bound (port 0 resolved).
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .iter()
            .map(|(name, r)| (name.clone(), r.bound))
            .collect()
    }

    /// Stops serving.
    pub fn shutdown(self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        self.runtime.shutdown_background();
    }
}

fn poisoned() -> Error {
    Error::Poisoned
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Opens a view of `hosts` and starts its NFS server on 127.0.0.1 (reachable only
/// through the gate: [`gate`]).
/// The account's share of the cache: its views never hit another account's entries.
async fn start_route(
    repo: &Path,
    account: &str,
    hosts: &[HostName],
    shared: Shared,
) -> xstore::Result<Route> {
    let scope = u64::from_le_bytes(
        blake3::hash(account.as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap_or_default(),
    );
    let view = Arc::new(FsView::open_with_caches(
        repo,
        ViewOptions {
            hosts: Some(hosts.to_vec()),
            ..ViewOptions::default()
        },
        shared.caches.clone(),
        scope,
    )?);
    let key = Arc::new(HandleKey::random().map_err(|e| io_error(repo, e))?);
    let server = NFSTcpListener::bind(
        "127.0.0.1:0",
        Export {
            view: view.clone(),
            key: key.clone(),
            shared,
        },
    )
    .await
    .map_err(|e| io_error(Path::new("127.0.0.1:0"), e))?;
    let at = SocketAddr::new(server.get_listen_ip(), server.get_listen_port());
    let task = tokio::spawn(async move {
        if let Err(e) = server.handle_forever().await {
            tracing::error!("nfs server stopped: {e}");
        }
    });
    Ok(Route {
        view,
        key,
        server: at,
        task,
    })
}

/// Binds an export's public listener and accepts its clients until `stop`.
async fn listen(
    export: &NfsExport,
    routes: Arc<RwLock<Routes>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> xstore::Result<SocketAddr> {
    let at = |e: std::io::Error| io_error(Path::new(&export.listen.to_string()), e);
    let public = tokio::net::TcpListener::bind(export.listen)
        .await
        .map_err(at)?;
    let addr = public.local_addr().map_err(at)?;
    let name = export.name.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = public.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (client, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(export = %name, "accept: {e}");
                    continue;
                }
            };
            let route = match routes.read() {
                Ok(r) => r.by_address.get(&canonical(peer.ip())).cloned(),
                Err(_) => break,
            };
            let Some(route) = route else {
                tracing::warn!(export = %name, %peer, "refused: address not allowed");
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(export = %name, %peer, "refused: {MAX_CONNECTIONS} connections open");
                continue;
            };
            let connection = Connection {
                peer,
                export: name.clone(),
                routes: routes.clone(),
                route,
            };
            let stopped = stop.clone();
            tokio::spawn(async move {
                connection.serve(client, stopped).await;
                drop(slot);
            });
        }
    });
    Ok(addr)
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The file system an export's NFS server serves (behind the gate).
struct Export {
    view: Arc<FsView>,
    key: Arc<HandleKey>,
    /// Recent listings (in `shared`, by route and directory): NFS pages a directory over
    /// many READDIR calls, each naming the last file id it saw; listing once and indexing by
    /// id keeps a large directory linear (one too large for the budget is listed per page).
    shared: Shared,
}

impl Listing {
    fn bytes(&self) -> usize {
        self.items
            .iter()
            .map(|i| std::mem::size_of::<crate::fsview::DirItem>() + i.name.len() + 32)
            .sum()
    }
}

struct Listing {
    items: Vec<crate::fsview::DirItem>,
    /// File id → position of the entry after it.
    next: std::collections::HashMap<fileid3, usize>,
    taken: std::time::Instant,
}

/// How long a listing serves further pages of the same directory.
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(5);

fn status(e: FsError) -> nfsstat3 {
    match e {
        FsError::NotFound => nfsstat3::NFS3ERR_NOENT,
        FsError::NotADirectory => nfsstat3::NFS3ERR_NOTDIR,
        FsError::IsADirectory => nfsstat3::NFS3ERR_ISDIR,
        FsError::NotASymlink => nfsstat3::NFS3ERR_INVAL,
        FsError::ReadOnly => nfsstat3::NFS3ERR_ROFS,
        FsError::PermissionDenied => nfsstat3::NFS3ERR_ACCES,
        FsError::Repo(err) => {
            tracing::warn!("nfs: {err}");
            nfsstat3::NFS3ERR_IO
        }
    }
}

fn nfs_time(ns: i64) -> nfstime3 {
    let secs = ns.div_euclid(1_000_000_000);
    nfstime3 {
        seconds: u32::try_from(secs.max(0)).unwrap_or(u32::MAX),
        nseconds: ns.rem_euclid(1_000_000_000) as u32,
    }
}

/// A node's NFS attributes.
fn fattr(a: &NodeAttr) -> fattr3 {
    fattr3 {
        ftype: match a.kind {
            EntryKind::File => ftype3::NF3REG,
            EntryKind::Dir => ftype3::NF3DIR,
            EntryKind::Symlink => ftype3::NF3LNK,
            EntryKind::CharDevice => ftype3::NF3CHR,
            EntryKind::BlockDevice => ftype3::NF3BLK,
            EntryKind::Fifo => ftype3::NF3FIFO,
        },
        mode: a.attrs.mode & 0o7777,
        nlink: u32::try_from(a.attrs.nlink).unwrap_or(u32::MAX),
        uid: a.attrs.uid,
        gid: a.attrs.gid,
        size: a.attrs.size,
        used: a.attrs.size,
        rdev: specdata3 {
            specdata1: libc::major(a.attrs.rdev),
            specdata2: libc::minor(a.attrs.rdev),
        },
        fsid: 0x7873_746f_7265,
        fileid: a.ino,
        atime: nfs_time(a.attrs.mtime_ns),
        mtime: nfs_time(a.attrs.mtime_ns),
        ctime: nfs_time(a.attrs.ctime_ns),
    }
}

impl Export {
    /// Runs a view call on the blocking pool (it reads the repository).
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FsView) -> Result<T, FsError> + Send + 'static,
    ) -> Result<T, nfsstat3> {
        let view = self.view.clone();
        let _slot = self
            .shared
            .calls
            .acquire()
            .await
            .map_err(|_| nfsstat3::NFS3ERR_IO)?;
        tokio::task::spawn_blocking(move || f(&view))
            .await
            .map_err(|_| nfsstat3::NFS3ERR_IO)?
            .map_err(status)
    }
}

#[async_trait]
impl NFSFileSystem for Export {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadOnly
    }

    fn root_dir(&self) -> fileid3 {
        ROOT_INO
    }

    /// Only paths under the gate's prefix: a local user who connects past the gate gets
    /// no handle.
    async fn path_to_id(&self, path: &[u8]) -> Result<fileid3, nfsstat3> {
        let path = path
            .strip_prefix(self.key.mount_prefix.as_slice())
            .filter(|rest| rest.is_empty() || rest.starts_with(b"/"))
            .ok_or(nfsstat3::NFS3ERR_ACCES)?
            .to_vec();
        self.call(move |v| v.resolve_mount_path(&path, None).map(|a| a.ino))
            .await
    }

    fn id_to_fh(&self, id: fileid3) -> nfs_fh3 {
        nfs_fh3 {
            data: self.key.encode(id),
        }
    }

    fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        self.key.decode(&fh.data)
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let name = filename.0.clone();
        self.call(move |v| match name.as_slice() {
            b"." => Ok(dirid),
            b".." => v.parent(dirid),
            _ => v.lookup(dirid, &name).map(|a| a.ino),
        })
        .await
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        self.call(move |v| v.getattr(id).map(|a| fattr(&a))).await
    }

    async fn setattr(&self, _id: fileid3, _setattr: sattr3) -> Result<fattr3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn read(
        &self,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        self.call(move |v| {
            let size = v.getattr(id)?.attrs.size;
            let data = v.read(id, offset, count as usize)?;
            let eof = offset + data.len() as u64 >= size;
            Ok((data, eof))
        })
        .await
    }

    async fn write(&self, _id: fileid3, _offset: u64, _data: &[u8]) -> Result<fattr3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn create(
        &self,
        _dirid: fileid3,
        _filename: &filename3,
        _attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn create_exclusive(
        &self,
        _dirid: fileid3,
        _filename: &filename3,
    ) -> Result<fileid3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn mkdir(
        &self,
        _dirid: fileid3,
        _dirname: &filename3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn remove(&self, _dirid: fileid3, _filename: &filename3) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn rename(
        &self,
        _from_dirid: fileid3,
        _from_filename: &filename3,
        _to_dirid: fileid3,
        _to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        let listings = self.shared.listings.clone();
        let key = (self.key.route_id(), dirid);
        self.call(move |v| {
            let cached = listings
                .lock()
                .ok()
                .and_then(|mut l| l.get(&key))
                .filter(|l| start_after != 0 && l.taken.elapsed() < LISTING_TTL);
            let listing = match cached {
                Some(l) => l,
                None => {
                    let items = v.readdir(dirid)?;
                    let next = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| (item.attr.ino, i + 1))
                        .collect();
                    let l = Arc::new(Listing {
                        items,
                        next,
                        taken: std::time::Instant::now(),
                    });
                    if let Ok(mut cache) = listings.lock() {
                        cache.put(key, l.clone(), l.bytes());
                    }
                    l
                }
            };
            let start = if start_after == 0 {
                0
            } else {
                *listing.next.get(&start_after).ok_or(FsError::NotFound)?
            };
            let entries: Vec<DirEntry> = listing.items[start..]
                .iter()
                .take(max_entries)
                .map(|i| DirEntry {
                    fileid: i.attr.ino,
                    name: i.name.clone().into(),
                    attr: fattr(&i.attr),
                })
                .collect();
            let end = start + entries.len() >= listing.items.len();
            Ok(ReadDirResult { entries, end })
        })
        .await
    }

    async fn symlink(
        &self,
        _dirid: fileid3,
        _linkname: &filename3,
        _symlink: &nfspath3,
        _attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn readlink(&self, id: fileid3) -> Result<nfspath3, nfsstat3> {
        self.call(move |v| v.readlink(id).map(nfspath3::from)).await
    }
}
