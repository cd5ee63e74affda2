//! The web front's WebDAV through a real client: Debian's davfs2 mounts `/dav/` of
//! `xstore serve-web` over HTTPS with a customer's login. The tree equals what `restore`
//! writes, another account's host is nowhere in it, and nothing can be written.
#![allow(clippy::unwrap_used)]

mod common;
mod webfront;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use webfront::{fleet, serve_https, tree, PASSWORD};

/// A davfs2 mount, unmounted when dropped.
struct Mount {
    at: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

fn mount(dir: &Path, url: &str, cert: &Path, user: &str) -> Mount {
    let at = dir.join("mnt");
    let conf = dir.join("davfs2.conf");
    let secrets = dir.join("davfs2.secrets");
    fs::create_dir_all(&at).unwrap();
    fs::write(
        &secrets,
        format!("{} {user} \"{PASSWORD}\"\n", at.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    // buf_size 64: davfs2 1.7 reads no directory on Linux 6.16 and later without it.
    fs::write(
        &conf,
        format!(
            "trust_server_cert {}\nsecrets {}\nuse_locks 0\nbuf_size 64\n",
            cert.display(),
            secrets.display()
        ),
    )
    .unwrap();
    let status = Command::new("mount.davfs")
        .arg("-o")
        .arg(format!("ro,conf={}", conf.display()))
        .arg(url)
        .arg(&at)
        .status()
        .expect("mount.davfs (Debian's davfs2) is installed by scripts/setup.sh");
    assert!(status.success(), "mount.davfs failed");
    Mount { at }
}

#[test]
fn davfs2_mounts_the_customers_tree_read_only() {
    let f = fleet(2 << 20);
    let server = serve_https(&f, &[]);
    let url = format!("{}dav/", server.at);
    let m = mount(&f.dir, &url, &f.path("cert.pem"), "alice");

    // hosts/ holds alice's hosts with snapshots: web1, not db1.
    let hosts: Vec<String> = fs::read_dir(m.at.join("hosts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    assert_eq!(hosts, vec!["web1".to_string()]);
    assert!(!m.at.join("daily.0/db1").exists());
    // daily.1's var/www equals what restore writes.
    let www = f.web1.join("var/www");
    let inside =
        m.at.join("daily.1/web1")
            .join(www.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read_to_string(inside.join("index.html")).unwrap(),
        f.index_versions[0]
    );
    let mounted: Vec<(String, String)> = tree(&inside)
        .into_iter()
        .map(|(path, hash, _)| (path, hash))
        .collect();
    let want: Vec<(String, String)> = webfront::restored_www(&f)
        .into_iter()
        .map(|(path, hash, _)| (path, hash))
        .collect();
    assert_eq!(mounted, want);
    // Nothing can be written.
    assert!(fs::write(inside.join("index.html"), b"x").is_err());
    assert!(fs::write(inside.join("new"), b"x").is_err());
    assert!(fs::remove_file(inside.join("index.html")).is_err());
    assert_eq!(
        fs::read_to_string(inside.join("index.html")).unwrap(),
        f.index_versions[0]
    );
}
