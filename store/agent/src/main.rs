//! `xstore-agent`: the client side of a pull, run by sshd as the forced command of the backup
//! server's key. No repository, index, mount or network server code is linked in.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = xstore_agent::cli::Cli::parse();
    match xstore_agent::cli::main(&cli.args, "xstore-agent") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xstore-agent: error: {}", xstore_agent::cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
