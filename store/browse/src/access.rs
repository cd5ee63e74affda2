//! Permission checks of the network front ends, as the kernel makes them for a local
//! process (`generic_permission`): the owner's, group's or others' bits of the snapshot's
//! mode, chosen by the caller's uid and groups; root passes every check but executing a
//! file that no one may execute. Squashing root happens before, in [`Caller::squashed`].

use crate::fsview::NodeAttr;
use xstore_format::meta::EntryKind;

/// The uid and gid an anonymous or squashed caller acts as (`nobody`, `nogroup`).
pub const ANONYMOUS_ID: u32 = 65534;

/// Read permission (`r`).
pub const MAY_READ: u32 = 4;
/// Write permission (`w`); a read-only view grants it to no one.
pub const MAY_WRITE: u32 = 2;
/// Execute a file, search a directory (`x`).
pub const MAY_EXEC: u32 = 1;

/// Who makes a call: the uid, primary gid and supplementary gids it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub gids: Vec<u32>,
}

impl Caller {
    /// The anonymous caller.
    pub fn anonymous() -> Caller {
        Caller {
            uid: ANONYMOUS_ID,
            gid: ANONYMOUS_ID,
            gids: Vec::new(),
        }
    }

    /// Root squashing as the kernel server does it: uid 0 and every gid 0 become the
    /// anonymous ids.
    pub fn squashed(mut self) -> Caller {
        let squash = |id: &mut u32| {
            if *id == 0 {
                *id = ANONYMOUS_ID;
            }
        };
        squash(&mut self.uid);
        squash(&mut self.gid);
        self.gids.iter_mut().for_each(squash);
        self
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }

    /// Whether the caller may do all of `want` (`MAY_*` bits) to a node with `attr`.
    pub fn may(&self, attr: &NodeAttr, want: u32) -> bool {
        if want & MAY_WRITE != 0 {
            return false;
        }
        if self.uid == 0 {
            return want & MAY_EXEC == 0
                || attr.kind == EntryKind::Dir
                || attr.attrs.mode & 0o111 != 0;
        }
        let bits = if attr.attrs.uid == self.uid {
            attr.attrs.mode >> 6
        } else if self.in_group(attr.attrs.gid) {
            attr.attrs.mode >> 3
        } else {
            attr.attrs.mode
        } & 7;
        bits & want == want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: EntryKind, mode: u32, uid: u32, gid: u32) -> NodeAttr {
        NodeAttr {
            ino: 9,
            kind,
            attrs: xstore::Attrs {
                mode,
                uid,
                gid,
                nlink: 1,
                ..xstore::Attrs::default()
            },
            immutable: true,
        }
    }

    fn user(uid: u32, gid: u32, gids: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn owner_group_and_others_bits_are_chosen_like_the_kernel() {
        let shadow = attr(EntryKind::File, 0o640, 0, 42);
        assert!(user(0, 0, &[]).may(&shadow, MAY_READ));
        assert!(!user(0, 0, &[]).squashed().may(&shadow, MAY_READ));
        assert!(user(1000, 1000, &[42]).may(&shadow, MAY_READ));
        assert!(user(1000, 42, &[]).may(&shadow, MAY_READ));
        assert!(!user(1000, 1000, &[]).may(&shadow, MAY_READ));
        // The owner's bits decide for the owner even when others may more.
        let odd = attr(EntryKind::File, 0o044, 1000, 1000);
        assert!(!user(1000, 1000, &[]).may(&odd, MAY_READ));
        assert!(user(1001, 1000, &[]).may(&odd, MAY_READ));
        let private = attr(EntryKind::Dir, 0o700, 1000, 1000);
        assert!(user(1000, 1000, &[]).may(&private, MAY_READ | MAY_EXEC));
        assert!(!user(1001, 1000, &[]).may(&private, MAY_EXEC));
        assert!(user(0, 0, &[]).may(&private, MAY_EXEC));
        // Root executes only what someone may execute; nobody writes.
        assert!(!user(0, 0, &[]).may(&attr(EntryKind::File, 0o644, 0, 0), MAY_EXEC));
        assert!(user(0, 0, &[]).may(&attr(EntryKind::File, 0o744, 5, 5), MAY_EXEC));
        assert!(!user(0, 0, &[]).may(&attr(EntryKind::File, 0o777, 0, 0), MAY_WRITE));
    }

    #[test]
    fn squashing_replaces_every_zero_id() {
        let c = user(0, 0, &[0, 4, 0]).squashed();
        assert_eq!(
            c,
            user(ANONYMOUS_ID, ANONYMOUS_ID, &[ANONYMOUS_ID, 4, ANONYMOUS_ID])
        );
        assert_eq!(user(7, 0, &[]).squashed(), user(7, ANONYMOUS_ID, &[]));
    }
}
