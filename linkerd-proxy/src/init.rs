//! `linkerd-proxy init`: the pod's iptables redirection, installed by the `linkerd-init` init
//! container before the proxy starts.
//!
//! Two chains in the nat table, as linkerd2-proxy-init writes them: `PROXY_INIT_REDIRECT`
//! (jumped to from `PREROUTING`) sends incoming TCP to the inbound proxy port, and
//! `PROXY_INIT_OUTPUT` (from `OUTPUT`) sends outgoing TCP to the outbound port, except the
//! proxy's own traffic (by uid), loopback, and ignored ports and subnets. The proxy then recovers
//! each connection's original destination with `SO_ORIGINAL_DST` (`transport`).
//!
//! [`rules`] turns the arguments and the current table into iptables argument lists (pure, and
//! unit-tested); this module finds the binaries and runs those lists one by one. It is a
//! one-shot command that runs before any runtime exists, so it blocks on each process.

mod args;
mod rules;
#[cfg(test)]
mod tests;

pub use self::{
    args::{Args, Parsed, PortRange, Subnet, USAGE, UsageError},
    rules::{Cmd, Family, NatTable, OUTPUT_CHAIN, REDIRECT_CHAIN, cleanup, install},
};

use std::process::{Command, ExitCode, Stdio};

/// The iptables flavours tried, in order, when no `--firewall-bin-path` is given.
const CANDIDATES: [&str; 3] = ["iptables-nft", "iptables-legacy", "iptables"];

/// A pair of binaries managing one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewall {
    pub bin: String,
    pub save: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("no working iptables: {0}")]
    NoFirewall(String),
    #[error("`{cmd}` {why}")]
    Command { cmd: String, why: String },
    #[error("cannot read the nat table printed by `{cmd}`: {reason}")]
    Save { cmd: String, reason: String },
}

/// Entry point: `args` are the words after `init`.
pub fn main(args: Vec<String>) -> ExitCode {
    let args = match Args::parse(args) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("linkerd-proxy init: {e}\n\n{USAGE}");
            return ExitCode::from(crate::EX_USAGE);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ InitError::Usage(_)) => {
            eprintln!("linkerd-proxy init: {e}");
            ExitCode::from(crate::EX_USAGE)
        }
        Err(e) => {
            eprintln!("linkerd-proxy init: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs (or removes) the rules for IPv4 and, unless `--ipv6=false`, IPv6. Stops at the first
/// failing command; running again after fixing the cause converges, since every run flushes and
/// refills the chains.
pub fn run(args: &Args) -> Result<(), InitError> {
    let (v4, v4_save) = firewall(args)?;
    let mut families = vec![(Family::V4, v4.clone(), v4_save)];
    if args.ipv6 {
        let v6 = Firewall {
            bin: ip6tables(&v4.bin, "--firewall-bin-path")?,
            save: ip6tables(&v4.save, "--firewall-save-bin-path")?,
        };
        let save = save_nat(&v6, args.dry_run)?;
        families.push((Family::V6, v6, save));
    }
    for (family, fw, save) in families {
        let table = NatTable::parse(&save).map_err(|reason| InitError::Save {
            cmd: shell_words(&fw.save, &["-t", "nat"]),
            reason,
        })?;
        let cmds = if args.cleanup {
            rules::cleanup(&table)
        } else {
            rules::install(args, family, &table)
        };
        if args.dry_run {
            println!("# {} ({})", family.name(), fw.bin);
        }
        for cmd in cmds {
            let argv = with_wait(&cmd);
            if args.dry_run {
                println!("{}", shell_words(&fw.bin, &argv));
            } else {
                println!("linkerd-proxy init: {}", shell_words(&fw.bin, &argv));
                exec(&fw.bin, &argv)?;
            }
        }
    }
    Ok(())
}

/// The IPv4 binaries and the nat table they show now. Given paths are used as they are; otherwise
/// the first candidate whose save command works is picked.
fn firewall(args: &Args) -> Result<(Firewall, String), InitError> {
    let given = match (&args.firewall_bin_path, &args.firewall_save_bin_path) {
        (Some(bin), Some(save)) => Some(Firewall {
            bin: bin.clone(),
            save: save.clone(),
        }),
        (Some(bin), None) => Some(Firewall {
            bin: bin.clone(),
            save: format!("{bin}-save"),
        }),
        (None, Some(save)) => match save.strip_suffix("-save") {
            Some(bin) => Some(Firewall {
                bin: bin.to_string(),
                save: save.clone(),
            }),
            None => {
                return Err(UsageError {
                    flag: "--firewall-save-bin-path".into(),
                    reason: format!(
                        "cannot derive the iptables binary from {save:?}; pass --firewall-bin-path"
                    ),
                }
                .into());
            }
        },
        (None, None) => None,
    };
    if let Some(fw) = given {
        let save = save_nat(&fw, args.dry_run)?;
        return Ok((fw, save));
    }
    let mut tried = Vec::new();
    for bin in CANDIDATES {
        let fw = Firewall {
            bin: bin.to_string(),
            save: format!("{bin}-save"),
        };
        match save_nat(&fw, false) {
            Ok(save) => return Ok((fw, save)),
            Err(e) => tried.push(e.to_string()),
        }
    }
    if args.dry_run {
        // Printing the rules needs no firewall; show them against an empty table.
        eprintln!("linkerd-proxy init: no working iptables; printing rules for an empty table");
        let fw = Firewall {
            bin: "iptables".into(),
            save: "iptables-save".into(),
        };
        return Ok((fw, String::new()));
    }
    Err(InitError::NoFirewall(tried.join("; ")))
}

/// `<save> -t nat`. In a dry run a failure reads as an empty table.
fn save_nat(fw: &Firewall, dry_run: bool) -> Result<String, InitError> {
    match exec(&fw.save, &["-t".into(), "nat".into()]) {
        Ok(out) => Ok(out),
        Err(e) if dry_run => {
            eprintln!("linkerd-proxy init: {e}; printing rules for an empty table");
            Ok(String::new())
        }
        Err(e) => Err(e),
    }
}

/// The ip6tables counterpart of an iptables binary: `/sbin/iptables-nft-save` becomes
/// `/sbin/ip6tables-nft-save`.
pub fn ip6tables(path: &str, flag: &str) -> Result<String, UsageError> {
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, path),
    };
    let Some(rest) = file.strip_prefix("iptables") else {
        return Err(UsageError {
            flag: flag.into(),
            reason: format!(
                "cannot derive the ip6tables counterpart of {path:?} (the name must start with \
                 `iptables`); pass --ipv6=false to program IPv4 only"
            ),
        });
    };
    Ok(match dir {
        Some(d) => format!("{d}/ip6tables{rest}"),
        None => format!("ip6tables{rest}"),
    })
}

/// Rule changes wait for the xtables lock rather than fail when another process holds it.
fn with_wait(cmd: &[String]) -> Vec<String> {
    let mut argv = Vec::with_capacity(cmd.len() + 1);
    argv.push("-w".to_string());
    argv.extend_from_slice(cmd);
    argv
}

/// Runs one command to completion; its stdout, or an error naming the command, its exit status
/// and its stderr.
fn exec(bin: &str, args: &[String]) -> Result<String, InitError> {
    let err = |why: String| InitError::Command {
        cmd: shell_words(bin, args),
        why,
    };
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("could not run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err(format!(
            "failed ({}): {}",
            out.status,
            stderr.trim_end()
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| err("printed non-UTF-8 output".into()))
}

/// A command line as a shell would read it back (words with spaces or quotes single-quoted).
pub fn shell_words(bin: &str, args: &[impl AsRef<str>]) -> String {
    let quote = |w: &str| {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+@%".contains(c));
        if plain {
            w.to_string()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    let mut s = quote(bin);
    for a in args {
        s.push(' ');
        s.push_str(&quote(a.as_ref()));
    }
    s
}
