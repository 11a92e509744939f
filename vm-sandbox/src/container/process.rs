//! The last steps before the contained program runs, shared by a container's first process
//! and `kiln exec`: user, working directory, environment, terminal, confinement, `execve`.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::path::Path;

use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Uid, chdir, setgid, setgroups, setuid};

use super::idmap::is_mapped;
use super::user::resolve_in_root;
use crate::RunSpec;

/// In the container's root (already `/`), becomes `run.user`, enters `run.cwd` (creating it),
/// confines the process and executes `run.argv`. Returns only on failure.
pub(super) fn start_program(run: &RunSpec, hostname: &str) -> Result<Infallible, String> {
    let id = resolve_in_root(&run.user)?;
    let cwd = if run.cwd.is_empty() { "/" } else { &run.cwd };
    super::init::ensure_dir(Path::new(cwd))?;
    chdir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;

    let env = super::program::with_defaults(&run.env, &id.home, hostname);
    super::confine::limit_bounding_set()?;
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let (uid_map, gid_map) = (read("/proc/self/uid_map"), read("/proc/self/gid_map"));
    if !is_mapped(&uid_map, id.uid) || !is_mapped(&gid_map, id.gid) {
        return Err(format!(
            "user {:?} (uid {}, gid {}) does not exist in this rootless user namespace: give the user subordinate ids in /etc/subuid and /etc/subgid (and install uidmap), or run as root",
            run.user, id.uid, id.gid
        ));
    }
    // Where the namespace was mapped without newgidmap, setgroups is denied.
    if read("/proc/self/setgroups").trim() != "deny" {
        let groups: Vec<Gid> = id
            .groups
            .iter()
            .filter(|g| is_mapped(&gid_map, **g))
            .map(|g| Gid::from_raw(*g))
            .collect();
        setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    }
    setgid(Gid::from_raw(id.gid)).map_err(|e| format!("setgid {}: {e}", id.gid))?;
    setuid(Uid::from_raw(id.uid)).map_err(|e| format!("setuid {}: {e}", id.uid))?;
    // A change of user clears the parent-death signal: the process must still die with its
    // helper (which is how `kiln stop` and `kill` reach a container of any user).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    super::confine::set_capabilities(id.uid)?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    super::confine::set_rlimits(run.limits.processes)?;

    let program = run.argv.first().ok_or("no command given")?;
    let resolved = super::program::find_program(program, &env)
        .ok_or_else(|| format!("exec: \"{program}\": executable file not found in $PATH"))?;
    let cstr =
        |s: &str| CString::new(s).map_err(|_| format!("argument contains a NUL byte: {s:?}"));
    let argv: Vec<CString> = run.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let filters = super::confine::seccomp_programs()?;
    if run.tty {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        crate::tty::make_controlling(std::io::stdin())
            .map_err(|e| format!("make the terminal controlling: {e}"))?;
    }
    let program_path = cstr(&resolved)?;
    // The signals the helper blocked (to forward them) are the program's to handle again.
    let _ = SigSet::all().thread_unblock();
    reset_signal_dispositions();
    // Last: after this, mount, unshare and the rest are refused, to this code as well.
    super::confine::apply_seccomp(&filters)?;
    let e = nix::unistd::execve(&program_path, &argv, &envp).unwrap_err();
    Err(format!("exec {program}: {e}"))
}

/// Puts every signal back to its default action, as runc does for a container's process: an
/// ignored disposition survives `execve`, and a shell cannot trap a signal that was ignored
/// when it started (kiln itself may run under `nohup`, which ignores SIGHUP).
fn reset_signal_dispositions() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code, so no async-signal-safety concern arises;
        // nothing in this single-threaded process relies on the previous dispositions.
        #[allow(unsafe_code)]
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}
