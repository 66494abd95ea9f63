//! Standard output that a reader going away does not crash.
//!
//! `println!` panics when stdout is a pipe whose reader has exited (`mesh stat | head -1`):
//! Rust ignores SIGPIPE, so the write fails with `EPIPE` and the macro turns that into a panic
//! and a backtrace on the terminal (and, in `mesh up`, unwinds past the code that stops its
//! workloads). Here a failed write is an error like any other: the command returns through its
//! normal path, so `mesh up | head -3` shuts its sidecars and control plane down as it would on
//! Ctrl-C, and `main` then exits quietly and successfully, as `cat` or `grep` would.

use std::io;

/// Writes `text` to stdout in one go and flushes it.
pub use linkerd_control::print;

/// `println!` that returns the write's `io::Result` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// True when the error, or anything it was caused by, is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn broken_pipe_is_found_under_context() {
        let e = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("printing the table")
            .unwrap_err();
        assert!(is_broken_pipe(&e));
        let e = Err::<(), _>(io::Error::from(io::ErrorKind::NotFound))
            .context("reading the state file")
            .unwrap_err();
        assert!(!is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("no mesh is running")));
        // As the control-plane commands return it (`mesh policy crds - | head -1`).
        let e = anyhow::Error::from(linkerd_policy::Error::Stdout(io::Error::from(
            io::ErrorKind::BrokenPipe,
        )));
        assert!(is_broken_pipe(&e));
    }
}
