//! A build's resource limits, joined at its first RUN step: as root, one `pids` and one
//! `memory` cgroup hold every step of the build. Moving a process between cgroup v1 groups
//! waits for an RCU grace period, so a build that runs no step (an unchanged rebuild) should
//! not pay for it, and one that runs many pays once.

use std::sync::Mutex;

use vm_sandbox::container::{MemoryLimit, ProcessLimit};
use vm_sandbox::{RootFs, RunIo, RunOutcome, RunSpec, Sandbox, SandboxError, SandboxKind};

/// The groups this process joined; left when dropped.
type Joined = (Option<ProcessLimit>, Option<MemoryLimit>);

/// A sandbox whose first run joins the build's cgroups.
pub(crate) struct LimitedSandbox {
    inner: Box<dyn Sandbox>,
    processes: u64,
    memory: Option<u64>,
    joined: Mutex<Option<Joined>>,
}

impl LimitedSandbox {
    pub(crate) fn new(inner: Box<dyn Sandbox>, processes: u64, memory: Option<u64>) -> Self {
        LimitedSandbox {
            inner,
            processes,
            memory,
            joined: Mutex::new(None),
        }
    }

    fn join(&self) -> Result<(), SandboxError> {
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if joined.is_some() {
            return Ok(());
        }
        let pids = ProcessLimit::join(self.processes)
            .transpose()
            .map_err(SandboxError::Setup)?;
        let memory = match self.memory {
            Some(max) => MemoryLimit::join(max)
                .transpose()
                .map_err(SandboxError::Setup)?,
            None => None,
        };
        *joined = Some((pids, memory));
        Ok(())
    }
}

impl Sandbox for LimitedSandbox {
    fn kind(&self) -> SandboxKind {
        self.inner.kind()
    }

    fn probe(&self) -> Result<(), SandboxError> {
        self.inner.probe()
    }

    fn run(&self, rootfs: &RootFs, spec: &RunSpec, io: RunIo) -> Result<RunOutcome, SandboxError> {
        self.join()?;
        self.inner.run(rootfs, spec, io)
    }
}
