//! `xstore web-user …`: who may log in to the web front (README, "Web").

use std::path::{Path, PathBuf};

use anyhow::Result;
use xstore::keys::read_passphrase_file;
use xstore_fleet::inventory::Inventory;
use xstore_web::{NewUser, Role, WebUsers, DEFAULT_USERS_FILE};

use crate::pull::DEFAULT_INVENTORY;
use crate::{print_json, time_of, Cli, EXIT_OK};

#[derive(clap::Subcommand)]
pub(crate) enum WebUserWhat {
    /// Add a user: a customer of one account (--account, which must be in the inventory)
    /// or an operator (--operator), with the password from a file's first line.
    Add(AddArgs),
    /// Remove a user; their sessions end.
    Remove {
        /// The user's login name.
        name: String,
        #[command(flatten)]
        file: UsersFile,
    },
    /// Set a user's password from a file's first line; their older sessions end.
    Passwd {
        /// The user's login name.
        name: String,
        /// The new password: the first line of this file.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        #[command(flatten)]
        file: UsersFile,
    },
    /// List the users: name, role, account, when added, when the password was set.
    List {
        #[command(flatten)]
        file: UsersFile,
    },
}

#[derive(clap::Args)]
pub(crate) struct UsersFile {
    /// The users file (root-only, 0600).
    #[arg(long, value_name = "FILE", env = "XSTORE_WEB_USERS", default_value = DEFAULT_USERS_FILE)]
    users: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct AddArgs {
    /// The login name: lowercase letters, digits and . _ - @.
    name: String,
    /// The account whose hosts the customer sees.
    #[arg(
        long,
        conflicts_with = "operator",
        required_unless_present = "operator"
    )]
    account: Option<String>,
    /// An operator, who sees every account and the fleet's state.
    #[arg(long)]
    operator: bool,
    /// The password: the first line of this file.
    #[arg(long, value_name = "FILE")]
    password_file: PathBuf,
    /// The inventory that names the accounts.
    #[arg(long, env = "XSTORE_INVENTORY", default_value = DEFAULT_INVENTORY)]
    inventory: PathBuf,
    #[command(flatten)]
    file: UsersFile,
}

pub(crate) fn web_user(cli: &Cli, what: &WebUserWhat) -> Result<u8> {
    match what {
        WebUserWhat::Add(args) => add(cli, args),
        WebUserWhat::Remove { name, file } => {
            let removed = xstore_web::users::remove_user(&file.users, name)?;
            if !cli.quiet {
                outln!("removed web user {}", removed.name);
            }
            Ok(EXIT_OK)
        }
        WebUserWhat::Passwd {
            name,
            password_file,
            file,
        } => {
            let password = read_passphrase_file(password_file)?;
            xstore_web::users::set_password(&file.users, name, &password)?;
            if !cli.quiet {
                outln!("password of web user {name} changed; their older sessions end");
            }
            Ok(EXIT_OK)
        }
        WebUserWhat::List { file } => list(cli, &file.users),
    }
}

fn add(cli: &Cli, args: &AddArgs) -> Result<u8> {
    let user = NewUser {
        name: args.name.clone(),
        role: if args.operator {
            Role::Operator
        } else {
            Role::Customer
        },
        account: args.account.clone(),
    };
    // Operators belong to no account: they need no inventory.
    let inventory = match user.role {
        Role::Customer => Some(Inventory::load(&args.inventory)?),
        Role::Operator => None,
    };
    let accounts: Vec<&str> = inventory
        .iter()
        .flat_map(|i| i.accounts.iter().map(|a| a.name.as_str()))
        .collect();
    let password = read_passphrase_file(&args.password_file)?;
    let added = xstore_web::users::add_user(&args.file.users, &user, &password, &accounts)?;
    if !cli.quiet {
        match &added.account {
            Some(account) => outln!("added web user {} (customer of {account})", added.name),
            None => outln!("added web user {} (operator)", added.name),
        }
    }
    Ok(EXIT_OK)
}

fn list(cli: &Cli, path: &Path) -> Result<u8> {
    let users = WebUsers::load(path)?;
    if cli.json {
        let rows: Vec<_> = users
            .users()
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name,
                    "role": u.role.name(),
                    "account": u.account,
                    "created_ns": u.created_ns,
                    "password_changed_ns": u.password_changed_ns,
                })
            })
            .collect();
        return print_json(&rows).map(|()| EXIT_OK);
    }
    outln!(
        "{:<24}  {:<8}  {:<20}  {:<20}  PASSWORD SET",
        "NAME",
        "ROLE",
        "ACCOUNT",
        "ADDED"
    );
    for u in users.users() {
        outln!(
            "{:<24}  {:<8}  {:<20}  {:<20}  {}",
            u.name,
            u.role.name(),
            xstore::text::printable(u.account.as_deref().unwrap_or("-")),
            time_of(u.created_ns),
            time_of(u.password_changed_ns)
        );
    }
    Ok(EXIT_OK)
}

/// Where the audit log of the web front goes unless `--audit-log` says otherwise.
pub(crate) const DEFAULT_AUDIT_LOG: &str = "/var/log/xstore/web-audit.log";
/// Where the web front keeps the history its charts draw unless `--history` says otherwise.
pub(crate) const DEFAULT_HISTORY: &str = "/var/lib/xstore/web-history.jsonl";

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("listener").required(true).args(["listen", "unix"])))]
pub(crate) struct ServeWebArgs {
    /// HTTPS on this address (port 0: any free port, printed), with --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    listen: Option<std::net::SocketAddr>,
    /// The certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP on this Unix socket, for a reverse proxy that terminates TLS and sets
    /// X-Forwarded-For.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["listen", "tls_cert", "tls_key"])]
    unix: Option<PathBuf>,
    /// The inventory: accounts and their hosts.
    #[arg(long, env = "XSTORE_INVENTORY", default_value = DEFAULT_INVENTORY)]
    inventory: PathBuf,
    #[command(flatten)]
    file: UsersFile,
    /// The audit log of logins and downloads (created 0600).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_AUDIT_LOG)]
    audit_log: PathBuf,
    /// The history the charts draw (created 0600): usage and pulls, sampled every
    /// --sample-every.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_HISTORY)]
    history: PathBuf,
    /// How often the repository's usage and new pulls are sampled into the history.
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period, default_value = "1h")]
    sample_every: std::time::Duration,
    /// Downloads at once; more are answered 503 (Retry-After).
    #[arg(long, default_value_t = 256)]
    max_downloads: usize,
    /// A session not used for this long ends (e.g. 30m).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period, default_value = "30m")]
    session_idle: std::time::Duration,
    /// A session ends this long after its login, however busy (e.g. 12h).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period, default_value = "12h")]
    session_lifetime: std::time::Duration,
}

/// `xstore serve-web`: runs the web front until the process is stopped.
pub(crate) fn serve_web(cli: &Cli, args: &ServeWebArgs) -> Result<u8> {
    let listen = match (&args.unix, args.listen, &args.tls_cert, &args.tls_key) {
        (Some(path), ..) => xstore_web::Listen::Unix(path.clone()),
        (None, Some(addr), Some(cert), Some(key)) => xstore_web::Listen::Https {
            addr,
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => anyhow::bail!("serve-web needs --listen with --tls-cert and --tls-key, or --unix"),
    };
    let mut config = xstore_web::WebConfig::new(
        crate::repo_path(cli)?,
        args.inventory.clone(),
        args.file.users.clone(),
        args.audit_log.clone(),
        args.history.clone(),
        listen,
    );
    config.sample_every = args.sample_every;
    config.max_downloads = args.max_downloads;
    let ns = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    config.sessions.idle_ns = ns(args.session_idle);
    config.sessions.lifetime_ns = ns(args.session_lifetime);
    let quiet = cli.quiet;
    xstore_web::serve_web(&config, &mut |at| {
        if !quiet {
            outln!("xstore web front listening on {at}");
        }
    })?;
    Ok(EXIT_OK)
}
