//! `RUN --mount`: what each mount type becomes in the sandbox, what it adds to the step's
//! cache key, and the mount points to tidy out of the layer afterwards.
//!
//! - `bind`: a context path (after `.dockerignore`), or a path of an earlier stage or image
//!   (`from=`), read-only unless `rw` (writes are then thrown away). Its content is part of
//!   the cache key.
//! - `cache`: a directory kept under the store root between builds, keyed by `id` (default:
//!   the target), created with `mode`/`uid`/`gid`; `sharing=locked` holds a lock for the run.
//! - `tmpfs`: a fresh tmpfs (`size`).
//! - `secret`: a file from `--secret id=...` at `/run/secrets/ID` (or `target`), mode 0400,
//!   or an environment variable (`env=`); never in the cache key or a layer.
//! - `ssh`: the agent socket from `--ssh ID=SOCKET` at `/run/buildkit/ssh_agent.N`, with
//!   `SSH_AUTH_SOCK` pointing at it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use parser::flags::{Mount, MountKind, Sharing};
use vm_sandbox::{SandboxMount, SandboxMountKind};

use crate::build::{BuildRequest, Builder, Earlier, SecretSource};
use crate::copy::{CopyAttrs, copy_into};

/// The sandbox side of a RUN's mounts, and what must live as long as the run.
pub(crate) struct PreparedMounts {
    pub(crate) mounts: Vec<SandboxMount>,
    /// Extra environment (`SSH_AUTH_SOCK`, secrets with `env=`).
    pub(crate) env: Vec<String>,
    /// What the mounts contribute to the cache key.
    pub(crate) key: Vec<String>,
    /// Mount targets, to remove from the layer when the run created them.
    pub(crate) targets: Vec<String>,
    _scratch: tempfile::TempDir,
    _locks: Vec<nix::fcntl::Flock<fs::File>>,
}

fn abs_target(target: &str, workdir: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("{}/{target}", workdir.trim_end_matches('/'))
    }
}

impl Builder<'_> {
    /// Prepares `mounts` of a RUN in a stage whose working directory is `workdir`.
    pub(crate) fn prepare_mounts(
        &self,
        mounts: &[Mount],
        workdir: &str,
        req: &BuildRequest,
        earlier: &Earlier<'_>,
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<PreparedMounts, String> {
        let scratch = tempfile::Builder::new()
            .prefix("kiln-mounts-")
            .tempdir()
            .map_err(|e| format!("create a scratch directory: {e}"))?;
        let mut out = PreparedMounts {
            mounts: Vec::new(),
            env: Vec::new(),
            key: Vec::new(),
            targets: Vec::new(),
            _scratch: scratch,
            _locks: Vec::new(),
        };
        let mut ssh_n = 0;
        for (i, m) in mounts.iter().enumerate() {
            let x = |v: &Option<String>| v.as_deref().map(expand).transpose();
            let target = x(&m.target)?;
            let source = x(&m.source)?;
            let from = x(&m.from)?;
            let id = x(&m.id)?;
            let scratch = out._scratch.path().join(i.to_string());
            match m.kind {
                MountKind::Bind => {
                    let target = abs_target(&target.ok_or("bind mount needs a target")?, workdir);
                    let src = source.unwrap_or_else(|| "/".into());
                    let host = match &from {
                        None => {
                            let path = crate::copy::scoped_path(&req.context, &src)?;
                            if fs::symlink_metadata(&path).is_err() {
                                return Err(format!(
                                    "mount source \"{src}\" not found in the build context"
                                ));
                            }
                            let mut files = BTreeMap::new();
                            let ignored = |p: &Path, is_dir: bool| {
                                let Some(mt) = &req.ignore else { return false };
                                let r = p
                                    .strip_prefix(&req.context)
                                    .unwrap_or(p)
                                    .to_string_lossy()
                                    .into_owned();
                                mt.matches(&r) && !(is_dir && mt.may_reinclude_below(&r))
                            };
                            if let Some(c) = self.cache {
                                c.lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .hash_source(&req.context, &path, &mut files, &ignored)
                                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                            }
                            out.key.push(format!(
                                "bind:{src}->{target}:rw={}:{files:?}",
                                m.read_write
                            ));
                            if req.ignore.is_none() && !m.read_write {
                                path
                            } else {
                                // A filtered (or throwaway writable) copy.
                                fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
                                copy_into(
                                    &crate::copy::Dest::bare(&scratch),
                                    &path,
                                    "/src",
                                    CopyAttrs::default(),
                                    &ignored,
                                )?;
                                scratch.join("src")
                            }
                        }
                        Some(f) => {
                            let (layers, top) = self
                                .layers_of(f, earlier)
                                .map_err(|e| format!("mount from={f}: {e}"))?;
                            out.key.push(format!(
                                "bind:{f}@{top}:{src}->{target}:rw={}",
                                m.read_write
                            ));
                            let bottom_first: Vec<PathBuf> = layers.into_iter().rev().collect();
                            let root = scratch.join("root");
                            fs::create_dir_all(&root).map_err(|e| e.to_string())?;
                            snapshotter::copyfs::materialize(&bottom_first, &root)
                                .map_err(|e| e.to_string())?;
                            let p = crate::copy::scoped_path(&root, &src)?;
                            if fs::symlink_metadata(&p).is_err() {
                                return Err(format!("mount source \"{src}\" not found in {f}"));
                            }
                            p
                        }
                    };
                    out.targets.push(target.clone());
                    out.mounts.push(SandboxMount {
                        target,
                        kind: SandboxMountKind::Bind {
                            source: host,
                            writable: m.read_write,
                        },
                    });
                }
                MountKind::Cache => {
                    let target = abs_target(&target.ok_or("cache mount needs a target")?, workdir);
                    let key = id.clone().unwrap_or_else(|| target.clone());
                    let dir = self.snapshots.cache_mount_dir(&key);
                    if !dir.exists() {
                        let tmp = dir.with_extension("new");
                        let _ = fs::remove_dir_all(&tmp);
                        fs::create_dir_all(&tmp)
                            .map_err(|e| format!("create cache mount {key}: {e}"))?;
                        fs::set_permissions(
                            &tmp,
                            fs::Permissions::from_mode(m.mode.unwrap_or(0o755)),
                        )
                        .map_err(|e| e.to_string())?;
                        if nix::unistd::geteuid().is_root() {
                            std::os::unix::fs::chown(
                                &tmp,
                                Some(m.uid.unwrap_or(0)),
                                Some(m.gid.unwrap_or(0)),
                            )
                            .map_err(|e| e.to_string())?;
                        }
                        fs::rename(&tmp, &dir)
                            .map_err(|e| format!("create cache mount {key}: {e}"))?;
                    }
                    if m.sharing == Sharing::Locked {
                        let lock = fs::File::create(dir.with_extension("lock"))
                            .map_err(|e| e.to_string())?;
                        let held =
                            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                                .map_err(|(_, e)| format!("lock cache mount {key}: {e}"))?;
                        out._locks.push(held);
                    }
                    out.key.push(format!("cache:{target}"));
                    out.targets.push(target.clone());
                    out.mounts.push(SandboxMount {
                        target,
                        kind: SandboxMountKind::Bind {
                            source: dir,
                            writable: true,
                        },
                    });
                }
                MountKind::Tmpfs => {
                    let target = abs_target(&target.ok_or("tmpfs mount needs a target")?, workdir);
                    out.key.push(format!("tmpfs:{target}"));
                    out.targets.push(target.clone());
                    out.mounts.push(SandboxMount {
                        target,
                        kind: SandboxMountKind::Tmpfs { size: m.size },
                    });
                }
                MountKind::Secret => {
                    let name = id
                        .clone()
                        .or_else(|| {
                            target
                                .as_deref()
                                .and_then(|t| t.rsplit('/').next())
                                .map(str::to_string)
                        })
                        .ok_or("secret mount needs an id or a target")?;
                    let Some((_, src)) = req.secrets.iter().find(|(sid, _)| *sid == name) else {
                        if m.required {
                            return Err(format!(
                                "secret {name} is required but was not given (kiln build --secret id={name},src=FILE)"
                            ));
                        }
                        continue;
                    };
                    let value = match src {
                        SecretSource::File(p) => fs::read(p)
                            .map_err(|e| format!("secret {name}: read {}: {e}", p.display()))?,
                        SecretSource::Env(v) => std::env::var(v)
                            .map_err(|_| {
                                format!("secret {name}: environment variable {v} is not set")
                            })?
                            .into_bytes(),
                    };
                    if let Some(var) = &m.env {
                        out.env
                            .push(format!("{var}={}", String::from_utf8_lossy(&value)));
                        if target.is_none() {
                            continue;
                        }
                    }
                    let target = abs_target(
                        &target.unwrap_or_else(|| format!("/run/secrets/{name}")),
                        workdir,
                    );
                    fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
                    let file = scratch.join("secret");
                    fs::write(&file, &value).map_err(|e| e.to_string())?;
                    fs::set_permissions(&file, fs::Permissions::from_mode(m.mode.unwrap_or(0o400)))
                        .map_err(|e| e.to_string())?;
                    if nix::unistd::geteuid().is_root() {
                        std::os::unix::fs::chown(
                            &file,
                            Some(m.uid.unwrap_or(0)),
                            Some(m.gid.unwrap_or(0)),
                        )
                        .map_err(|e| e.to_string())?;
                    }
                    out.targets.push(target.clone());
                    out.mounts.push(SandboxMount {
                        target,
                        kind: SandboxMountKind::Bind {
                            source: file,
                            writable: false,
                        },
                    });
                }
                MountKind::Ssh => {
                    let name = id.clone().unwrap_or_else(|| "default".into());
                    let Some((_, socket)) = req.ssh.iter().find(|(sid, _)| *sid == name) else {
                        if m.required {
                            return Err(format!(
                                "ssh agent {name} is required but was not given (kiln build --ssh {name}=SOCKET)"
                            ));
                        }
                        continue;
                    };
                    let target = abs_target(
                        &target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_n}")),
                        workdir,
                    );
                    ssh_n += 1;
                    out.env.push(format!("SSH_AUTH_SOCK={target}"));
                    out.targets.push(target.clone());
                    out.mounts.push(SandboxMount {
                        target,
                        kind: SandboxMountKind::Bind {
                            source: socket.clone(),
                            writable: true,
                        },
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Removes from `upper` the mount points a run left behind: a target (and its parents up
/// to what the lower layers already had) that is empty in `upper` and absent below.
pub(crate) fn remove_mount_stubs(upper: &Path, lower_top_first: &[PathBuf], targets: &[String]) {
    for t in targets {
        let rel = PathBuf::from(t.trim_start_matches('/'));
        let mut cur = Some(rel.as_path());
        while let Some(r) = cur {
            if r.as_os_str().is_empty()
                || snapshotter::copyfs::merged_lookup(lower_top_first, r).is_some()
            {
                break;
            }
            let p = upper.join(r);
            let Ok(md) = fs::symlink_metadata(&p) else {
                break;
            };
            let removed = if md.is_dir() {
                fs::remove_dir(&p).is_ok()
            } else {
                md.is_file() && md.len() == 0 && fs::remove_file(&p).is_ok()
            };
            if !removed {
                break;
            }
            cur = r.parent();
        }
    }
}
