//! The gate between a client and an export's NFS server: every RPC call passes here, and
//! here the kernel server's protections are applied, because `nfsserve` hands its file
//! system no caller (ARCHITECTURE.md, the NFS export).
//!
//! - Requests from unprivileged source ports are refused (`AUTH_TOOWEAK`) unless the
//!   account is `insecure`; so are calls without AUTH_SYS credentials (only the NULL
//!   procedure answers everyone).
//! - Root is squashed to the anonymous ids unless the account has `no_root_squash`.
//! - MOUNT needs search permission on every directory of the path; LOOKUP search permission
//!   on the directory; READ read permission on the file; READDIR(PLUS) read permission on
//!   the directory; ACCESS is answered here from the same rules. Refusals are
//!   `NFS3ERR_ACCES` / `MNT3ERR_ACCES`.
//!
//! The server behind the gate listens on 127.0.0.1, where any local user can connect. It
//! serves nothing to them: file handles carry a keyed BLAKE3 MAC ([`HandleKey`]) and MOUNT
//! answers only paths under a random prefix that the gate adds, and neither key nor prefix
//! leaves this process.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use nfsserve::nfs::{fattr3, nfsstat3, post_op_attr};
use nfsserve::xdr::XDR;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::access::{Caller, MAY_EXEC, MAY_READ};
use crate::fsview::{FsError, FsView, NodeAttr};
use xstore_format::meta::EntryKind;

const PROG_NFS: u32 = 100_003;
const PROG_MOUNT: u32 = 100_005;
const AUTH_NULL: u32 = 0;
const AUTH_UNIX: u32 = 1;
/// auth_stat values (RFC 5531).
const AUTH_BADCRED: u32 = 1;
const AUTH_TOOWEAK: u32 = 5;
const NFS3ERR_ACCES: u32 = 13;
const MNT3ERR_ACCES: u32 = 13;
/// ACCESS3 bits (RFC 1813).
const ACCESS3_READ: u32 = 0x1;
const ACCESS3_LOOKUP: u32 = 0x2;
const ACCESS3_EXECUTE: u32 = 0x20;

/// The largest call a client may send. Calls of a read-only server are small; a WRITE
/// (refused anyway) carries at most a client's wsize, 1 MiB.
const MAX_CALL_BYTES: usize = (1 << 20) + 4096;
/// Replies queued for one client before the gate stops reading from the server (each up to
/// a READ's 1 MiB): what a client that sends calls but reads no replies can hold.
const QUEUED_REPLIES: usize = 4;

/// The key that authenticates file handles: a handle is the generation, the file id and a
/// keyed BLAKE3 hash of both. Random per route, kept across reloads.
pub(super) struct HandleKey {
    key: [u8; 32],
    generation: u64,
    /// MOUNT paths the server answers start with this (`/` and 32 hex digits).
    pub(super) mount_prefix: Vec<u8>,
}

impl HandleKey {
    pub(super) fn random() -> std::io::Result<HandleKey> {
        let mut bytes = [0u8; 56];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..32]);
        let generation = u64::from_le_bytes(bytes[32..40].try_into().unwrap_or_default());
        let prefix: String = bytes[40..56].iter().map(|b| format!("{b:02x}")).collect();
        Ok(HandleKey {
            key,
            generation,
            mount_prefix: format!("/{prefix}").into_bytes(),
        })
    }

    /// A number that tells this route's handles from another's (its generation, random).
    pub(super) fn route_id(&self) -> u64 {
        self.generation
    }

    fn mac(&self, id: u64) -> blake3::Hash {
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(&self.generation.to_le_bytes());
        msg[8..].copy_from_slice(&id.to_le_bytes());
        blake3::keyed_hash(&self.key, &msg)
    }

    pub(super) fn encode(&self, id: u64) -> Vec<u8> {
        let mut fh = Vec::with_capacity(48);
        fh.extend_from_slice(&self.generation.to_le_bytes());
        fh.extend_from_slice(&id.to_le_bytes());
        fh.extend_from_slice(self.mac(id).as_bytes());
        fh
    }

    /// The file id of a handle this key made; any other handle is stale (an old server's)
    /// or bad.
    pub(super) fn decode(&self, fh: &[u8]) -> Result<u64, nfsstat3> {
        if fh.len() != 48 {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let word = |i: usize| u64::from_le_bytes(fh[i..i + 8].try_into().unwrap_or_default());
        let (generation, id) = (word(0), word(8));
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&fh[16..48]);
        // blake3::Hash compares in constant time.
        if generation != self.generation || self.mac(id) != blake3::Hash::from(mac) {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok(id)
    }
}

/// What one client connection is served from.
pub(super) struct Route {
    pub(super) view: Arc<FsView>,
    pub(super) key: Arc<HandleKey>,
    /// The export's NFS server (127.0.0.1).
    pub(super) server: SocketAddr,
    /// Its accept loop, stopped when the route is no longer used.
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one RPC record (RFC 5531 record marking), `None` at a clean end of stream.
async fn read_record(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        match r.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let mark = u32::from_be_bytes(mark);
        let len = (mark & 0x7fff_ffff) as usize;
        if record.len() + len > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an RPC record over {max} bytes"),
            ));
        }
        let at = record.len();
        record.resize(at + len, 0);
        r.read_exact(&mut record[at..]).await?;
        if mark & 0x8000_0000 != 0 {
            return Ok(Some(record));
        }
    }
}

async fn write_record(w: &mut (impl AsyncWrite + Unpin), record: &[u8]) -> std::io::Result<()> {
    let mark = u32::try_from(record.len())
        .ok()
        .filter(|l| *l < 0x8000_0000)
        .ok_or_else(|| std::io::Error::other("reply too large"))?;
    w.write_all(&(mark | 0x8000_0000).to_be_bytes()).await?;
    w.write_all(record).await
}

/// An XDR reader over a call.
struct Xdr<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Xdr<'a> {
    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    /// Variable-length opaque data of at most `max` bytes (padded to 4).
    fn opaque(&mut self, max: usize) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return None;
        }
        let data = self.buf.get(self.at..self.at + len)?;
        self.at += len.div_ceil(4) * 4;
        (self.at <= self.buf.len()).then_some(data)
    }
}

/// The fixed part of a call.
struct Call<'a> {
    xid: u32,
    prog: u32,
    proc_: u32,
    flavor: u32,
    cred: &'a [u8],
    /// Where the procedure's arguments start.
    args: usize,
}

fn parse_call(record: &[u8]) -> Option<Call<'_>> {
    let mut x = Xdr { buf: record, at: 0 };
    let xid = x.u32()?;
    let msg_type = x.u32()?;
    let rpcvers = x.u32()?;
    if msg_type != 0 || rpcvers != 2 {
        return None;
    }
    let prog = x.u32()?;
    let _vers = x.u32()?;
    let proc_ = x.u32()?;
    let flavor = x.u32()?;
    let cred = x.opaque(400)?;
    let _verf_flavor = x.u32()?;
    x.opaque(400)?;
    Some(Call {
        xid,
        prog,
        proc_,
        flavor,
        cred,
        args: x.at,
    })
}

/// The uid and groups of an AUTH_SYS credential.
fn parse_unix(cred: &[u8]) -> Option<Caller> {
    let mut x = Xdr { buf: cred, at: 0 };
    let _stamp = x.u32()?;
    x.opaque(255)?;
    let uid = x.u32()?;
    let gid = x.u32()?;
    let count = x.u32()?;
    if count > 16 {
        return None;
    }
    let gids = (0..count).map(|_| x.u32()).collect::<Option<Vec<u32>>>()?;
    Some(Caller { uid, gid, gids })
}

fn reply_head(xid: u32) -> Vec<u8> {
    // xid, REPLY, MSG_ACCEPTED, verifier AUTH_NULL (empty), SUCCESS.
    [xid, 1, 0, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

fn auth_error(xid: u32, why: u32) -> Vec<u8> {
    // xid, REPLY, MSG_DENIED, AUTH_ERROR, auth_stat.
    [xid, 1, 1, 1, why]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// NFS3ERR_ACCES with no attributes: the failure body of LOOKUP, READ, READDIR and
/// READDIRPLUS alike.
fn nfs_denied(xid: u32) -> Vec<u8> {
    let mut r = reply_head(xid);
    r.extend_from_slice(&NFS3ERR_ACCES.to_be_bytes());
    r.extend_from_slice(&0u32.to_be_bytes());
    r
}

fn mount_denied(xid: u32) -> Vec<u8> {
    let mut r = reply_head(xid);
    r.extend_from_slice(&MNT3ERR_ACCES.to_be_bytes());
    r
}

/// The ACCESS reply: the asked bits the caller has (never any that modify).
fn access_reply(xid: u32, attr: &fattr3, granted: u32) -> std::io::Result<Vec<u8>> {
    let mut r = reply_head(xid);
    let mut body = std::io::Cursor::new(Vec::new());
    nfsstat3::NFS3_OK.serialize(&mut body)?;
    post_op_attr::attributes(*attr).serialize(&mut body)?;
    granted.serialize(&mut body)?;
    r.extend_from_slice(&body.into_inner());
    Ok(r)
}

fn access_bits(caller: &Caller, attr: &NodeAttr) -> u32 {
    let mut bits = 0;
    if caller.may(attr, MAY_READ) {
        bits |= ACCESS3_READ;
    }
    if caller.may(attr, MAY_EXEC) {
        bits |= if attr.kind == EntryKind::Dir {
            ACCESS3_LOOKUP
        } else {
            ACCESS3_EXECUTE
        };
    }
    bits
}

/// What the gate does with one call.
enum Action {
    /// Pass it to the server (possibly rewritten).
    Forward(Vec<u8>),
    /// Answer it here.
    Reply(Vec<u8>),
}

/// One client connection through the gate.
pub(super) struct Connection {
    pub(super) peer: SocketAddr,
    pub(super) export: String,
    /// The export's current routes: read at every call, so that a reload that moves or
    /// removes this client's view, or changes the policy, applies at once.
    pub(super) routes: Arc<RwLock<super::Routes>>,
    /// The route the connection was accepted on.
    pub(super) route: Arc<Route>,
}

impl Connection {
    /// The node a handle names, if it is a valid handle of this route and the node exists
    /// (otherwise the server answers the call with the right error).
    /// Called on the async thread: `getattr` reads only what the view holds in memory (its
    /// nodes and catalog), never the repository.
    fn attr(&self, fh: &[u8]) -> Option<NodeAttr> {
        let id = self.route.key.decode(fh).ok()?;
        self.route.view.getattr(id).ok()
    }

    async fn decide(&self, record: Vec<u8>) -> Option<Action> {
        let Some(call) = parse_call(&record) else {
            tracing::warn!(export = %self.export, peer = %self.peer, "not an RPC call; closing");
            return None;
        };
        let xid = call.xid;
        let policy = {
            let routes = self.routes.read().ok()?;
            match routes.by_address.get(&super::canonical(self.peer.ip())) {
                Some(r) if Arc::ptr_eq(r, &self.route) => routes.policy,
                _ => {
                    tracing::info!(export = %self.export, peer = %self.peer,
                        "the client's view changed in a reload; closing");
                    return None;
                }
            }
        };
        // NULL answers everyone (clients probe with it); other programs are the server's
        // to refuse.
        if call.proc_ == 0 || (call.prog != PROG_NFS && call.prog != PROG_MOUNT) {
            return Some(Action::Forward(record));
        }
        if !policy.insecure && self.peer.port() >= 1024 {
            return Some(Action::Reply(auth_error(xid, AUTH_TOOWEAK)));
        }
        let caller = match call.flavor {
            AUTH_UNIX => match parse_unix(call.cred) {
                Some(c) => c,
                None => return Some(Action::Reply(auth_error(xid, AUTH_BADCRED))),
            },
            AUTH_NULL => return Some(Action::Reply(auth_error(xid, AUTH_TOOWEAK))),
            _ => return Some(Action::Reply(auth_error(xid, AUTH_BADCRED))),
        };
        let caller = if policy.no_root_squash {
            caller
        } else {
            caller.squashed()
        };
        let mut args = Xdr {
            buf: &record,
            at: call.args,
        };
        let action = match (call.prog, call.proc_) {
            // MNT: search permission on the way, then the path under the server's prefix.
            (PROG_MOUNT, 1) => {
                let Some(path) = args.opaque(1024).map(<[u8]>::to_vec) else {
                    return Some(Action::Forward(record));
                };
                let view = self.route.view.clone();
                let who = caller.clone();
                let walked = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || {
                        let may_search = |a: &NodeAttr| who.may(a, MAY_EXEC);
                        view.resolve_mount_path(&path, Some(&may_search))
                    })
                    .await
                };
                if matches!(walked, Ok(Err(FsError::PermissionDenied))) {
                    tracing::info!(export = %self.export, peer = %self.peer, uid = caller.uid,
                        path = %String::from_utf8_lossy(&path), "mount refused: permission");
                    return Some(Action::Reply(mount_denied(xid)));
                }
                let mut rewritten = record[..call.args].to_vec();
                let mut full = self.route.key.mount_prefix.clone();
                if !path.starts_with(b"/") {
                    full.push(b'/');
                }
                full.extend_from_slice(&path);
                let mut arg = Vec::new();
                if full.serialize(&mut arg).is_err() {
                    return None;
                }
                rewritten.extend_from_slice(&arg);
                Action::Forward(rewritten)
            }
            // LOOKUP, ACCESS, READ, READDIR, READDIRPLUS: the node's mode decides.
            (PROG_NFS, 3 | 4 | 6 | 16 | 17) => {
                let Some(fh) = args.opaque(64) else {
                    return Some(Action::Forward(record));
                };
                let Some(attr) = self.attr(fh) else {
                    return Some(Action::Forward(record));
                };
                match call.proc_ {
                    4 => {
                        let asked = args.u32().unwrap_or(0);
                        let granted = asked & access_bits(&caller, &attr);
                        return access_reply(xid, &super::fattr(&attr), granted)
                            .ok()
                            .map(Action::Reply);
                    }
                    3 if !caller.may(&attr, MAY_EXEC) => Action::Reply(nfs_denied(xid)),
                    6 | 16 | 17 if !caller.may(&attr, MAY_READ) => Action::Reply(nfs_denied(xid)),
                    _ => Action::Forward(record),
                }
            }
            _ => Action::Forward(record),
        };
        Some(action)
    }

    /// Serves the connection until either side closes it or `stop` turns true.
    pub(super) async fn serve(self, client: TcpStream, mut stop: watch::Receiver<bool>) {
        let server = match TcpStream::connect(self.route.server).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(export = %self.export, "nfs server: {e}");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let insecure = self
            .routes
            .read()
            .map(|r| r.policy.insecure)
            .unwrap_or(false);
        if !insecure && self.peer.port() >= 1024 {
            tracing::warn!(export = %self.export, peer = %self.peer,
                "refusing calls from an unprivileged port (the account is not insecure)");
        }
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let (replies, mut queued) = mpsc::channel::<Vec<u8>>(QUEUED_REPLIES);
        let writer = async move {
            while let Some(r) = queued.recv().await {
                if write_record(&mut client_write, &r).await.is_err() {
                    break;
                }
            }
        };
        let from_server = {
            let replies = replies.clone();
            async move {
                // The server is ours: its replies pass as they are.
                while let Ok(Some(r)) = read_record(&mut server_read, usize::MAX >> 1).await {
                    if replies.send(r).await.is_err() {
                        break;
                    }
                }
            }
        };
        let from_client = async move {
            loop {
                let record = match read_record(&mut client_read, MAX_CALL_BYTES).await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        tracing::warn!(export = %self.export, peer = %self.peer, "{e}; closing");
                        break;
                    }
                    // Clients reset connections when they are done.
                    Err(_) => break,
                };
                match self.decide(record).await {
                    Some(Action::Forward(call)) => {
                        if write_record(&mut server_write, &call).await.is_err() {
                            break;
                        }
                    }
                    Some(Action::Reply(reply)) => {
                        if replies.send(reply).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = from_server => {}
            _ = from_client => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn handles_of_another_key_or_edited_handles_are_refused() {
        let key = HandleKey::random().unwrap();
        let other = HandleKey::random().unwrap();
        let fh = key.encode(77);
        assert_eq!(key.decode(&fh).ok(), Some(77));
        assert!(other.decode(&fh).is_err());
        let mut edited = fh.clone();
        edited[8] ^= 1;
        assert!(key.decode(&edited).is_err());
        assert!(key.decode(&fh[..16]).is_err());
        assert_ne!(key.mount_prefix, other.mount_prefix);
    }

    #[test]
    fn calls_and_credentials_parse_and_truncations_do_not() {
        let mut call: Vec<u8> = [7u32, 0, 2, PROG_NFS, 3, 6, AUTH_UNIX]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        let cred: Vec<u8> = [
            1u32,
            1,
            u32::from_be_bytes(*b"h\0\0\0"),
            1000,
            100,
            2,
            4,
            27,
        ]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
        call.extend_from_slice(&(cred.len() as u32).to_be_bytes());
        call.extend_from_slice(&cred);
        call.extend_from_slice(&[0; 8]);
        let c = parse_call(&call).unwrap();
        assert_eq!(
            (c.xid, c.prog, c.proc_, c.args),
            (7, PROG_NFS, 6, call.len())
        );
        assert_eq!(
            parse_unix(c.cred),
            Some(Caller {
                uid: 1000,
                gid: 100,
                gids: vec![4, 27]
            })
        );
        for cut in 0..call.len() {
            assert!(parse_call(&call[..cut]).is_none(), "{cut}");
        }
        for cut in 0..cred.len() {
            assert!(parse_unix(&cred[..cut]).is_none(), "{cut}");
        }
    }
}
