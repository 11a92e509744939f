//! [`FakeSandbox`]: records what it is asked to run and applies scripted effects.

use std::sync::Mutex;

use crate::{ExitStatus, RootFs, RunIo, RunOutcome, RunSpec, Sandbox, SandboxError, SandboxKind};

type Effect = dyn Fn(&RootFs, &RunSpec) -> ExitStatus + Send + Sync;

/// A [`Sandbox`] for tests: each run calls the effect (which may write into `rootfs.upper`)
/// and records the spec.
pub struct FakeSandbox {
    effect: Box<Effect>,
    runs: Mutex<Vec<RunSpec>>,
}

impl FakeSandbox {
    /// A sandbox whose runs do `effect`.
    pub fn new(effect: impl Fn(&RootFs, &RunSpec) -> ExitStatus + Send + Sync + 'static) -> Self {
        FakeSandbox {
            effect: Box::new(effect),
            runs: Mutex::new(Vec::new()),
        }
    }

    /// A sandbox whose runs change nothing and exit 0.
    pub fn succeeding() -> Self {
        Self::new(|_, _| ExitStatus::Code(0))
    }

    /// Every spec run so far.
    pub fn runs(&self) -> Vec<RunSpec> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Sandbox for FakeSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Fake
    }

    fn probe(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    fn run(&self, rootfs: &RootFs, spec: &RunSpec, _io: RunIo) -> Result<RunOutcome, SandboxError> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(spec.clone());
        Ok(RunOutcome {
            status: (self.effect)(rootfs, spec),
            oom_killed: false,
        })
    }
}
