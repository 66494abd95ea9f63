//! Running meshes: each `mesh up` is an instance with a name, a block of loopback addresses and
//! a state file of its own, all under one runtime directory (`$MESH_RUNTIME_DIR`, else
//! `$XDG_RUNTIME_DIR/mesh`, else `/tmp/mesh-<uid>`, created private to the user):
//!
//! ```text
//! <name>.lock        held (flock) by the `mesh up` of that name for as long as it runs
//! <name>.json        its state: what `mesh stat|top|edges|graph|check|list|down` read
//! <name>/            its files: trust, tokens, registry, logs, the apps' working directories
//! ```
//!
//! and, in the user's directory (the same unless `$MESH_RUNTIME_DIR` is set):
//!
//! ```text
//! addr-127.0.N.lock  held by the `mesh up` using the addresses 127.0.N.0/24
//! ```
//!
//! Locks are released by the kernel when the process ends, however it ends, so a mesh killed
//! with `kill -9` never keeps its name or its addresses; its state file, left behind, is found
//! stale (nobody holds its lock) and removed by the next command that looks.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The environment variable naming the runtime directory (tests give each run its own).
pub const RUNTIME_DIR_ENV: &str = "MESH_RUNTIME_DIR";

/// What `mesh up` is running, written where the other commands look for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub name: String,
    pub pid: u32,
    /// Unix time the mesh started.
    pub started: u64,
    /// The mesh file, or `built-in demo`.
    pub file: String,
    /// The instance's directory (logs, trust, registry).
    pub dir: PathBuf,
    /// Whether `dir` outlives the mesh (`--keep-logs`).
    pub keep_logs: bool,
    pub namespace: String,
    pub identity_admin: SocketAddr,
    pub destination_admin: SocketAddr,
    pub policy_admin: SocketAddr,
    pub trust_anchor_file: PathBuf,
    pub workloads: Vec<StateWorkload>,
    /// `mesh up`'s dashboard (`null` with `--no-dashboard`).
    #[serde(default)]
    pub dashboard: Option<SocketAddr>,
    /// Where its sidecars export spans (the embedded OTLP receiver, or `--trace-collector`).
    #[serde(default)]
    pub trace_collector: Option<String>,
}

#[cfg(test)]
impl State {
    /// For tests: a demo mesh `name` started by `pid`, its directory `dir`, with `workloads`;
    /// its control plane's admin servers on `127.0.0.9`.
    pub fn for_tests(name: &str, pid: u32, dir: PathBuf, workloads: Vec<StateWorkload>) -> Self {
        let admin = |port: u16| SocketAddr::from(([127, 0, 0, 9], port));
        Self {
            name: name.into(),
            pid,
            started: 0,
            file: "built-in demo".into(),
            dir,
            keep_logs: false,
            namespace: "demo".into(),
            identity_admin: admin(9990),
            destination_admin: admin(9996),
            policy_admin: admin(9997),
            trust_anchor_file: "/nonexistent".into(),
            workloads,
            dashboard: None,
            trace_collector: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateWorkload {
    pub name: String,
    /// The fully-qualified name of the service it serves.
    pub service: String,
    pub identity: String,
    /// Its sidecar's admin server.
    pub admin: SocketAddr,
    /// Its app's address.
    pub app: SocketAddr,
    pub ingress: bool,
    /// In discovery: its sidecar is ready and its app passes its health check.
    pub ready: bool,
}

/// The runtime directory, created (mode 0700) when missing. One under `/tmp` must be a
/// directory of ours that nobody else can write, or it is refused.
pub fn runtime_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os(RUNTIME_DIR_ENV) {
        Some(d) if !d.is_empty() => {
            let dir = PathBuf::from(d);
            private_dir(&dir, false)?;
            Ok(dir)
        }
        _ => user_dir(),
    }
}

/// The user's own directory: `$XDG_RUNTIME_DIR/mesh`, else `/tmp/mesh-<uid>`. Address locks
/// are always kept here, whatever `$MESH_RUNTIME_DIR` says: loopback addresses are shared by
/// every mesh of the machine, not only those of one runtime directory.
pub fn user_dir() -> anyhow::Result<PathBuf> {
    let (dir, shared_parent) = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => (PathBuf::from(d).join("mesh"), false),
        _ => (
            std::env::temp_dir().join(format!("mesh-{}", rustix::process::getuid().as_raw())),
            true,
        ),
    };
    private_dir(&dir, shared_parent)?;
    Ok(dir)
}

/// Creates `dir` (0700) if needed and checks that it is ours and private.
pub fn private_dir(dir: &Path, check_owner: bool) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if check_owner
        && (!meta.is_dir()
            || meta.uid() != rustix::process::getuid().as_raw()
            || meta.permissions().mode() & 0o022 != 0)
    {
        bail!(
            "{} is not a private directory of this user; remove it or set {RUNTIME_DIR_ENV}",
            dir.display()
        );
    }
    Ok(())
}

/// An exclusive lock on a file, held until dropped (or the process ends).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock if nobody holds it; `None` when someone does.
    pub fn try_take(path: &Path) -> anyhow::Result<Option<Lock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// Whether someone holds the lock at `path` (a missing file is not held).
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }
}

/// Where one instance keeps its lock, state and files.
#[derive(Clone, Debug)]
pub struct Paths {
    pub lock: PathBuf,
    pub state: PathBuf,
    pub dir: PathBuf,
}

pub fn paths(runtime: &Path, name: &str) -> Paths {
    Paths {
        lock: runtime.join(format!("{name}.lock")),
        state: runtime.join(format!("{name}.json")),
        dir: runtime.join(name),
    }
}

/// A name for a mesh: a DNS label of at most 40 characters.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("mesh name {name:?}: use 1-40 lowercase letters, digits and '-' (not first or last)");
    }
    Ok(())
}

/// The default name of a mesh run from `file` (the demo when `None`): the file's stem as a
/// DNS label.
pub fn name_from_file(file: Option<&Path>) -> String {
    let Some(file) = file else {
        return "demo".into();
    };
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(36);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() { "mesh".into() } else { name }
}

/// Claims a name: `wanted` as given (an error if it is running), or, when derived, the first of
/// `wanted`, `wanted-2`, `wanted-3`, ... that is free.
pub fn claim_name(runtime: &Path, wanted: &str, derived: bool) -> anyhow::Result<(String, Lock)> {
    let candidates: Vec<String> = if derived {
        std::iter::once(wanted.to_string())
            .chain((2..100).map(|i| format!("{wanted}-{i}")))
            .collect()
    } else {
        vec![wanted.to_string()]
    };
    for name in candidates {
        let p = paths(runtime, &name);
        if let Some(lock) = Lock::try_take(&p.lock)? {
            // Whatever a mesh of this name left behind (killed, or --keep-logs) goes now.
            remove_leftovers(&p);
            return Ok((name, lock));
        }
    }
    if derived {
        bail!("99 meshes named {wanted}-* are running: stop some with `mesh down NAME`");
    }
    let pid = read_state(&paths(runtime, wanted).state)
        .map(|s| format!(" (pid {})", s.pid))
        .unwrap_or_default();
    bail!(
        "a mesh named {wanted:?} is already running{pid}: stop it with `mesh down {wanted}`, or \
         choose another --name"
    )
}

fn remove_leftovers(p: &Paths) {
    let _ = std::fs::remove_file(&p.state);
    let _ = std::fs::remove_dir_all(&p.dir);
}

/// The loopback addresses of one mesh: the control plane at `.9` of a /24, workloads from `.10`.
#[derive(Debug)]
pub struct Block {
    pub control_plane: Ipv4Addr,
    pub first: Ipv4Addr,
    _lock: Lock,
}

/// How many /24 blocks (`127.0.0.0/24` to `127.0.63.0/24`) `mesh up` chooses from.
pub const AUTO_BLOCKS: u8 = 64;

/// Claims the addresses starting at `base` (explicit `--base-ip`), or the first free block of
/// `127.0.N.0/24`. A block is free when no other mesh holds its lock (in `locks`, the user's
/// directory) and every address:port in `ports(control_plane, first)` can be bound (nothing
/// else is listening there).
pub fn claim_block(
    locks: &Path,
    base: Option<Ipv4Addr>,
    ports: &dyn Fn(Ipv4Addr, Ipv4Addr) -> Vec<(SocketAddr, String)>,
) -> anyhow::Result<Block> {
    let candidates: Vec<Ipv4Addr> = match base {
        Some(b) => vec![b],
        None => (0..AUTO_BLOCKS)
            .map(|n| Ipv4Addr::new(127, 0, n, 10))
            .collect(),
    };
    let mut last_busy = None;
    for first in candidates {
        let [a, b, c, d] = first.octets();
        if d < 2 {
            bail!("--base-ip {first}: the control plane needs the address before it");
        }
        let control_plane = Ipv4Addr::new(a, b, c, d - 1);
        let Some(lock) = Lock::try_take(&locks.join(format!("addr-{a}.{b}.{c}.lock")))? else {
            if base.is_some() {
                bail!(
                    "another mesh uses {a}.{b}.{c}.0/24 (see `mesh list`): choose another \
                     --base-ip, or leave it out and mesh up picks free addresses"
                );
            }
            continue;
        };
        match busy(&ports(control_plane, first)) {
            None => {
                return Ok(Block {
                    control_plane,
                    first,
                    _lock: lock,
                });
            }
            Some(what) => {
                if base.is_some() {
                    bail!(
                        "{what} is in use: choose another --base-ip, or leave it out and mesh up \
                         picks free addresses"
                    );
                }
                last_busy = Some(what);
            }
        }
    }
    bail!(
        "no free block of loopback addresses in 127.0.0.0-127.0.{}.255 (last tried: {})",
        AUTO_BLOCKS - 1,
        last_busy.unwrap_or_else(|| "all held by other meshes".into())
    )
}

/// The first address someone is listening on, with what it was for.
fn busy(addrs: &[(SocketAddr, String)]) -> Option<String> {
    addrs.iter().find_map(|(addr, what)| {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(format!("{addr} ({what})")),
            // Anything else (no such address) is for the process itself to report.
            Err(_) => None,
        }
    })
}

/// Writes the state file atomically (a reader never sees half of it), private to the user.
pub fn write_state(path: &Path, state: &State) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn read_state(path: &Path) -> anyhow::Result<State> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a mesh state file", path.display()))
}

/// A mesh that is running, as its state file describes it (`None` while it is starting).
#[derive(Clone, Debug)]
pub struct Instance {
    pub name: String,
    pub paths: Paths,
    pub state: Option<State>,
}

/// Every running mesh, by name. State files of meshes that are gone (their lock is free) are
/// removed, with their directory unless it was to be kept.
pub fn running(runtime: &Path) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(runtime).with_context(|| format!("cannot read {}", runtime.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".lock")?.to_string();
            (!name.starts_with("addr-")).then_some(name)
        })
        .collect();
    names.sort();
    for name in names {
        let p = paths(runtime, &name);
        if Lock::is_held(&p.lock) {
            let state = read_state(&p.state).ok();
            out.push(Instance {
                name,
                paths: p,
                state,
            });
        } else if p.state.exists() {
            // Gone. Clean up under its lock, so a `mesh up` taking the name meanwhile keeps
            // what it writes.
            if let Ok(Some(_lock)) = Lock::try_take(&p.lock) {
                let keep = read_state(&p.state).is_ok_and(|s| s.keep_logs);
                let _ = std::fs::remove_file(&p.state);
                if !keep {
                    let _ = std::fs::remove_dir_all(&p.dir);
                }
            }
        }
    }
    Ok(out)
}

/// The mesh `name`, or the only one running.
pub fn find(runtime: &Path, name: Option<&str>) -> anyhow::Result<Instance> {
    let all = running(runtime)?;
    match name {
        Some(name) => {
            check_name(name)?;
            all.into_iter().find(|i| i.name == name).with_context(|| {
                format!("no mesh named {name:?} is running (`mesh list` shows those that are)")
            })
        }
        None => match all.len() {
            0 => bail!(
                "no mesh is running: start one with `mesh up`, or pass --admin <proxy admin address>"
            ),
            1 => Ok(all.into_iter().next().context("no mesh")?),
            _ => bail!(
                "{} meshes are running ({}): choose one with --mesh NAME",
                all.len(),
                all.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Whether the process `pid` holds the lock file `lock` open: the check that a pid read from
/// a state file is still that mesh's `mesh up`, and not a process that reused its number.
pub fn holds(pid: u32, lock: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mesh-instance-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        private_dir(&d, true).unwrap();
        d
    }

    #[test]
    fn names_come_from_the_file_and_are_labels() {
        assert_eq!(name_from_file(None), "demo");
        assert_eq!(
            name_from_file(Some(Path::new("examples/mesh.yaml"))),
            "mesh"
        );
        assert_eq!(
            name_from_file(Some(Path::new("/x/My_Shop.v2.yml"))),
            "my-shop-v2"
        );
        assert_eq!(name_from_file(Some(Path::new("/x/__.yaml"))), "mesh");
        assert!(check_name("shop-2").is_ok());
        assert!(check_name("Shop").is_err());
        assert!(check_name("-a").is_err());
    }

    #[test]
    fn a_held_name_is_refused_or_numbered() {
        let dir = temp("names");
        let (a, _la) = claim_name(&dir, "demo", true).unwrap();
        let (b, _lb) = claim_name(&dir, "demo", true).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("demo", "demo-2"));
        let err = claim_name(&dir, "demo", false).unwrap_err();
        assert!(format!("{err:#}").contains("already running"), "{err:#}");
        assert!(Lock::is_held(&paths(&dir, "demo").lock));
        drop(_la);
        assert!(!Lock::is_held(&paths(&dir, "demo").lock));
        let (c, _lc) = claim_name(&dir, "demo", false).unwrap();
        assert_eq!(c, "demo");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_state_is_removed_and_live_state_is_found() {
        let dir = temp("stale");
        let state = |name: &str| State::for_tests(name, std::process::id(), dir.join(name), vec![]);
        let (_, _live) = claim_name(&dir, "live", false).unwrap();
        write_state(&paths(&dir, "live").state, &state("live")).unwrap();
        // A mesh that was killed: its state file, and a lock nobody holds.
        {
            let (_, _gone) = claim_name(&dir, "gone", false).unwrap();
            std::fs::create_dir_all(dir.join("gone")).unwrap();
            write_state(&paths(&dir, "gone").state, &state("gone")).unwrap();
        }
        let all = running(&dir).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state.as_ref().unwrap(), &state("live"));
        assert!(!paths(&dir, "gone").state.exists());
        assert!(!dir.join("gone").exists());
        assert_eq!(find(&dir, None).unwrap().name, "live");
        assert!(find(&dir, Some("gone")).is_err());
        assert!(holds(std::process::id(), &paths(&dir, "live").lock));
        assert!(!holds(std::process::id(), &dir.join("other.lock")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn blocks_skip_held_and_busy_addresses() {
        let dir = temp("blocks");
        // Only the control plane's one port, in a range no default mesh uses.
        let ports =
            |cp: Ipv4Addr, _first: Ipv4Addr| vec![(SocketAddr::from((cp, 8080)), "x".into())];
        let a = claim_block(&dir, Some(Ipv4Addr::new(127, 0, 201, 10)), &ports).unwrap();
        assert_eq!(a.control_plane, Ipv4Addr::new(127, 0, 201, 9));
        let err = claim_block(&dir, Some(Ipv4Addr::new(127, 0, 201, 20)), &ports).unwrap_err();
        assert!(format!("{err:#}").contains("another mesh"), "{err:#}");
        let _held = std::net::TcpListener::bind("127.0.202.9:8080").unwrap();
        let err = claim_block(&dir, Some(Ipv4Addr::new(127, 0, 202, 10)), &ports).unwrap_err();
        assert!(
            format!("{err:#}").contains("127.0.202.9:8080 (x) is in use"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
