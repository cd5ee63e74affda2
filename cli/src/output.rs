//! Standard output. A reader that went away (`xstore snapshots | head -1`) ends the command
//! quietly with status 141, what a shell reports for a command that SIGPIPE ended (the
//! runtime ignores SIGPIPE, so the write fails instead); any other write error ends it with
//! one error line.

use std::io::Write;

/// Exit status when standard output's reader went away: 128 + SIGPIPE.
pub(crate) const EXIT_BROKEN_PIPE: u8 = 141;

/// Writes to standard output, ending the process as the module says when that fails.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(EXIT_BROKEN_PIPE));
        }
        eprintln!("xstore: error: writing to standard output: {e}");
        std::process::exit(i32::from(crate::EXIT_ERROR));
    }
}

/// Whether `e` failed because standard output's reader went away: one of its causes is a
/// broken pipe *and* standard output is a pipe without a reader (a broken pipe to an agent
/// or a storage server is a failure like any other).
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let broken = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    broken && stdout_reader_gone()
}

/// Whether standard output is a pipe whose reader closed it (poll reports an error on it).
fn stdout_reader_gone() -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&now)).is_ok() && fds[0].revents().contains(PollFlags::ERR)
}
