//! Containers' state under the store root, shared by `run`, `ps`, `logs`, `stop` and the rest.
//!
//! `ROOT/containers/ID/` holds:
//! - `config.json`: what was asked for ([`ContainerConfig`]), written once at creation;
//! - `monitor`: PID and start time of the process supervising the container;
//! - `pid`: host PID of the container's first process, written by the sandbox helper;
//! - `started`, `exit.json`: when it started, and how it ended ([`ExitRecord`]);
//! - `container.log`: stdout and stderr as JSON lines, Docker's `json-file` format;
//! - `upper/`, `work/` (overlay) or `root/` (copy snapshots): the container's own files.
//!
//! `ROOT/containers/names/NAME` is a symlink to the ID: creating it is how a name is taken.
//! Every file is written through a rename, so a crash leaves the old or the new content.

pub(crate) mod logs;
pub(crate) mod monitor;
mod names;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use vm_sandbox::{ExitStatus, RootFs, RunSpec};

/// What a container was created with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContainerConfig {
    pub(crate) id: String,
    pub(crate) name: String,
    /// The image as the user named it.
    pub(crate) image: String,
    /// The image's ID (its config digest).
    pub(crate) image_id: String,
    /// The manifest digest, which keeps the image's data alive while the container exists.
    pub(crate) manifest: String,
    pub(crate) created: String,
    pub(crate) spec: RunSpec,
    /// The image's layer directories, top-most first.
    pub(crate) lower: Vec<PathBuf>,
    /// Copy snapshots: `root/` holds the whole tree.
    pub(crate) direct: bool,
    /// Signal `kiln stop` sends first.
    pub(crate) stop_signal: String,
    /// `--rm`.
    pub(crate) auto_remove: bool,
    /// Volumes made for this container alone (`-v /path`), removed by `rm -v`.
    #[serde(default)]
    pub(crate) anonymous_volumes: Vec<String>,
    /// Runs in a microVM (`--isolation vm`) with these settings.
    #[serde(default)]
    pub(crate) vm: Option<VmSettings>,
}

/// How a container ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    pub(crate) status: Option<ExitStatus>,
    /// Why it could not start, when it could not.
    #[serde(default)]
    pub(crate) error: Option<String>,
    pub(crate) finished: String,
}

impl ExitRecord {
    /// The code `kiln wait` and `ps` show: the exit code, 128 + a signal, 127 for a missing
    /// program, 126 for one that cannot run, 125 for other start failures.
    pub(crate) fn code(&self) -> i32 {
        match (&self.status, &self.error) {
            (Some(s), _) => s.shell_code(),
            (None, Some(e)) => start_failure_code(e),
            (None, None) => 255,
        }
    }
}

/// Docker's codes for a container that did not start.
pub(crate) fn start_failure_code(msg: &str) -> i32 {
    if msg.contains("executable file not found") || msg.contains("no such file or directory") {
        127
    } else if msg.contains("ermission denied") {
        126
    } else {
        125
    }
}

/// Where a container stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Created,
    Running { pid: i32 },
    Exited { code: i32, finished: String },
}

/// One container's directory.
#[derive(Clone, Debug)]
pub(crate) struct Container {
    pub(crate) dir: PathBuf,
    pub(crate) config: ContainerConfig,
}

/// The containers of one store root.
#[derive(Clone, Debug)]
pub(crate) struct Containers {
    dir: PathBuf,
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes `path` through a temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// The start time of a live process (field 22 of `/proc/PID/stat`), which tells it apart
/// from a later process that got the same PID; `None` for no process or a zombie.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Containers {
    /// The containers under the store root (the directory is made on first use).
    pub(crate) fn open(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("containers");
        fs::create_dir_all(dir.join("names"))
            .with_context(|| format!("create {}", dir.display()))?;
        Ok(Containers { dir })
    }

    /// Creates a container's directory and takes its name (`None`: a generated one).
    pub(crate) fn create(
        &self,
        name: Option<&str>,
        make: impl FnOnce(&str, &str, &Path) -> anyhow::Result<ContainerConfig>,
    ) -> anyhow::Result<Container> {
        let id = random_hex(32)?;
        let name = match name {
            Some(n) => {
                names::validate(n)?;
                n.to_string()
            }
            None => names::generate(&self.dir.join("names"))?,
        };
        let link = self.dir.join("names").join(&name);
        if let Err(e) = std::os::unix::fs::symlink(&id, &link) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                let other = fs::read_link(&link).unwrap_or_default();
                bail!(
                    "the container name \"/{name}\" is already in use by container \"{}\"; remove (or rename) that container to reuse the name",
                    other.display()
                );
            }
            return Err(e).with_context(|| format!("take the name {name}"));
        }
        let dir = self.dir.join(&id);
        let made = fs::create_dir(&dir)
            .with_context(|| format!("create {}", dir.display()))
            .and_then(|()| make(&id, &name, &dir))
            .and_then(|config| {
                write_atomically(
                    &dir.join("config.json"),
                    &serde_json::to_vec_pretty(&config)?,
                )?;
                Ok(config)
            });
        match made {
            Ok(config) => Ok(Container { dir, config }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                let _ = fs::remove_file(&link);
                Err(e)
            }
        }
    }

    /// Every container (complete ones; a half-made directory has no config yet).
    pub(crate) fn list(&self) -> anyhow::Result<Vec<Container>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).with_context(|| format!("read {}", self.dir.display()))? {
            let e = e?;
            let name = e.file_name();
            if name == "names" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(c) = Container::load(&e.path()) {
                out.push(c);
            }
        }
        out.sort_by(|a, b| b.config.created.cmp(&a.config.created));
        Ok(out)
    }

    /// A container by name, full ID or unique ID prefix.
    pub(crate) fn find(&self, what: &str) -> anyhow::Result<Container> {
        let by_name = self.dir.join("names").join(what.trim_start_matches('/'));
        if let Ok(id) = fs::read_link(&by_name)
            && let Ok(c) = Container::load(&self.dir.join(id))
        {
            return Ok(c);
        }
        if !what.is_empty() && what.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<Container> = self
                .list()?
                .into_iter()
                .filter(|c| c.config.id.starts_with(what))
                .collect();
            match matches.len() {
                1 => return Ok(matches.into_iter().next().expect("one match")),
                0 => {}
                _ => bail!("multiple containers match the ID prefix {what}"),
            }
        }
        bail!("no such container: {what}")
    }
}

impl Container {
    fn load(dir: &Path) -> anyhow::Result<Container> {
        let p = dir.join("config.json");
        let bytes = fs::read(&p).with_context(|| format!("read {}", p.display()))?;
        let config =
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", p.display()))?;
        Ok(Container {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// The root filesystem the sandbox mounts.
    pub(crate) fn rootfs(&self) -> RootFs {
        if self.config.direct {
            RootFs {
                direct: true,
                lower: self.config.lower.clone(),
                upper: self.dir.join("root"),
                work: self.dir.join("work"),
                throwaway: self.config.auto_remove,
            }
        } else {
            RootFs {
                direct: false,
                lower: self.config.lower.clone(),
                upper: self.dir.join("upper"),
                work: self.dir.join("work"),
                throwaway: self.config.auto_remove,
            }
        }
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// How it ended, once it has.
    pub(crate) fn exit_record(&self) -> Option<ExitRecord> {
        let bytes = fs::read(self.dir.join("exit.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(crate) fn started(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("started")).ok()
    }

    /// Whether its monitor process still runs.
    fn monitor_alive(&self) -> bool {
        let Ok(text) = fs::read_to_string(self.dir.join("monitor")) else {
            return false;
        };
        let mut it = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            it.next().and_then(|p| p.parse::<i32>().ok()),
            it.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            return false;
        };
        process_start_time(pid) == Some(start)
    }

    /// The host PIDs of its first process and of the sandbox helper above it, while it runs.
    fn pids(&self) -> Option<(i32, Option<i32>)> {
        let text = fs::read_to_string(self.pid_path()).ok()?;
        let mut it = text.split_whitespace().map(|p| p.parse::<i32>().ok());
        Some((it.next()??, it.next().flatten()))
    }

    /// The host PID of its first process, while it runs.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.pids().map(|(p, _)| p)
    }

    /// Sends `sig` to the container: through its sandbox helper, which forwards it (it runs as
    /// the caller, so this works whatever user the container's process runs as, and from any
    /// user namespace); `SIGKILL` to the helper takes the container down with it.
    /// (For a microVM, see below.)
    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        let (first, helper) = self.pids().context("the container is not running")?;
        // In a microVM, `first` is qemu: SIGKILL ends the VM at once; other signals go to the
        // process running the VM, which passes them to the guest's process. The builtin VMM
        // runs in that process (`first` is the helper): it is asked to end the VM instead.
        let target = match helper {
            Some(h)
                if self.config.vm.is_some()
                    && sig == nix::sys::signal::Signal::SIGKILL
                    && h == first =>
            {
                return vm_sandbox::vm::kill_vm_in(first)
                    .with_context(|| format!("signal container {}", self.config.name));
            }
            Some(_) if self.config.vm.is_some() && sig == nix::sys::signal::Signal::SIGKILL => {
                first
            }
            Some(h) => h,
            None => first,
        };
        kill(Pid::from_raw(target), sig)
            .with_context(|| format!("signal container {}", self.config.name))
    }

    pub(crate) fn state(&self) -> State {
        if let Some(rec) = self.exit_record() {
            return State::Exited {
                code: rec.code(),
                finished: rec.finished,
            };
        }
        if self.monitor_alive() {
            return match self.pid() {
                Some(pid) => State::Running { pid },
                None => State::Created,
            };
        }
        if fs::metadata(self.dir.join("monitor")).is_ok() {
            // The monitor was killed without writing how the container ended (and the
            // container died with it): exited, with an unknown code.
            return State::Exited {
                code: 255,
                finished: String::new(),
            };
        }
        State::Created
    }

    /// Writes how it ended (the monitor does, once).
    pub(crate) fn record_exit(&self, rec: &ExitRecord) -> anyhow::Result<()> {
        write_atomically(&self.dir.join("exit.json"), &serde_json::to_vec(rec)?)?;
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }

    /// Deletes the container: its name, then its directory.
    pub(crate) fn remove(&self, containers: &Containers) -> anyhow::Result<()> {
        let link = containers.dir.join("names").join(&self.config.name);
        if fs::read_link(&link).is_ok_and(|id| id.as_os_str() == self.config.id.as_str()) {
            fs::remove_file(&link).with_context(|| format!("remove {}", link.display()))?;
        }
        // Rename first, so a crash halfway leaves no directory that looks like a container.
        let doomed = containers.dir.join(format!(".removing-{}", self.config.id));
        fs::rename(&self.dir, &doomed).with_context(|| format!("remove {}", self.dir.display()))?;
        snapshotter::gc::remove_tree(&doomed)
            .with_context(|| format!("remove {}", doomed.display()))?;
        Ok(())
    }
}

/// The manifest digests of the images containers use, which `rmi` and `prune` keep.
pub(crate) fn images_in_use(root: &Path) -> anyhow::Result<Vec<snapshotter::Digest>> {
    let containers = Containers::open(root)?;
    Ok(containers
        .list()?
        .into_iter()
        .filter_map(|c| c.config.manifest.parse().ok())
        .collect())
}

/// A container's microVM settings, as recorded.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct VmSettings {
    pub(crate) vmm: String,
    pub(crate) kernel: Option<PathBuf>,
    pub(crate) timeout_secs: Option<u64>,
    pub(crate) memory_mib: u32,
}

impl From<&vm_sandbox::VmOptions> for VmSettings {
    fn from(o: &vm_sandbox::VmOptions) -> Self {
        VmSettings {
            vmm: match o.vmm {
                vm_sandbox::Vmm::Auto => "auto",
                vm_sandbox::Vmm::Builtin => "builtin",
                vm_sandbox::Vmm::Qemu => "qemu",
            }
            .into(),
            kernel: o.kernel.clone(),
            timeout_secs: o.timeout.map(|t| t.as_secs()),
            memory_mib: o.memory_mib,
        }
    }
}

impl VmSettings {
    pub(crate) fn options(&self) -> vm_sandbox::VmOptions {
        vm_sandbox::VmOptions {
            vmm: self.vmm.parse().unwrap_or_default(),
            kernel: self.kernel.clone(),
            timeout: self.timeout_secs.map(std::time::Duration::from_secs),
            memory_mib: self.memory_mib,
        }
    }
}
