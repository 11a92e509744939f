//! `kiln exec` (a process in a running container) and `kiln cp` (files in and out of a
//! running or stopped container, as tar streams that the sandbox helper reads or writes
//! inside the container's root).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use vm_sandbox::container::{EnterAction, EnterTarget};
use vm_sandbox::{RunIo, RunSpec};

use crate::args::{CpArgs, ExecArgs};
use crate::containers::monitor::{Attach, start_terminal};
use crate::containers::{Container, Containers, State, start_failure_code};

fn dup(fd: impl AsFd, what: &str) -> anyhow::Result<Arc<OwnedFd>> {
    Ok(Arc::new(
        fd.as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicate {what}"))?,
    ))
}

pub(crate) fn exec(root: &Path, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let containers = Containers::open(root)?;
    let c = containers.find(&a.container)?;
    let State::Running { pid } = c.state() else {
        bail!("container {} is not running", a.container);
    };
    if c.config.vm.is_some() {
        bail!(
            "exec is not supported for container {}: it runs in a microVM (--isolation vm), which has no way in for another process",
            a.container
        );
    }
    let base = &c.config.spec;
    let mut env = base.env.clone();
    for e in &a.env {
        super::run::set_env(&mut env, e);
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", base.hostname));
    }
    let spec = RunSpec {
        argv: a.command.clone(),
        env,
        cwd: a.workdir.clone().unwrap_or_else(|| base.cwd.clone()),
        user: a.user.clone().unwrap_or_else(|| base.user.clone()),
        network: base.network,
        hostname: base.hostname.clone(),
        tty: a.tty,
        ..RunSpec::default()
    };
    let mut session = None;
    let io = if a.tty {
        let (io, s) = start_terminal(
            Attach::Foreground {
                interactive: a.interactive,
            },
            None,
        )?;
        session = Some(s);
        io
    } else {
        RunIo::Fds {
            stdin: if a.interactive {
                Some(dup(std::io::stdin(), "stdin")?)
            } else {
                None
            },
            stdout: dup(std::io::stdout(), "stdout")?,
            stderr: dup(std::io::stderr(), "stderr")?,
        }
    };
    let sandbox = super::sandbox(root)?;
    let outcome = sandbox.enter(EnterTarget::Process(pid), EnterAction::Exec(spec), io);
    if let Some(s) = session {
        let _ = s.pump.join();
        drop(s.raw);
    }
    match outcome {
        Ok(o) => Ok(ExitCode::from(o.status.shell_code().clamp(0, 255) as u8)),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("kiln: error: {msg}");
            Ok(ExitCode::from(start_failure_code(&msg) as u8))
        }
    }
}

/// One side of `kiln cp`.
enum Place {
    Stream,
    Host(PathBuf),
    Container(String, String),
}

fn place(arg: &str) -> Place {
    if arg == "-" {
        return Place::Stream;
    }
    // As in Docker, a local path with a colon must start with `/` or `.`.
    if !arg.starts_with('/')
        && !arg.starts_with('.')
        && let Some((ctr, path)) = arg.split_once(':')
        && !ctr.is_empty()
    {
        return Place::Container(ctr.to_string(), path.to_string());
    }
    Place::Host(PathBuf::from(arg))
}

/// The name the copy of `path` gets (its last component), or `.` for `dir/.` (contents).
fn top_name(path: &str) -> String {
    if path.ends_with("/.") || path == "." {
        return ".".into();
    }
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into())
}

/// Where `cp` reads or writes: the running container's own view, else its root filesystem.
fn target_of(c: &Container) -> anyhow::Result<EnterTarget> {
    match c.state() {
        State::Running { .. } if c.config.vm.is_some() => bail!(
            "container {} runs in a microVM (--isolation vm): its files cannot be reached while it runs; copy after it stops",
            c.config.name
        ),
        State::Running { pid } => Ok(EnterTarget::Process(pid)),
        _ => Ok(EnterTarget::Root(c.rootfs())),
    }
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

pub(crate) fn cp(root: &Path, a: CpArgs) -> anyhow::Result<ExitCode> {
    let containers = Containers::open(root)?;
    let sandbox = super::sandbox(root)?;
    match (place(&a.source), place(&a.destination)) {
        (Place::Container(ctr, src), dest) => {
            let c = containers.find(&ctr)?;
            let action = EnterAction::ArchiveOut {
                path: absolute(&src),
            };
            let stderr = dup(std::io::stderr(), "stderr")?;
            let run = |stdout: Arc<OwnedFd>| {
                let io = RunIo::Fds {
                    stdin: None,
                    stdout,
                    stderr: stderr.clone(),
                };
                sandbox
                    .enter(target_of(&c)?, action.clone(), io)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            };
            match dest {
                Place::Stream => {
                    run(dup(std::io::stdout(), "stdout")?)?;
                }
                Place::Host(dest) => {
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .context("create a pipe")?;
                    let w = Arc::new(w);
                    let extract = {
                        let dest = dest.clone();
                        let top = top_name(&src);
                        std::thread::spawn(move || extract_on_host(File::from(r), &dest, &top))
                    };
                    let ran = run(w);
                    let extracted = extract
                        .join()
                        .map_err(|_| anyhow::anyhow!("the extraction thread panicked"))?;
                    ran?;
                    extracted?;
                }
                Place::Container(..) => bail!("copying between containers is not supported"),
            }
        }
        (src, Place::Container(ctr, dest)) => {
            let c = containers.find(&ctr)?;
            let target = target_of(&c)?;
            let dest = absolute(&dest);
            let stderr = dup(std::io::stderr(), "stderr")?;
            let null = Arc::new(OwnedFd::from(
                File::open("/dev/null").context("open /dev/null")?,
            ));
            match src {
                Place::Stream => {
                    let io = RunIo::Fds {
                        stdin: Some(dup(std::io::stdin(), "stdin")?),
                        stdout: null,
                        stderr,
                    };
                    let action = EnterAction::ArchiveIn { dest, top: None };
                    sandbox.enter(target, action, io)?;
                }
                Place::Host(src) => {
                    std::fs::symlink_metadata(&src)
                        .with_context(|| format!("lstat {}", src.display()))?;
                    let src_text = src.to_string_lossy().into_owned();
                    let top = top_name(&src_text);
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .context("create a pipe")?;
                    let archive = {
                        let top = top.clone();
                        std::thread::spawn(move || archive_on_host(&src, &top, File::from(w)))
                    };
                    let io = RunIo::Fds {
                        stdin: Some(Arc::new(r)),
                        stdout: null,
                        stderr,
                    };
                    let action = EnterAction::ArchiveIn {
                        dest,
                        top: Some(top),
                    };
                    let ran = sandbox.enter(target, action, io);
                    let archived = archive
                        .join()
                        .map_err(|_| anyhow::anyhow!("the archive thread panicked"))?;
                    ran?;
                    archived?;
                }
                Place::Container(..) => unreachable!("matched above"),
            }
        }
        _ => bail!("one of source and destination must be CONTAINER:PATH"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a tar of `src` whose top entry is `top` (or its contents, for `.`).
fn archive_on_host(src: &Path, top: &str, out: File) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let md = std::fs::symlink_metadata(src)?;
    if md.is_dir() {
        tar.append_dir_all(top, src)
    } else {
        tar.append_path_with_name(src, top)
    }
    .with_context(|| format!("archive {}", src.display()))?;
    tar.finish().context("write the archive")?;
    Ok(())
}

/// Unpacks the container's tar (top entry `top`) as `dest`: into it when it is a directory,
/// else as a new file or directory of that name. Nothing lands outside `dest`'s parent.
fn extract_on_host(input: File, dest: &Path, top: &str) -> anyhow::Result<()> {
    let unpack = |into: &Path| -> anyhow::Result<()> {
        let mut archive = tar::Archive::new(&input);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        archive
            .unpack(into)
            .with_context(|| format!("extract into {}", into.display()))
    };
    if dest.is_dir() {
        return unpack(dest);
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        // Drain the stream so the helper does not fail on a closed pipe first.
        let _ = std::io::copy(&mut &input, &mut std::io::sink());
        bail!("destination directory {} does not exist", parent.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-cp-")
        .tempdir_in(parent)
        .with_context(|| format!("create a directory in {}", parent.display()))?;
    unpack(tmp.path())?;
    let entry = tmp.path().join(top);
    if dest.is_file() && entry.is_dir() {
        bail!("cannot copy a directory to the file {}", dest.display());
    }
    std::fs::rename(&entry, dest).with_context(|| format!("move into place {}", dest.display()))
}
