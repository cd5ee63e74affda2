//! A real OpenSSH server on 127.0.0.1 for pull tests and benchmarks: throwaway host and
//! client keys, its own config, `authorized_keys` written by the caller (usually the line
//! `xstore agent --print-authorized-keys` prints), and an ssh client config that trusts it.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd; killed on drop.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Holds keys, configs and the log.
    pub dir: PathBuf,
    /// The client's private key (its public half is `client_key.pub`).
    pub client_key: PathBuf,
    /// An `ssh -F` config that trusts this server and uses the client key.
    pub ssh_config: PathBuf,
    child: Child,
}

/// A new ed25519 key pair without passphrase at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "xstore-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (install openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
}

/// A TCP port on 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where sshd lives (Debian: /usr/sbin/sshd).
pub fn sshd_binary() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Sshd {
    /// Starts sshd in `dir` (created). `authorized_keys` gets the client's public key line
    /// and returns the file's content.
    pub fn start(dir: &Path, authorized_keys: impl Fn(&str) -> String) -> Sshd {
        let sshd = sshd_binary().expect("sshd is not installed (apt-get install openssh-server)");
        fs::create_dir_all(dir).unwrap();
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        let client_pub = fs::read_to_string(dir.join("client_key.pub")).unwrap();
        fs::write(
            dir.join("authorized_keys"),
            authorized_keys(client_pub.trim()),
        )
        .unwrap();
        // sshd's privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        let host_pub = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\nPidFile none\nLogLevel VERBOSE\n\
                     AllowTcpForwarding yes\nPermitTTY yes\nMaxStartups 100\nMaxSessions 100\n",
                    host_key.display(),
                    dir.join("authorized_keys").display()
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join("sshd.log")).unwrap();
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            let known = dir.join("known_hosts");
            let mut k = fs::File::create(&known).unwrap();
            writeln!(k, "[127.0.0.1]:{port} {}", host_pub.trim()).unwrap();
            let ssh_config = dir.join("ssh_config");
            fs::write(
                &ssh_config,
                format!(
                    "Host *\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  \
                     IdentityFile {}\n  IdentitiesOnly yes\n  LogLevel ERROR\n  \
                     ConnectTimeout 10\n",
                    known.display(),
                    client_key.display()
                ),
            )
            .unwrap();
            return Sshd {
                port,
                dir: dir.to_path_buf(),
                client_key,
                ssh_config,
                child,
            };
        }
        panic!(
            "sshd did not start; log:\n{}",
            fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
    }

    /// `ssh` to this server as root with the test client key, running `command`.
    pub fn ssh(&self, extra: &[&str], command: &str) -> std::process::Output {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(["-p", &self.port.to_string(), "-o", "BatchMode=yes"])
            .args(extra)
            .arg("root@127.0.0.1")
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
