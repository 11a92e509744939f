//! What the contained process may do: capabilities, a seccomp filter and resource limits,
//! applied last, just before `execve`.
//!
//! - Capabilities: Docker's default set without `CAP_MKNOD` and `CAP_NET_RAW` (as Podman
//!   ships it since 4.0): device nodes and raw sockets stay out of reach. The bounding set
//!   is cut to it, so a setuid binary cannot get more; a non-root user ends with none.
//! - Seccomp: the system calls Docker's default profile refuses to a container without extra
//!   capabilities (module loading, mounts, namespaces, kexec, keyrings, BPF, perf, clock
//!   setting, swap, reboot, `process_vm_*`, `userfaultfd`, odd `personality` values, vsock)
//!   fail with `EPERM`; `clone3` fails with `ENOSYS` so libcs fall back to `clone`, whose
//!   namespace flags the filter can see.
//! - Resource limits: the open-file limit raised to the hard limit, the process count bounded
//!   when the spec asks ([`crate::Limits`]).

use std::collections::{BTreeMap, HashSet};

use caps::{CapSet, Capability};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The capabilities a container keeps.
pub(crate) const DEFAULT_CAPABILITIES: [Capability; 12] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Cuts the bounding set to [`DEFAULT_CAPABILITIES`]. Call while still root (it needs
/// `CAP_SETPCAP`) and before changing user.
pub(crate) fn limit_bounding_set() -> Result<(), String> {
    let keep: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    for cap in caps::all() {
        if keep.contains(&cap) {
            continue;
        }
        // A capability the running kernel does not know cannot be dropped, nor held.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// Sets the effective and permitted sets to [`DEFAULT_CAPABILITIES`] for root and to nothing
/// for any other user; clears the inheritable and ambient sets. Call after changing user.
pub(crate) fn set_capabilities(uid: u32) -> Result<(), String> {
    let keep: caps::CapsHashSet = if uid == 0 {
        DEFAULT_CAPABILITIES
            .into_iter()
            .filter(|c| caps::has_cap(None, CapSet::Permitted, *c).unwrap_or(false))
            .collect()
    } else {
        caps::CapsHashSet::new()
    };
    // Inheritable stays empty, as in Docker since 23.0 (CVE-2022-24769).
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("clear inheritable capabilities: {e}"))?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &keep).map_err(|e| format!("set {set:?} capabilities: {e}"))?;
    }
    Ok(())
}

/// System calls refused with `EPERM` whatever their arguments.
const REFUSED: &[i64] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fsopen,
    libc::SYS_fspick,
    libc::SYS_get_mempolicy,
    libc::SYS_init_module,
    libc::SYS_ioperm,
    libc::SYS_iopl,
    libc::SYS_kcmp,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_lookup_dcookie,
    libc::SYS_mbind,
    libc::SYS_mount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_move_pages,
    libc::SYS_name_to_handle_at,
    libc::SYS_nfsservctl,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_perf_event_open,
    libc::SYS_pivot_root,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_quotactl,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_set_mempolicy,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_syslog,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_uselib,
    libc::SYS_userfaultfd,
    libc::SYS_ustat,
    libc::SYS_vhangup,
];

/// `personality` values Docker allows: the default, `PER_LINUX32`, `UNAME26`, both, and the
/// query `0xffffffff`.
const PERSONALITIES: [u64; 5] = [0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Namespace flags that make `clone` refused.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("seccomp condition: {e}"))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| format!("seccomp rule: {e}"))
}

/// The two filters (refused with `EPERM`; `clone3` with `ENOSYS`), compiled.
pub(crate) fn seccomp_programs() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp on {}: {e}", std::env::consts::ARCH))?;
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED.iter().map(|n| (*n, Vec::new())).collect();
    let not_allowed: Vec<SeccompCondition> = PERSONALITIES
        .iter()
        .map(|p| cond(0, SeccompCmpOp::Ne, *p))
        .collect::<Result<_, _>>()?;
    eperm.insert(libc::SYS_personality, vec![rule(not_allowed)?]);
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|f| {
            let f = *f as u64;
            rule(vec![cond(0, SeccompCmpOp::MaskedEq(f), f)?])
        })
        .collect::<Result<_, _>>()?;
    eperm.insert(libc::SYS_clone, clone_rules);
    eperm.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::Eq,
            libc::AF_VSOCK as u64,
        )?])?],
    );
    let compile = |rules, action| -> Result<BpfProgram, String> {
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
            .map_err(|e| format!("seccomp filter: {e}"))?;
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| format!("seccomp filter: {e}"))
    };
    let enosys: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    Ok(vec![
        compile(eperm, SeccompAction::Errno(libc::EPERM as u32))?,
        compile(enosys, SeccompAction::Errno(libc::ENOSYS as u32))?,
    ])
}

/// Installs the compiled filters (needs `no_new_privs` or `CAP_SYS_ADMIN`).
pub(crate) fn apply_seccomp(programs: &[BpfProgram]) -> Result<(), String> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| format!("install the seccomp filter: {e}"))?;
    }
    Ok(())
}

/// Sets the process's resource limits: open files up to the hard limit, and at most
/// `max_processes` processes for the user when given.
pub(crate) fn set_rlimits(max_processes: Option<u64>) -> Result<(), String> {
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    if let Some(n) = max_processes {
        setrlimit(Resource::RLIMIT_NPROC, n, n)
            .map_err(|e| format!("limit processes to {n}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guest_keeps_the_same_capabilities() {
        let mut ours: Vec<u8> = DEFAULT_CAPABILITIES.iter().map(|c| c.index()).collect();
        ours.sort();
        assert_eq!(ours, crate::vm::protocol::STEP_CAPABILITIES);
    }

    use super::*;

    #[test]
    fn filters_compile() {
        let progs = seccomp_programs().unwrap();
        assert_eq!(progs.len(), 2);
        // Every refused call and the argument rules make it into the program.
        assert!(progs[0].len() > REFUSED.len() * 2);
    }
}
