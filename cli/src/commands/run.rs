//! `kiln run`: create a container from an image and run it, in the foreground (its exit code
//! is kiln's) or detached (`-d`: a monitor process keeps it, `ps`/`logs`/`stop` find it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use snapshotter::image::read_image;
use snapshotter::snapshot::{RootMode, Snapshots};
use snapshotter::{Reference, Store};
use vm_sandbox::{Limits, Network, RunSpec, SandboxMount, SandboxMountKind};

use crate::args::RunArgs;
use crate::containers::monitor::{Attach, MONITOR_ARG, supervise};
use crate::containers::{ContainerConfig, Containers, State, VmSettings, now_rfc3339};

pub(crate) fn run(
    root: &Path,
    reg: &builder::registry::RegistryOptions,
    a: RunArgs,
) -> anyhow::Result<ExitCode> {
    let vm = super::vm_options(&a.isolation)?;
    let network = match a.network.as_str() {
        "none" => Network::None,
        "host" | "default" => Network::Host,
        other => bail!("unsupported network mode {other:?} (use none or host)"),
    };
    let mut env_from_files = Vec::new();
    for f in &a.env_files {
        env_from_files.extend(read_env_file(f)?);
    }
    let volumes = Volumes::parse(root, &a.volumes, &a.mounts)?;
    let memory = a.memory.as_deref().map(super::parse_bytes).transpose()?;
    if memory.is_some()
        && (!nix::unistd::geteuid().is_root() || vm_sandbox::container::in_user_namespace())
    {
        bail!("--memory needs root here: a rootless container has no memory cgroup on this host");
    }
    if let Some(s) = &a.stop_signal {
        super::containers::parse_signal(s)?;
    }

    let name: Reference = a.image.parse()?;
    let store = super::open_store(root)?;
    let containers = Containers::open(root)?;
    let ctr = {
        // Held until the container names its image, which keeps the image from then on.
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
        let argv = command_line(&a, cfg.entrypoint.as_deref(), cfg.cmd.as_deref())?;
        let mut env = cfg.env.clone().unwrap_or_default();
        for e in env_from_files.iter().chain(&a.env) {
            set_env(&mut env, e);
        }
        let lower: Vec<PathBuf> = layers.iter().rev().map(|(_, d)| d.clone()).collect();
        let stop_signal = a
            .stop_signal
            .clone()
            .or_else(|| cfg.stop_signal.clone())
            .unwrap_or_else(|| "SIGTERM".into());
        containers.create(a.name.as_deref(), |id, name, dir| {
            let direct = RootMode::detect() == RootMode::Copy;
            if direct {
                let root_dir = dir.join("root");
                std::fs::create_dir(&root_dir)?;
                let bottom_first: Vec<PathBuf> = lower.iter().rev().cloned().collect();
                snapshotter::copyfs::materialize(&bottom_first, &root_dir)?;
            } else {
                std::fs::create_dir(dir.join("upper"))?;
            }
            std::fs::create_dir(dir.join("work"))?;
            let spec = RunSpec {
                argv,
                env,
                cwd: a
                    .workdir
                    .clone()
                    .or_else(|| cfg.working_dir.clone())
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| "/".into()),
                user: a
                    .user
                    .clone()
                    .or_else(|| cfg.user.clone())
                    .unwrap_or_default(),
                network,
                hostname: a.hostname.clone().unwrap_or_else(|| id[..12].to_string()),
                inline_files: Vec::new(),
                mounts: volumes.mounts.clone(),
                limits: Limits {
                    processes: a.pids_limit,
                    memory,
                },
                tty: a.tty,
                read_only: a.read_only,
            };
            Ok(ContainerConfig {
                id: id.to_string(),
                name: name.to_string(),
                image: a.image.clone(),
                image_id: image.id().to_string(),
                manifest: desc.digest().to_string(),
                created: now_rfc3339(),
                spec,
                lower,
                direct,
                stop_signal,
                auto_remove: a.rm,
                vm: vm.as_ref().map(VmSettings::from),
                anonymous_volumes: volumes.anonymous.clone(),
            })
        })?
    };

    if a.detach {
        return start_detached(root, &ctr);
    }
    let rec = supervise(
        root,
        &containers,
        &ctr,
        Attach::Foreground {
            interactive: a.interactive,
        },
    )?;
    if let Some(e) = &rec.error {
        eprintln!("kiln: error: {e}");
    }
    Ok(ExitCode::from(rec.code().clamp(0, 255) as u8))
}

/// Starts the monitor in its own session, waits until the container runs (or failed to
/// start), and prints its ID.
fn start_detached(root: &Path, ctr: &crate::containers::Container) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("find the kiln binary")?;
    let mut child = std::process::Command::new(exe)
        .arg(MONITOR_ARG)
        .arg(root)
        .arg(&ctr.config.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("start the container monitor")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ctr.state() {
            State::Running { .. } => break,
            State::Exited { .. } => {
                if let Some(rec) = ctr.exit_record()
                    && let Some(e) = &rec.error
                {
                    eprintln!("kiln: error: {e}");
                    return Ok(ExitCode::from(rec.code().clamp(0, 255) as u8));
                }
                break;
            }
            State::Created => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Already ended and removed (--rm): it did start.
            if !ctr.dir.exists() {
                break;
            }
            // The monitor ended before the container ran: it says why in the record.
            if ctr.exit_record().is_none() {
                bail!("the container monitor ended early ({status})");
            }
            continue;
        }
        if Instant::now() > deadline {
            bail!("the container did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("{}", ctr.config.id);
    Ok(ExitCode::SUCCESS)
}

/// ENTRYPOINT and CMD combined with the command line, as Docker does.
fn command_line(
    a: &RunArgs,
    entrypoint: Option<&[String]>,
    cmd: Option<&[String]>,
) -> anyhow::Result<Vec<String>> {
    let mut argv = match &a.entrypoint {
        Some(ep) if ep.is_empty() => Vec::new(),
        Some(ep) => vec![ep.clone()],
        None => entrypoint.map(<[String]>::to_vec).unwrap_or_default(),
    };
    if a.command.is_empty() {
        // An explicit --entrypoint drops the image's CMD, as in Docker.
        if a.entrypoint.is_none() {
            argv.extend(cmd.map(<[String]>::to_vec).unwrap_or_default());
        }
    } else {
        argv.extend(a.command.iter().cloned());
    }
    if argv.is_empty() {
        bail!("no command specified: the image has no CMD or ENTRYPOINT");
    }
    Ok(argv)
}

/// Sets `KEY=VALUE` in `env`, or with a bare `KEY`, the caller's value of it (if any).
pub(crate) fn set_env(env: &mut Vec<String>, e: &str) {
    let key = e.split_once('=').map_or(e, |(k, _)| k);
    let value = if e.contains('=') {
        Some(e.to_string())
    } else {
        std::env::var(e).ok().map(|v| format!("{e}={v}"))
    };
    if let Some(kv) = value {
        env.retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) != key);
        env.push(kv);
    }
}

/// An `--env-file`: `KEY=VALUE` or `KEY` lines; blank lines and `#` comments skipped.
fn read_env_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read env file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!(
                "{}:{}: invalid environment variable {key:?}",
                path.display(),
                n + 1
            );
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// `-v` and `--mount`, as sandbox mounts.
struct Volumes {
    mounts: Vec<SandboxMount>,
    /// Anonymous volumes made for this container (removed by `rm -v`).
    anonymous: Vec<String>,
}

impl Volumes {
    fn parse(root: &Path, volumes: &[String], mounts: &[String]) -> anyhow::Result<Volumes> {
        let mut out = Volumes {
            mounts: Vec::new(),
            anonymous: Vec::new(),
        };
        for v in volumes {
            out.volume(root, v)?;
        }
        for m in mounts {
            out.mount(m)?;
        }
        Ok(out)
    }

    fn volume(&mut self, root: &Path, spec: &str) -> anyhow::Result<()> {
        let bad = || anyhow::anyhow!("invalid volume specification: {spec:?}");
        let parts: Vec<&str> = spec.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [t] => (None, *t, ""),
            [s, t] => (Some(*s), *t, ""),
            [s, t, m] => (Some(*s), *t, *m),
            _ => return Err(bad()),
        };
        let writable = match mode {
            "" | "rw" => true,
            "ro" => false,
            other => bail!("invalid volume specification: {spec:?}: unknown mode {other:?}"),
        };
        if !target.starts_with('/') {
            bail!("invalid volume specification: {spec:?}: the container path must be absolute");
        }
        let source = match source {
            Some(s) if s.starts_with('/') => {
                // Like Docker's -v, a missing host directory is created.
                let p = PathBuf::from(s);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .with_context(|| format!("create volume source {s}"))?;
                }
                p
            }
            Some(s) if !s.is_empty() && is_volume_name(s) => named_volume(root, s)?,
            Some(s) => bail!(
                "invalid volume specification: {spec:?}: {s:?} is neither an absolute host path nor a volume name"
            ),
            None => {
                let name = crate::containers::random_hex(32)?;
                let dir = named_volume(root, &name)?;
                self.anonymous.push(name);
                dir
            }
        };
        self.mounts.push(SandboxMount {
            target: target.to_string(),
            kind: SandboxMountKind::Bind { source, writable },
        });
        Ok(())
    }

    fn mount(&mut self, spec: &str) -> anyhow::Result<()> {
        let mut kind = "volume";
        let (mut source, mut target, mut readonly, mut size) = (None, None, false, None);
        for field in spec.split(',') {
            let (k, v) = field.split_once('=').unwrap_or((field, ""));
            match k {
                "type" => kind = v,
                "source" | "src" => source = Some(v.to_string()),
                "target" | "destination" | "dst" => target = Some(v.to_string()),
                "readonly" | "ro" => readonly = v.is_empty() || v == "true" || v == "1",
                "tmpfs-size" => {
                    size = Some(v.parse::<u64>().map_err(|_| {
                        anyhow::anyhow!("invalid mount {spec:?}: tmpfs-size must be bytes")
                    })?)
                }
                _ => bail!("invalid mount {spec:?}: unknown field {k:?}"),
            }
        }
        let target = target.filter(|t| t.starts_with('/')).ok_or_else(|| {
            anyhow::anyhow!("invalid mount {spec:?}: an absolute target is required")
        })?;
        let kind = match kind {
            "bind" => {
                let source = source.ok_or_else(|| {
                    anyhow::anyhow!("invalid mount {spec:?}: a bind mount needs a source")
                })?;
                if !Path::new(&source).exists() {
                    bail!("invalid mount {spec:?}: bind source path does not exist: {source}");
                }
                SandboxMountKind::Bind {
                    source: PathBuf::from(source),
                    writable: !readonly,
                }
            }
            "tmpfs" => SandboxMountKind::Tmpfs { size },
            other => bail!("invalid mount {spec:?}: unsupported type {other:?} (bind or tmpfs)"),
        };
        self.mounts.push(SandboxMount { target, kind });
        Ok(())
    }
}

fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The directory of a named volume (created on first use).
fn named_volume(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join("volumes").join(name).join("_data");
    std::fs::create_dir_all(&dir).with_context(|| format!("create volume {name}"))?;
    Ok(dir)
}
