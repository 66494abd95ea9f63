//! Standard output that a reader going away does not crash.
//!
//! `println!` panics when stdout is a pipe whose reader has exited (`mesh stat | head -1`):
//! Rust ignores SIGPIPE, so the write fails with `EPIPE` and the macro turns that into a panic
//! and a backtrace on the terminal (and, in `mesh up`, unwinds past the code that stops its
//! workloads). Here a failed write is an error like any other: the command returns through its
//! normal path, so `mesh up | head -3` shuts its sidecars and control plane down as it would on
//! Ctrl-C, and `main` then exits quietly and successfully, as `cat` or `grep` would.

use std::io;

/// A command's exit status: success if `ok`, else failure.
pub fn status(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Writes `text` to stdout in one go and flushes it.
pub use linkerd_control::print;

/// `println!` that returns the write's `io::Result` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `eprintln!` that never panics: with the terminal gone (`mesh up` after SIGHUP), a message
/// that cannot be written is dropped, and the command goes on stopping what it started.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use errln;

/// An error and its causes on one line, `a: b: c`, each cause once: an error whose message
/// already quotes its source (`cannot listen on 127.0.0.9:8080: Address already in use (os
/// error 98)`) is not followed by that source again.
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

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
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug)]
        struct Listen(io::Error);
        impl std::fmt::Display for Listen {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot listen on 127.0.0.9:8080: {}", self.0)
            }
        }
        impl std::error::Error for Listen {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::from(Listen(io::Error::from_raw_os_error(98)));
        let text = chain(&e);
        assert_eq!(text.matches("os error 98").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot listen on 127.0.0.9:8080: "),
            "{text}"
        );
        let e = Err::<(), _>(io::Error::from(io::ErrorKind::NotFound))
            .context("cannot read x")
            .unwrap_err();
        assert_eq!(
            chain(&e),
            format!(
                "cannot read x: {}",
                io::Error::from(io::ErrorKind::NotFound)
            )
        );
    }

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
