//! `xstore-agent setup` against a throwaway sshd configuration and authorized_keys: the sshd
//! it configured is started on 127.0.0.1 and pulled from, and `--undo` puts every file back
//! byte for byte (issue: adoption).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ok;
use xstore_tests::sshd::{free_port, keygen, sshd_binary};
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

fn agent_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_xstore")).with_file_name("xstore-agent")
}

struct Client {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sshd_config: PathBuf,
    authorized_keys: PathBuf,
    backup_conf: PathBuf,
    state: PathBuf,
    server_key: PathBuf,
    data: PathBuf,
    /// The port sshd listened on before setup.
    old_port: u16,
    /// The backup port setup adds.
    port: u16,
}

/// Every file setup may touch: (path, bytes and mode, or absent).
type Files = Vec<(PathBuf, Option<(Vec<u8>, u32)>)>;

impl Client {
    fn new(include_dropins: bool) -> Option<Client> {
        sshd_binary()?;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        keygen(&root.join("host_key"));
        keygen(&root.join("server_key"));
        let ssh_dir = root.join("root-ssh");
        fs::create_dir(&ssh_dir).unwrap();
        let authorized_keys = ssh_dir.join("authorized_keys");
        // An operator's own key is there already, with a too-open mode.
        fs::write(
            &authorized_keys,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyOperatorKeyOperatorKeyOpera admin@laptop\n",
        )
        .unwrap();
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o644)).unwrap();
        let old_port = free_port();
        let mut port = free_port();
        while port == old_port {
            port = free_port();
        }
        let include = if include_dropins {
            format!("Include {}/sshd_config.d/*.conf\n", root.display())
        } else {
            String::new()
        };
        let sshd_config = root.join("sshd_config");
        fs::write(
            &sshd_config,
            format!(
                "{include}Port {old_port}\nListenAddress 127.0.0.1\nHostKey {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPidFile none\n\
                 PermitRootLogin no\nPasswordAuthentication no\nLogLevel VERBOSE\n",
                root.join("host_key").display(),
                authorized_keys.display()
            ),
        )
        .unwrap();
        let data = root.join("data");
        make_fixture(&data, 3);
        let _ = fs::create_dir_all("/run/sshd");
        Some(Client {
            sshd_config,
            authorized_keys,
            backup_conf: root.join("backup.conf"),
            state: root.join("state/setup.state"),
            server_key: root.join("server_key.pub"),
            data,
            old_port,
            port,
            root,
            _tmp: tmp,
        })
    }

    fn setup(&self, extra: &[&str]) -> Output {
        Command::new(agent_bin())
            .arg("--config")
            .arg(&self.backup_conf)
            .arg("setup")
            .arg("--authorized-keys")
            .arg(&self.authorized_keys)
            .arg("--sshd-config")
            .arg(&self.sshd_config)
            .arg("--state")
            .arg(&self.state)
            .arg("--no-reload")
            .args(extra)
            .output()
            .unwrap()
    }

    fn setup_ok(&self, extra: &[&str]) -> String {
        let out = self.setup(extra);
        assert!(
            out.status.success(),
            "setup {extra:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn install_args(&self) -> Vec<String> {
        vec![
            "--server-key".into(),
            self.server_key.display().to_string(),
            "--from".into(),
            "127.0.0.1".into(),
            "--port".into(),
            self.port.to_string(),
            "--path".into(),
            self.data.display().to_string(),
        ]
    }

    fn files(&self) -> Files {
        let dropin = self.root.join("sshd_config.d/xstore-agent.conf");
        [
            self.authorized_keys.clone(),
            self.sshd_config.clone(),
            dropin,
            self.backup_conf.clone(),
            self.state.clone(),
        ]
        .into_iter()
        .map(|p| {
            let v = fs::symlink_metadata(&p)
                .ok()
                .map(|m| (fs::read(&p).unwrap(), m.permissions().mode() & 0o7777));
            (p, v)
        })
        .collect()
    }

    fn start_sshd(&self) -> Child {
        let log = fs::File::create(self.root.join("sshd.log")).unwrap();
        let mut child = Command::new(sshd_binary().unwrap())
            .args(["-D", "-e", "-f"])
            .arg(&self.sshd_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "sshd exited: {}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            TcpStream::connect(("127.0.0.1", self.old_port)).is_ok(),
            "the existing port stopped listening"
        );
        child
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.join("sshd.log")).unwrap_or_default()
    }

    /// An ssh config that trusts this sshd and uses the server's key.
    fn ssh_config(&self) -> PathBuf {
        let known = self.root.join("known_hosts");
        let host_pub = fs::read_to_string(self.root.join("host_key.pub")).unwrap();
        fs::write(
            &known,
            format!(
                "[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n",
                self.port,
                host_pub.trim(),
                self.old_port,
                host_pub.trim()
            ),
        )
        .unwrap();
        let config = self.root.join("ssh_config");
        fs::write(
            &config,
            format!(
                "Host *\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  IdentityFile {}\n  \
                 IdentitiesOnly yes\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n",
                known.display(),
                self.root.join("server_key").display()
            ),
        )
        .unwrap();
        config
    }
}

#[test]
fn setup_configures_sshd_for_a_pull_and_undo_restores_every_byte() {
    let Some(c) = Client::new(true) else {
        eprintln!("skipping: no sshd");
        return;
    };
    let args = c.install_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let original = c.files();

    // --dry-run shows each change as a diff and changes nothing.
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = c.setup_ok(&dry);
    assert!(out.contains("+command=\""), "{out}");
    assert!(out.contains(&format!("+Port {}", c.port)), "{out}");
    assert!(out.contains("chmod 0600"), "{out}");
    assert!(out.contains("3 file(s) would change"), "{out}");
    assert_eq!(c.files(), original, "a dry run changed files");

    let out = c.setup_ok(&args);
    assert!(
        out.contains(&format!("tcp dport {} accept", c.port)),
        "the firewall hint: {out}"
    );
    let keys = fs::read_to_string(&c.authorized_keys).unwrap();
    assert!(
        keys.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKey"),
        "{keys}"
    );
    assert_eq!(keys.lines().count(), 2);
    assert!(keys.contains("from=\"127.0.0.1\""));
    let mode = fs::metadata(&c.authorized_keys)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let conf = fs::read_to_string(&c.backup_conf).unwrap();
    assert!(conf.lines().any(|l| l == c.data.display().to_string()));

    // Idempotent: a second run changes nothing, adds no duplicate line.
    let after_first = c.files();
    let out = c.setup_ok(&args);
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(c.files(), after_first);

    // The configured sshd: the old port still listens, the backup port takes the key.
    let mut sshd = c.start_sshd();
    let ssh_config = c.ssh_config();
    let repo = c.root.join("repo");
    ok(&repo, &["init"]);
    let inventory = c.root.join("hosts.toml");
    fs::write(
        &inventory,
        format!(
            "[defaults]\nport = {}\nssh_config = \"{}\"\ntimeout = \"120s\"\n\n\
             [[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\n\n\
             [[account.host]]\nname = \"client1\"\naddress = \"127.0.0.1\"\n",
            c.port,
            ssh_config.display()
        ),
    )
    .unwrap();
    let pulled = ok(
        &repo,
        &[
            "pull",
            "client1",
            "--inventory",
            inventory.to_str().unwrap(),
        ],
    );
    assert!(pulled.contains("client1"), "{pulled}\n{}", c.log());
    let target = c.root.join("restored");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "client1@latest",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&c.data, &restored_path(&target, &c.data), true);
    // The key runs only the agent, and root logs in on the backup port only.
    let shell = Command::new("ssh")
        .arg("-F")
        .arg(&ssh_config)
        .args(["-p", &c.old_port.to_string(), "root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!shell.status.success(), "root logged in on the old port");
    let _ = sshd.kill();
    let _ = sshd.wait();

    // Undo: every file back byte for byte (authorized_keys' mode too), the drop-in, the
    // allow-list and the state gone, the drop-in directory it created removed.
    let out = c.setup_ok(&["--undo"]);
    assert!(out.contains("changed"), "{out}");
    assert_eq!(c.files(), original);
    assert!(!c.root.join("sshd_config.d").exists());
    // Nothing left to undo: one line, exit 1.
    let again = c.setup(&["--undo"]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("no setup to undo"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn setup_rolls_back_when_sshd_would_not_read_the_dropin() {
    let Some(c) = Client::new(false) else {
        eprintln!("skipping: no sshd");
        return;
    };
    let args = c.install_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let original = c.files();
    let out = c.setup(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sshd does not read the drop-in (rolled back)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(c.files(), original, "a failed setup left changes");
    assert!(!c.root.join("sshd_config.d").exists());

    // A server key that is not a key is refused before anything is read or written.
    fs::write(&c.server_key, "not a key\n").unwrap();
    let out = c.setup(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server key"));
    let mut now = c.files();
    now.retain(|(p, _)| p != &c.server_key);
    assert_eq!(now, original);
}

#[test]
fn undo_after_an_edit_removes_only_what_setup_added() {
    let Some(c) = Client::new(true) else {
        eprintln!("skipping: no sshd");
        return;
    };
    let args = c.install_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let original_keys = fs::read_to_string(&c.authorized_keys).unwrap();
    c.setup_ok(&args);
    // The operator adds a key and edits the allow-list after setup.
    let mut keys = fs::read_to_string(&c.authorized_keys).unwrap();
    keys.push_str("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILaterKeyLaterKeyLaterKeyLaterKeyLaterKe later@laptop\n");
    fs::write(&c.authorized_keys, &keys).unwrap();
    let mut conf = fs::read_to_string(&c.backup_conf).unwrap();
    conf.push_str("/srv/www\n");
    fs::write(&c.backup_conf, &conf).unwrap();

    let out = c.setup_ok(&["--undo"]);
    assert!(out.contains("removed only the lines setup added"), "{out}");
    assert!(out.contains("left as it is"), "{out}");
    // Setup's line is gone; the operator's lines, old and new, stay.
    let after = fs::read_to_string(&c.authorized_keys).unwrap();
    assert_eq!(
        after,
        format!("{original_keys}ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILaterKeyLaterKeyLaterKeyLaterKeyLaterKe later@laptop\n")
    );
    // The edited allow-list is kept as the operator left it; the untouched drop-in is gone.
    assert_eq!(fs::read_to_string(&c.backup_conf).unwrap(), conf);
    assert!(!c.root.join("sshd_config.d/xstore-agent.conf").exists());
    assert!(!c.state.exists());
}

/// A host rsnapshot pulled before: sshd_config already has `Port <backup port>` and a
/// `Match LocalPort` block for it. Setup adds no second `Port` line (sshd would bind the
/// port twice and log "Address already in use" at every start), only its Match block, and the
/// server pulls through it. A failed `systemctl reload` after every change is in place is a
/// warning naming --no-reload, exit 0.
#[test]
fn setup_on_an_rsnapshot_era_sshd_config_adds_no_second_port() {
    let Some(c) = Client::new(true) else {
        eprintln!("skipping: no sshd");
        return;
    };
    let mut config = fs::read_to_string(&c.sshd_config).unwrap();
    config.push_str(&format!(
        "Port {}\nMatch LocalPort {}\n\tPermitRootLogin forced-commands-only\n",
        c.port, c.port
    ));
    fs::write(&c.sshd_config, config).unwrap();
    let args = c.install_args();
    // No systemctl that works: the reload step fails after everything is written.
    let bin = c.root.join("bin");
    fs::create_dir(&bin).unwrap();
    fs::write(bin.join("systemctl"), "#!/bin/sh\nexit 1\n").unwrap();
    fs::set_permissions(bin.join("systemctl"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(agent_bin())
        .arg("--config")
        .arg(&c.backup_conf)
        .arg("setup")
        .arg("--authorized-keys")
        .arg(&c.authorized_keys)
        .arg("--sshd-config")
        .arg(&c.sshd_config)
        .arg("--state")
        .arg(&c.state)
        .args(&args)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("--no-reload"),
        "{stderr}"
    );
    assert!(stdout.contains("already listens on port"), "{stdout}");
    let dropin = fs::read_to_string(c.root.join("sshd_config.d/xstore-agent.conf")).unwrap();
    assert!(!dropin.lines().any(|l| l.starts_with("Port ")), "{dropin}");
    assert!(
        dropin.contains(&format!("Match LocalPort {}", c.port)),
        "{dropin}"
    );

    let mut sshd = c.start_sshd();
    std::thread::sleep(Duration::from_millis(200));
    let log = c.log();
    let _ = sshd.kill();
    let _ = sshd.wait();
    assert!(!log.contains("Address already in use"), "{log}");
}
