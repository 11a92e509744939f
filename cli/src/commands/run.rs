//! `kiln run [--rm] [-e K=V]... [-w DIR] [-u USER] [--network MODE] IMAGE [COMMAND [ARG...]]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use snapshotter::image::read_image;
use snapshotter::snapshot::Snapshots;
use snapshotter::{Reference, Store};
use vm_sandbox::{Network, RootFs, RunIo, RunSpec, Sandbox};

use crate::args::RunArgs;

pub(crate) fn run(
    root: &Path,
    reg: &builder::registry::RegistryOptions,
    a: RunArgs,
) -> anyhow::Result<ExitCode> {
    let name: Reference = a.image.parse()?;
    let store = super::open_store(root)?;
    let _gc = snapshotter::gc::GcLock::shared(root)?;
    let qualified = reg.qualify(&a.image)?;
    let desc = match (store.resolve(&name)?, store.resolve(&qualified)?) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => {
            eprintln!("Unable to find image '{}' locally", a.image);
            super::registry::pull_into(
                &store,
                reg,
                &qualified,
                &builder::Platform::host(),
                3,
                false,
            )
            .with_context(|| format!("pull {}", a.image))?
            .image
            .descriptor
        }
    };
    let image = read_image(&store, &desc)?;
    let snapshots = Snapshots::open(root)?;
    let layers = snapshots.ensure_image(&store, &image)?;
    let cfg = &image.config.config;
    let mut argv = match &a.entrypoint {
        Some(ep) if ep.is_empty() => Vec::new(),
        Some(ep) => vec![ep.clone()],
        None => cfg.entrypoint.clone().unwrap_or_default(),
    };
    if a.command.is_empty() {
        // An explicit --entrypoint drops the image's CMD, as in Docker.
        if a.entrypoint.is_none() {
            argv.extend(cfg.cmd.clone().unwrap_or_default());
        }
    } else {
        argv.extend(a.command.iter().cloned());
    }
    if argv.is_empty() {
        anyhow::bail!("no command specified: the image has no CMD or ENTRYPOINT");
    }
    let mut env = cfg.env.clone().unwrap_or_default();
    for e in &a.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        env.retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) != key);
        if e.contains('=') {
            env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            env.push(format!("{e}={v}"));
        }
    }
    let network = match a.network.as_str() {
        "none" => Network::None,
        "host" | "default" => Network::Host,
        other => anyhow::bail!("unsupported network mode {other:?} (use none or host)"),
    };
    let spec = RunSpec {
        argv,
        env,
        cwd: a
            .workdir
            .clone()
            .or_else(|| cfg.working_dir.clone())
            .unwrap_or_else(|| "/".into()),
        user: a
            .user
            .clone()
            .or_else(|| cfg.user.clone())
            .unwrap_or_default(),
        network,
        hostname: a
            .hostname
            .clone()
            .unwrap_or_else(|| image.id().short().to_string()),
        inline_files: Vec::new(),
        mounts: Vec::new(),
    };
    let sandbox = super::sandbox(root)?;
    // The container's writes go to a throwaway upper directory, removed when it ends.
    let lower: Vec<_> = layers.iter().rev().map(|(_, d)| d.clone()).collect();
    let active = snapshots.prepare_root(&lower, snapshotter::snapshot::RootMode::detect())?;
    let rootfs = RootFs {
        direct: active.direct_root.is_some(),
        lower,
        upper: active
            .direct_root
            .clone()
            .unwrap_or_else(|| active.upper.clone()),
        work: active.work.clone(),
    };
    let outcome = sandbox.run(&rootfs, &spec, RunIo::Inherit);
    drop(active);
    match outcome {
        Ok(o) => Ok(ExitCode::from(o.status.shell_code().clamp(0, 255) as u8)),
        // Docker's codes: 127 command not found, 126 not executable, 125 anything else.
        Err(e) => {
            let msg = e.to_string();
            eprintln!("kiln: error: {msg}");
            let code = if msg.contains("executable file not found") {
                127
            } else if msg.contains("ermission denied") {
                126
            } else {
                125
            };
            Ok(ExitCode::from(code))
        }
    }
}
