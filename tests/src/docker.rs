//! A private `dockerd` (Debian's docker.io 20.10, BuildKit built in) for differential tests:
//! no bridge, no iptables changes, its own data root and socket; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

/// A running private dockerd.
pub struct Dockerd {
    /// Its socket, for `DOCKER_HOST`.
    pub host: String,
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    /// Starts one under `dir` (kept short: the socket path must fit in 108 bytes).
    pub fn start(dir: &Path) -> Result<Dockerd, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let sock = dir.join("d.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--storage-driver",
                "overlay2",
            ])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start dockerd: {e}"))?;
        let d = Dockerd {
            host: format!("unix://{}", sock.display()),
            child,
            dir: dir.to_path_buf(),
        };
        for _ in 0..300 {
            if d.docker(&["version"]).status.success() {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
        Err(format!(
            "dockerd did not come up: {}",
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ))
    }

    /// `/usr/bin/docker ARGS` against this daemon, with BuildKit.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run docker")
    }

    /// A `/usr/bin/docker` command against this daemon, with BuildKit.
    pub fn command(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", self.dir.join("cli"));
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The data root holds overlay mounts until dockerd is gone; unmount what is left.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
    }
}
