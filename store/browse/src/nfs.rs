//! The NFSv3 front end of [`crate::fsview::FsView`] (the `nfsserve` crate, userspace, no
//! kernel server): read-only, one export per listener.
//!
//! Access control is by client address, as the service has it today: each export has its
//! own public listener, and a connection from an address outside the export's list is
//! closed at accept. Allowed connections are relayed to the export's NFS server, which
//! listens on 127.0.0.1 only (nfsserve offers no per-connection hook). Limits: addresses
//! can be spoofed on a shared network segment; anyone who can run a process on the backup
//! server can reach the loopback listeners directly; NFSv3 AUTH_UNIX trusts the client's
//! uids (permission bits are the client's to enforce). Export only on networks you trust.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use nfsserve::nfs::{
    fattr3, fileid3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, sattr3, specdata3,
};
use nfsserve::tcp::{NFSTcp, NFSTcpListener};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};

use crate::fsview::{FsError, FsView, NodeAttr, ViewOptions, ROOT_INO};
use xstore::Error;
use xstore_format::tree::EntryKind;

/// One export: which hosts it shows and who may mount it.
#[derive(Debug, Clone)]
pub struct NfsExport {
    /// A name for logs (the account).
    pub name: String,
    /// Where its public listener binds.
    pub listen: SocketAddr,
    /// Hosts whose snapshots it shows (`None`: all).
    pub hosts: Option<Vec<String>>,
    /// Client addresses allowed to connect.
    pub allowed: Vec<IpAddr>,
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
}

/// The exports of `inventory`'s accounts (or only `account`): one per account, listening on
/// `listen` with the port counted up per account (port 0: any free port each), showing that
/// account's hosts and open only to the addresses its hosts' names resolve to, plus
/// `extra_allowed`. A host name that does not resolve is logged and contributes no address.
pub fn exports_for(
    inventory: &xstore::Inventory,
    account: Option<&str>,
    listen: SocketAddr,
    extra_allowed: &[IpAddr],
) -> Result<Vec<NfsExport>, ExportError> {
    let accounts: Vec<&xstore::Account> = match account {
        Some(a) => vec![inventory
            .account(a)
            .ok_or_else(|| ExportError::UnknownAccount(a.to_string()))?],
        None => inventory.accounts.iter().collect(),
    };
    let mut exports = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let mut at = listen;
        if listen.port() != 0 {
            let port = u16::try_from(usize::from(listen.port()) + i).map_err(|_| {
                ExportError::PortsExhausted {
                    base: listen.port(),
                    accounts: accounts.len(),
                }
            })?;
            at.set_port(port);
        }
        let mut allowed: Vec<IpAddr> = account
            .hosts
            .iter()
            .filter_map(|h| inventory.host(h))
            .flat_map(|h| addresses_of(&h.address))
            .collect();
        allowed.extend(extra_allowed.iter().copied());
        exports.push(NfsExport {
            name: account.name.clone(),
            listen: at,
            hosts: Some(account.hosts.clone()),
            allowed,
        });
    }
    Ok(exports)
}

fn addresses_of(address: &str) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    match (address, 0).to_socket_addrs() {
        Ok(it) => it.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!("{address}: {e}; its account cannot mount from it");
            Vec::new()
        }
    }
}

/// Running exports; dropping it stops them.
pub struct NfsServer {
    runtime: tokio::runtime::Runtime,
    bound: Vec<(String, SocketAddr)>,
}

impl NfsServer {
    /// Starts every export of `repo`.
    pub fn start(repo: &Path, exports: &[NfsExport]) -> xstore::Result<NfsServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|e| io_error(repo, e))?;
        let mut bound = Vec::new();
        for export in exports {
            let view = FsView::open(
                repo,
                ViewOptions {
                    hosts: export.hosts.clone(),
                    ..ViewOptions::default()
                },
            )?;
            let addr = runtime.block_on(start_export(view, export))?;
            bound.push((export.name.clone(), addr));
        }
        Ok(NfsServer { runtime, bound })
    }

    /// Each export's name and the address its public listener bound (port 0 resolved).
    pub fn addresses(&self) -> &[(String, SocketAddr)] {
        &self.bound
    }

    /// Stops serving.
    pub fn shutdown(self) {
        self.runtime.shutdown_background();
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

async fn start_export(view: FsView, export: &NfsExport) -> xstore::Result<SocketAddr> {
    let at = |e: std::io::Error| io_error(Path::new(&export.listen.to_string()), e);
    let inner = NFSTcpListener::bind(
        "127.0.0.1:0",
        Export {
            view: Arc::new(view),
            listings: Arc::new(std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::MIN.saturating_add(63),
            ))),
        },
    )
    .await
    .map_err(at)?;
    let inner_addr = SocketAddr::new(inner.get_listen_ip(), inner.get_listen_port());
    tokio::spawn(async move {
        if let Err(e) = inner.handle_forever().await {
            tracing::error!("nfs server stopped: {e}");
        }
    });
    let public = tokio::net::TcpListener::bind(export.listen)
        .await
        .map_err(at)?;
    let addr = public.local_addr().map_err(at)?;
    let allowed = export.allowed.clone();
    let name = export.name.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, peer) = match public.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(export = %name, "accept: {e}");
                    continue;
                }
            };
            if !allowed.contains(&canonical(peer.ip())) {
                tracing::warn!(export = %name, %peer, "refused: address not allowed");
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect(inner_addr).await {
                    Ok(mut server) => {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    Err(e) => tracing::error!("nfs relay: {e}"),
                }
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

struct Export {
    view: Arc<FsView>,
    /// Recent listings: NFS pages a directory over many READDIR calls, each naming the last
    /// file id it saw; listing once and indexing by id keeps a large directory linear.
    listings: Arc<std::sync::Mutex<lru::LruCache<fileid3, Arc<Listing>>>>,
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
        mode: a.mode & 0o7777,
        nlink: u32::try_from(a.nlink).unwrap_or(u32::MAX),
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.size,
        rdev: specdata3 {
            specdata1: libc::major(a.rdev),
            specdata2: libc::minor(a.rdev),
        },
        fsid: 0x7873_746f_7265,
        fileid: a.ino,
        atime: nfs_time(a.mtime_ns),
        mtime: nfs_time(a.mtime_ns),
        ctime: nfs_time(a.ctime_ns),
    }
}

impl Export {
    /// Runs a view call on the blocking pool (it reads the repository).
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FsView) -> Result<T, FsError> + Send + 'static,
    ) -> Result<T, nfsstat3> {
        let view = self.view.clone();
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

    async fn path_to_id(&self, path: &[u8]) -> Result<fileid3, nfsstat3> {
        let path = path.to_vec();
        self.call(move |v| v.resolve_mount_path(&path).map(|a| a.ino))
            .await
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
            let size = v.getattr(id)?.size;
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
        let listings = self.listings.clone();
        self.call(move |v| {
            let cached = listings
                .lock()
                .ok()
                .and_then(|mut l| l.get(&dirid).cloned())
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
                        cache.put(dirid, l.clone());
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
