//! Resource limits through cgroups, for runs as root. A process-count limit through the
//! `pids` cgroup controller, for runs as root (where
//! `RLIMIT_NPROC` does not bind: the kernel exempts the host's root user from it). Rootless
//! runs use the rlimit, which binds inside a user namespace.
//!
//! The helper moves itself into `kiln/<its pid>` under the controller before it forks the
//! container, so everything the container starts is counted; when the container has ended it
//! moves back and removes the group. Moving a process between cgroup v1 groups waits for an
//! RCU grace period (milliseconds, tens under load), so a build joins one group for all its
//! steps ([`ProcessLimit::join`]) and the helpers it starts see that they are bounded already.
//!
//! A memory limit ([`MemoryLimit`]) works the same way through the `memory` controller, in a
//! child of the process's own group; [`oom_kills`] tells a step the OOM killer ended from
//! one killed otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The groups this process came from, for each group it has joined and not left yet: where
/// a sandbox's reaper moves itself ([`joined_homes`]).
static JOINED_HOMES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn note_joined(home: &Path) {
    JOINED_HOMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(home.to_path_buf());
}

fn note_left(home: &Path) {
    let mut homes = JOINED_HOMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = homes.iter().position(|h| h == home) {
        homes.remove(i);
    }
}

/// The groups (one per controller) that this process left to join the build's `pids` and
/// `memory` groups. A sandbox's reaper moves itself back into them as it starts: it is kiln's
/// own process, not the container's, and the namespace teardown it exists to wait out (a
/// fraction of a second after a step that touched many files) would otherwise keep the build's
/// groups busy, and the build waiting for them, after the build has finished.
pub(crate) fn joined_homes() -> Vec<PathBuf> {
    JOINED_HOMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// A `pids` cgroup this process has joined; left and removed on drop.
pub struct ProcessLimit {
    dir: PathBuf,
    /// The cgroup the helper came from (its `cgroup.procs`).
    home: PathBuf,
}

/// The hierarchy of `controller`: cgroup v1's own mount, or v2's unified one where the
/// controller is enabled for children. Returns the mount point, this process's group path in
/// it, and whether it is v1.
fn hierarchy(controller: &str) -> Option<(PathBuf, String, bool)> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    if v1.join("cgroup.procs").exists() {
        let path = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })?;
        return Some((v1, path, true));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let enabled = fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
    if enabled.split_whitespace().any(|c| c == controller) {
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        return Some((v2.to_path_buf(), path.to_string(), false));
    }
    None
}

impl ProcessLimit {
    /// Joins a new group allowing at most `max` processes (and threads) for this process and
    /// everything it starts, unless its group allows no more than that already. `None` where
    /// there is nothing to do: no usable `pids` controller (rootless runs rely on
    /// `RLIMIT_NPROC`), not root, or bounded already.
    pub fn join(max: u64) -> Option<Result<ProcessLimit, String>> {
        if !nix::unistd::geteuid().is_root() || super::idmap::in_user_namespace() {
            return None;
        }
        let (mount, own, _) = hierarchy("pids")?;
        let current = mount.join(own.trim_start_matches('/')).join("pids.max");
        if fs::read_to_string(current)
            .ok()
            .and_then(|m| m.trim().parse::<u64>().ok())
            .is_some_and(|m| m <= max)
        {
            return None;
        }
        let home = mount.join(own.trim_start_matches('/'));
        sweep_dead_groups(&mount.join("kiln"), "");
        let dir = mount.join("kiln").join(std::process::id().to_string());
        let made = (|| -> Result<ProcessLimit, String> {
            fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let group = ProcessLimit {
                dir: dir.clone(),
                home,
            };
            fs::write(dir.join("pids.max"), max.to_string())
                .map_err(|e| format!("limit processes to {max}: {e}"))?;
            fs::write(dir.join("cgroup.procs"), "0")
                .map_err(|e| format!("join {}: {e}", dir.display()))?;
            note_joined(&group.home);
            Ok(group)
        })();
        Some(made)
    }
}

impl Drop for ProcessLimit {
    fn drop(&mut self) {
        note_left(&self.home);
        let _ = fs::write(self.home.join("cgroup.procs"), "0");
        remove_group(&self.dir);
    }
}

/// Removes a group once its last processes are gone: a step's sandbox reaper outlives the
/// step by a namespace teardown (an RCU grace period), so this waits up to 5 s.
fn remove_group(dir: &Path) {
    for _ in 0..500 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes the groups named `NAME` + a PID in `parent` whose process is gone and which hold
/// no process: what a killed kiln left.
fn sweep_dead_groups(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(prefix)
            .filter(|p| p.parse::<u32>().is_ok())
        else {
            continue;
        };
        let empty =
            fs::read_to_string(e.path().join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if empty && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// A memory cgroup this process has joined (a child of its own group, so any limit above
/// still holds); left and removed on drop. Root only: cgroup v1 delegates nothing to other
/// users, and rootless runs have no memory limit.
pub struct MemoryLimit {
    dir: PathBuf,
    home: PathBuf,
}

/// This process's memory group.
fn own_memory_group() -> Option<(PathBuf, bool)> {
    let (mount, own, v1) = hierarchy("memory")?;
    Some((mount.join(own.trim_start_matches('/')), v1))
}

/// How many processes the OOM killer has killed in this process's memory group (and its
/// children) so far.
pub fn oom_kills() -> u64 {
    let Some((dir, v1)) = own_memory_group() else {
        return 0;
    };
    let file = if v1 {
        "memory.oom_control"
    } else {
        "memory.events"
    };
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl MemoryLimit {
    /// Joins a new group that holds this process and everything it starts to `max` bytes of
    /// memory (no swap beyond it), unless its group is bounded that tightly already. `None`
    /// where there is nothing to do: no memory controller, not root, bounded already.
    pub fn join(max: u64) -> Option<Result<MemoryLimit, String>> {
        if !nix::unistd::geteuid().is_root() || super::idmap::in_user_namespace() {
            return None;
        }
        let (home, v1) = own_memory_group()?;
        let limit_file = if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        if fs::read_to_string(home.join(limit_file))
            .ok()
            .and_then(|m| m.trim().parse::<u64>().ok())
            .is_some_and(|m| m <= max)
        {
            return None;
        }
        sweep_dead_groups(&home, "kiln-");
        let dir = home.join(format!("kiln-{}", std::process::id()));
        let made = (|| -> Result<MemoryLimit, String> {
            fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let group = MemoryLimit {
                dir: dir.clone(),
                home: home.clone(),
            };
            fs::write(dir.join(limit_file), max.to_string())
                .map_err(|e| format!("limit memory to {max} bytes: {e}"))?;
            // Swap would let a step outgrow its limit; where swap is accounted, cap it too.
            let swap = if v1 {
                ("memory.memsw.limit_in_bytes", max.to_string())
            } else {
                ("memory.swap.max", "0".to_string())
            };
            if dir.join(swap.0).exists() {
                let _ = fs::write(dir.join(swap.0), swap.1);
            }
            fs::write(dir.join("cgroup.procs"), "0")
                .map_err(|e| format!("join {}: {e}", dir.display()))?;
            note_joined(&group.home);
            Ok(group)
        })();
        Some(made)
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        note_left(&self.home);
        let _ = fs::write(self.home.join("cgroup.procs"), "0");
        remove_group(&self.dir);
    }
}
