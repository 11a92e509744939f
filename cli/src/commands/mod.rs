//! One module per subcommand.

pub(crate) mod build;
pub(crate) mod build_cache;
pub(crate) mod containers;
pub(crate) mod exec_cp;
pub(crate) mod image;
pub(crate) mod images;
pub(crate) mod import;
pub(crate) mod limits;
pub(crate) mod parse;
pub(crate) mod registry;
pub(crate) mod run;
pub(crate) mod system;

use std::path::Path;

use anyhow::Context;
use snapshotter::FsStore;

/// Opens (creating if needed) the store at `root`.
pub(crate) fn open_store(root: &Path) -> anyhow::Result<FsStore> {
    FsStore::open(root).with_context(|| format!("open store {}", root.display()))
}

/// The sandbox `--isolation` asks for: the container sandbox (with the `kiln` binary itself
/// as its helper) or the microVM one.
pub(crate) fn sandbox_for(
    root: &Path,
    a: &crate::args::IsolationArgs,
) -> anyhow::Result<Box<dyn vm_sandbox::Sandbox>> {
    use vm_sandbox::Sandbox;
    match vm_options(a)? {
        None => Ok(Box::new(sandbox(root)?)),
        Some(opts) => {
            let vm = vm_sandbox::MicroVmSandbox::new(opts, root.join("vm"));
            vm.probe()?;
            Ok(Box::new(vm))
        }
    }
}

/// The microVM options of `--isolation vm`; `None` for containers.
pub(crate) fn vm_options(
    a: &crate::args::IsolationArgs,
) -> anyhow::Result<Option<vm_sandbox::VmOptions>> {
    match a.isolation.as_str() {
        "container" | "default" | "process" => return Ok(None),
        "vm" => {}
        other => anyhow::bail!("unknown isolation {other:?} (use container or vm)"),
    }
    let timeout = a
        .vm_timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--vm-timeout")?;
    Ok(Some(vm_sandbox::VmOptions {
        vmm: a.vmm.parse().map_err(anyhow::Error::msg)?,
        kernel: a.vm_kernel.clone(),
        timeout,
        memory_mib: parse_mib(&a.vm_memory).context("--vm-memory")?,
    }))
}

/// `90`, `90s`, `30m`, `2h`.
fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?} (use 90, 90s, 30m or 2h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("bad duration {s:?} (use 90, 90s, 30m or 2h)"),
    };
    if secs == 0 {
        anyhow::bail!("a duration of 0 leaves no time to run");
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// A memory size as Docker reads `--memory`: a number of bytes, or with `b`, `k`, `m` or `g`.
pub(crate) fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix('b')
        .filter(|r| !r.is_empty())
        .unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad memory size {s:?} (use bytes, or 64m, 2g)"))?;
    let bytes = n.saturating_mul(mult);
    if bytes < 6 << 20 {
        anyhow::bail!("memory size {s:?} is below the minimum of 6m");
    }
    Ok(bytes)
}

/// The memory limit of a build's RUN steps: `--memory`, else three quarters of the host's
/// memory, so a step that fills memory fails alone and the host keeps working.
pub(crate) fn build_memory_limit(flag: Option<&str>) -> anyhow::Result<Option<u64>> {
    if let Some(f) = flag {
        return parse_bytes(f).map(Some);
    }
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    Ok(total_kib.map(|k| k * 1024 / 4 * 3))
}

/// `512m`, `2g`, `1024` (MiB).
fn parse_mib(s: &str) -> anyhow::Result<u32> {
    let lower = s.to_ascii_lowercase();
    let (num, mult) = match lower.strip_suffix('g').or_else(|| lower.strip_suffix("gb")) {
        Some(n) => (n.to_string(), 1024),
        None => match lower.strip_suffix('m').or_else(|| lower.strip_suffix("mb")) {
            Some(n) => (n.to_string(), 1),
            None => (lower.clone(), 1),
        },
    };
    let n: u32 = num
        .parse()
        .with_context(|| format!("bad memory size {s:?} (use 512m or 2g)"))?;
    let mib = n.saturating_mul(mult);
    if !(128..=65536).contains(&mib) {
        anyhow::bail!("memory size {s:?} is out of range (128m to 64g)");
    }
    Ok(mib)
}

/// The container sandbox, with the `kiln` binary itself as its helper.
pub(crate) fn sandbox(root: &Path) -> anyhow::Result<vm_sandbox::ContainerSandbox> {
    use vm_sandbox::Sandbox;
    let exe = std::env::current_exe().context("find the kiln binary")?;
    let sandbox = vm_sandbox::ContainerSandbox::new(exe, root.join("sandbox"));
    sandbox.probe()?;
    Ok(sandbox)
}
