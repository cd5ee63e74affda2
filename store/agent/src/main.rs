//! `xstore-agent`: the client side of a pull, run by sshd as the forced command of the backup
//! server's key. No repository, index, mount or network server code is linked in.

use std::process::ExitCode;

use clap::Parser;

/// Serve this host's backup list to the xstore backup server (run by sshd as the forced
/// command of the server's key), or print that authorized_keys line.
#[derive(Parser)]
#[command(name = "xstore-agent", version)]
struct Cli {
    #[command(flatten)]
    args: xstore_agent::cli::AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match xstore_agent::cli::main(&cli.args, "xstore-agent") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xstore-agent: error: {}", xstore_agent::cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
