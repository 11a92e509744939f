//! Test support for kiln's end-to-end tests.
//!
//! # Brief overview
//!
//! - [`TestContext`]: one per test: its own store root and scratch directory, a command
//!   builder for the `kiln` binary ([`TestContext::kiln`]), a ready busybox base image
//!   ([`TestContext::base_image`]) and the address of the running registry
//!   ([`TestContext::registry`]).
//! - [`Output`] helpers that assert on exit status and print both streams on failure.
//! - [`require`]: skips a test whose host capability is missing, printing why; under
//!   `CI=true` a missing capability fails the test instead.

pub mod docker;
pub mod http_server;
pub mod nested;
pub mod proxy;
pub mod vm;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The name every test's base image gets.
pub const BASE_IMAGE: &str = "busybox:latest";

/// The workspace's top directory.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `kiln` binary under test (built by cargo for this test run).
pub fn kiln_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KILN_BIN") {
            return PathBuf::from(p);
        }
        let dir = workspace_dir();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("target"));
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "cli", "--bin", "kiln"])
            .args(if profile == "release" {
                &["--release"][..]
            } else {
                &[][..]
            })
            .current_dir(&dir)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of kiln failed");
        target.join(profile).join("kiln")
    })
    .clone()
}

/// True when running in CI, where missing capabilities are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` if the capability is present. Otherwise prints why the test is skipped and
/// returns `false`, or panics under `CI=true`.
pub fn require(capability: &str, present: bool, why: &str) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "CI=true but {capability} is missing: {why}");
    eprintln!("skipped: {capability} is missing: {why}");
    false
}

/// Whether builds can run their RUN steps here: these tests build as root (a printed skip
/// otherwise, a failure under `CI=true`).
pub fn builds_as_root() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    require("container sandbox", root, "these tests build as root")
}

/// Whether a program is on PATH.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// An uncompressed busybox rootfs tarball, made once per test process by
/// `testdata/make-busybox-rootfs.sh` from Debian's busybox-static.
pub fn busybox_rootfs_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-test-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("busybox.tar");
        let script = workspace_dir().join("testdata/make-busybox-rootfs.sh");
        let o = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .output()
            .expect("run make-busybox-rootfs.sh");
        assert!(
            o.status.success(),
            "make-busybox-rootfs.sh failed (is busybox-static installed?): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
    .clone()
}

/// The result of running a command, with assertions that show both streams on failure.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "command should have failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }

    /// Asserts failure with exactly one line on stderr and returns it.
    #[track_caller]
    pub fn one_error_line(&self) -> &str {
        let err = self.fails();
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        err
    }
}

/// Polls `cond` until it holds; panics naming `what` after 20 seconds.
#[track_caller]
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `kiln` invocation being built.
pub struct KilnCommand {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl KilnCommand {
    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.cmd.args(args);
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Leaves an environment variable out (one the test's own environment may have).
    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }

    /// Feeds these bytes on standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// The command itself, to spawn without waiting (concurrency tests).
    pub fn into_command(self) -> Command {
        self.cmd
    }

    /// Runs it to completion.
    pub fn run(mut self) -> Output {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = self.cmd.spawn().expect("spawn kiln");
        if let Some(bytes) = self.stdin.take() {
            let mut si = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = si.write_all(&bytes);
            });
        }
        let o = child.wait_with_output().expect("wait for kiln");
        Output {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Everything one end-to-end test needs, cleaned up when dropped.
pub struct TestContext {
    dir: tempfile::TempDir,
    /// Runs kiln as this unprivileged user (through `runuser`) instead of the caller.
    user: Option<String>,
}

/// The unprivileged user the rootless tests run kiln as (created when the tests run as root).
pub const TEST_USER: &str = "kilntest";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TestContext {
    /// A fresh store and scratch directory.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir()
            .expect("create temp dir");
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        TestContext { dir, user: None }
    }

    /// A context whose kiln runs as the unprivileged [`TEST_USER`] (rootless mode), created
    /// with its subordinate id ranges if missing; when the tests are not root, kiln runs as
    /// the caller, who is unprivileged already. `None` (after [`require`]) where user
    /// namespaces are off.
    pub fn unprivileged() -> Option<Self> {
        let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .is_ok_and(|v| v.trim() != "0");
        if !require("user namespaces", userns, "user.max_user_namespaces is 0") {
            return None;
        }
        let mut ctx = Self::new();
        if !is_root() {
            return Some(ctx);
        }
        let exists = Command::new("id")
            .arg(TEST_USER)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let made = Command::new("useradd")
                .args(["-m", TEST_USER])
                .status()
                .is_ok_and(|s| s.success());
            if !require("useradd", made, "cannot create the unprivileged test user") {
                return None;
            }
        }
        let chowned = Command::new("chown")
            .args(["-R", TEST_USER])
            .arg(ctx.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(chowned, "chown the test directory to {TEST_USER}");
        ctx.user = Some(TEST_USER.to_string());
        Some(ctx)
    }

    /// Whether kiln runs unprivileged here.
    pub fn rootless(&self) -> bool {
        self.user.is_some() || !is_root()
    }

    /// Whether kiln has every user of an image: as root, or rootless with subordinate id
    /// ranges in `/etc/subuid` and `/etc/subgid` (which `useradd` grants) and `newuidmap`.
    pub fn maps_all_users(&self) -> bool {
        if !self.rootless() {
            return true;
        }
        let name = match &self.user {
            Some(u) => u.clone(),
            None => std::env::var("USER").unwrap_or_default(),
        };
        let granted = |f: &str| {
            std::fs::read_to_string(f)
                .is_ok_and(|t| t.lines().any(|l| l.starts_with(&format!("{name}:"))))
        };
        granted("/etc/subuid") && granted("/etc/subgid") && have_program("newuidmap")
    }

    /// Gives a file or directory the test made to the user kiln runs as.
    pub fn give(&self, path: &Path) {
        if let Some(u) = &self.user {
            let ok = Command::new("chown")
                .args(["-R", u])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {}", path.display());
        }
    }

    /// The test's store root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The Docker config directory `kiln login` writes for this test.
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// A scratch directory for the test's own files.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Runs `kiln` with these arguments to completion.
    pub fn run_kiln(&self, args: &[&str]) -> Output {
        self.kiln().args(args).run()
    }

    /// `kiln --root <this test's store>`, with a clean environment for kiln's variables.
    pub fn kiln(&self) -> KilnCommand {
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(kiln_bin());
                c
            }
            None => Command::new(kiln_bin()),
        };
        cmd.env_remove("KILN_ROOT")
            .env_remove("KILN_LOG_LEVEL")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("KILN_DEFAULT_REGISTRY")
            .env_remove("KILN_ISOLATION")
            .env_remove("KILN_VMM")
            .env_remove("KILN_VM_TIMEOUT")
            .env_remove("KILN_VM_MEMORY")
            .env("DOCKER_CONFIG", self.docker_config());
        cmd.arg("--root").arg(self.root());
        KilnCommand { cmd, stdin: None }
    }

    /// Imports the busybox base as [`BASE_IMAGE`] (with `CMD ["sh"]` and a PATH) and returns
    /// its name.
    pub fn base_image(&self) -> &'static str {
        self.kiln()
            .args(["import", "--change", r#"CMD ["sh"]"#, "--change"])
            .arg("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(busybox_rootfs_tar())
            .arg(BASE_IMAGE)
            .run()
            .ok();
        BASE_IMAGE
    }

    /// The address (`host:port`) of the registry the tests use, from `KILN_TEST_REGISTRY`
    /// (`.ci/run` starts Debian's docker-registry and sets it), after checking that it
    /// answers `/v2/`. `None` (with a printed reason) when there is none outside CI.
    pub fn registry(&self) -> Option<String> {
        let addr = std::env::var("KILN_TEST_REGISTRY").ok();
        let answers = addr.as_deref().is_some_and(registry_answers);
        require(
            "registry",
            answers,
            "set KILN_TEST_REGISTRY to a running registry (.ci/run starts one)",
        )
        .then(|| addr.unwrap())
    }

    /// Opens this test's store in-process, for assertions on its contents.
    pub fn store(&self) -> snapshotter::FsStore {
        snapshotter::FsStore::open(self.root()).expect("open store")
    }

    /// Every file under the store root with its size, sorted: a fingerprint to check that a
    /// failed command changed nothing.
    pub fn store_listing(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        walk(&self.root(), &self.root(), &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let md = e.metadata().unwrap();
        if md.is_dir() {
            walk(base, &p, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            // The lock file's existence is not content.
            if rel != "index.lock" {
                out.push((rel, md.len()));
            }
        }
    }
}

/// Whether `GET http://addr/v2/` gets an HTTP answer of 200 or 401.
pub fn registry_answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && (head.ends_with(b"200") || head.ends_with(b"401"))
}

/// A `docker-registry` of a test's own (for configurations the shared one lacks, such as
/// htpasswd auth), on a free loopback port; stopped when dropped.
pub struct RegistryServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl RegistryServer {
    /// Starts one; `auth_yaml` is an `auth:` section (indented by two spaces) or empty.
    /// `None` (with a printed reason) when `docker-registry` is not installed, outside CI.
    pub fn start(auth_yaml: &str) -> Option<RegistryServer> {
        if !require(
            "docker-registry",
            have_program("docker-registry"),
            "apt-get install docker-registry",
        ) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: kiln-test-throwaway\n{auth_yaml}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let server = RegistryServer {
            addr,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if registry_answers(&server.addr) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry did not start on {}", server.addr);
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an htpasswd file (bcrypt, the only format the registry takes) with one user.
pub fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let hash = bcrypt::hash(password, 5).expect("bcrypt");
    std::fs::write(path, format!("{user}:{hash}\n")).unwrap();
}
