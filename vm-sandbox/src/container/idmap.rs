//! User namespaces for runs without root: the caller becomes root inside, and where
//! `/etc/subuid` and `/etc/subgid` grant the caller subordinate ranges (and `newuidmap` and
//! `newgidmap` are installed), ids 1..=N inside are those ranges, so images with several
//! users work. Without ranges, only root exists inside (one id mapped).
//!
//! `kiln` itself enters such a namespace at start for the commands that write the store
//! (`build`, `run`, `pull`, ...), as rootless buildah and podman do: layers then unpack with
//! their owners, and a step's files keep theirs in its layer.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, User, fork};

/// A subordinate range: the first host id and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) start: u32,
    pub(crate) count: u32,
}

/// The first range `/etc/subuid`-style `text` grants to the user `name` or number `id`.
pub(crate) fn range_in(text: &str, name: Option<&str>, id: u32) -> Option<Range> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let matches = Some(who) == name || who.parse::<u32>().ok() == Some(id);
        let r = Range {
            start: start.trim().parse().ok()?,
            count: count.trim().parse().ok()?,
        };
        (matches && r.count > 0).then_some(r)
    })
}

fn have(program: &str) -> bool {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

/// The caller's subordinate uid and gid ranges, when it has both and the setuid helpers that
/// map them are installed.
pub fn subordinate_ranges() -> Option<(u32, u32)> {
    let uid = nix::unistd::getuid().as_raw();
    let name = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let u = range_in(&read("/etc/subuid"), name.as_deref(), uid)?;
    let g = range_in(&read("/etc/subgid"), name.as_deref(), uid)?;
    (have("newuidmap") && have("newgidmap")).then_some((u.count, g.count))
}

/// Whether this process is in a user namespace other than the host's (its uid map is not the
/// identity over all ids).
pub fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        f != ["0", "0", "4294967295"]
    })
}

/// Whether `id` is mapped in this process's user namespace (`/proc/self/uid_map` or
/// `gid_map` text).
pub(crate) fn is_mapped(map: &str, id: u32) -> bool {
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= u64::from(id) && u64::from(id) < f[0] + f[2]
    })
}

/// Enters a new user namespace as root, with the subordinate ranges mapped where the caller
/// has them. Must be called while the process is single-threaded.
pub fn enter_user_namespace() -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    let name = User::from_uid(uid).ok().flatten().map(|u| u.name);
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let ranges = (
        range_in(&read("/etc/subuid"), name.as_deref(), uid.as_raw()),
        range_in(&read("/etc/subgid"), name.as_deref(), uid.as_raw()),
    );
    if let (Some(su), Some(sg)) = ranges
        && have("newuidmap")
        && have("newgidmap")
    {
        if map_with_helpers(uid, gid, su, sg)? {
            return Ok(());
        }
        // The helpers refused (a misconfigured range, say): map just this user, which is
        // still possible as long as no map was written.
        let written = |f: &str| !read(f).trim().is_empty();
        if written("/proc/self/uid_map") || written("/proc/self/gid_map") {
            return Err("newuidmap/newgidmap mapped only part of the user namespace".into());
        }
        return write_single_maps(uid, gid);
    }
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("create a user namespace: {e}"))?;
    write_single_maps(uid, gid)
}

fn write_single_maps(uid: Uid, gid: Gid) -> Result<(), String> {
    let write =
        |file: &str, text: String| fs::write(file, text).map_err(|e| format!("write {file}: {e}"));
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    Ok(())
}

/// Unshares the user namespace and has a child outside it run `newuidmap` and `newgidmap` on
/// this process. Returns whether both succeeded.
fn map_with_helpers(uid: Uid, gid: Gid, su: Range, sg: Range) -> Result<bool, String> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let me = nix::unistd::getpid();
    // SAFETY: callers are single-threaded (enter_user_namespace's contract), so the child may
    // allocate and run arbitrary code after fork.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(write);
            // Wait until the parent has unshared (or died: EOF).
            let mut go = [0u8; 1];
            let ok = fs::File::from(read).read(&mut go).is_ok_and(|n| n == 1)
                && [
                    ("newuidmap", uid.as_raw(), su),
                    ("newgidmap", gid.as_raw(), sg),
                ]
                .iter()
                .all(|(tool, own, r)| {
                    std::process::Command::new(tool)
                        .arg(me.to_string())
                        .args(["0", &own.to_string(), "1"])
                        .args(["1", &r.start.to_string(), &r.count.to_string()])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                });
            std::process::exit(if ok { 0 } else { 1 });
        }
        ForkResult::Parent { child } => {
            drop(read);
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            let mut w = fs::File::from(write);
            if unshared.is_ok() {
                let _ = w.write_all(&[1]);
            }
            drop(w);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            unshared.map_err(|e| format!("create a user namespace: {e}"))?;
            Ok(matches!(status, Ok(WaitStatus::Exited(_, 0))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_number() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            range_in(text, Some("alice"), 1000),
            Some(Range {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(range_in(text, Some("carol"), 1001).unwrap().start, 200000);
        assert_eq!(range_in(text, Some("bob"), 7), None);
        assert_eq!(range_in(text, None, 5), None);
    }

    #[test]
    fn mapped_ids() {
        let map = "         0       1001          1\n         1     100000      65536\n";
        assert!(is_mapped(map, 0));
        assert!(is_mapped(map, 65534));
        assert!(is_mapped(map, 65536));
        assert!(!is_mapped(map, 65537));
        assert!(!is_mapped("0 1001 1\n", 1));
    }
}
