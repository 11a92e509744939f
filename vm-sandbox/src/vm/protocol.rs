//! The wire format between kiln and its guest init, shared by both sides (the guest init
//! includes this file): the step's spec goes in as a file in the initramfs, and everything
//! comes back as frames, one per line, on the guest's serial console.
//!
//! A spec is a list of records `KEY LEN\nBYTES\n`, so values may hold any byte. A frame is a
//! line `FRAME_MARK KIND HEX\n`; lines without the mark are the guest kernel's own messages
//! (a panic, say), which the host keeps for its error messages. Frames go the other way too,
//! on the console's input, once the guest has said it is [`Frame::Ready`] for them (its
//! terminal set raw, so nothing is echoed or cut at line length): the container's standard
//! input and its end, and signals for the step's process.

/// Where the spec is in the initramfs.
pub const SPEC_PATH: &str = "/kiln/spec";

/// Where the extended attributes of the packed root's files are in the initramfs (newc cpio
/// has no field for them): records `x` of `PATH\0NAME\0VALUE`, paths as in the archive.
pub const XATTRS_PATH: &str = "/kiln/xattrs";

/// One file's extended attribute: path in the initramfs, name, value.
pub type Xattr = (Vec<u8>, String, Vec<u8>);

/// The [`XATTRS_PATH`] file's bytes.
pub fn encode_xattrs(xattrs: &[Xattr]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, name, value) in xattrs {
        let mut v = path.clone();
        v.push(0);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.extend_from_slice(value);
        record(&mut out, "x", &v);
    }
    out
}

/// Reads an [`XATTRS_PATH`] file.
pub fn decode_xattrs(data: &[u8]) -> Result<Vec<Xattr>, String> {
    let mut out = Vec::new();
    for (key, v) in records(data)? {
        if key != "x" {
            return Err(format!("xattrs: unknown record {key:?}"));
        }
        let mut parts = v.splitn(3, |b| *b == 0);
        let (Some(path), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("xattrs: bad record".into());
        };
        let name = String::from_utf8(name.to_vec()).map_err(|_| "xattrs: name is not UTF-8")?;
        out.push((path.to_vec(), name, value.to_vec()));
    }
    Ok(out)
}

/// What starts a frame line: an escape byte and a tag no kernel message begins with.
pub const FRAME_MARK: &[u8] = b"\x1b[kiln:";

/// The capabilities a step keeps, by number: the container backend's default set
/// (`container::confine::DEFAULT_CAPABILITIES`, checked by a test), so that a step can do in
/// the guest what it can in a container, and no more. The guest init cuts the bounding set
/// to these before it runs the step.
pub const STEP_CAPABILITIES: [u8; 12] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31];

/// The I/O port of qemu's `isa-debug-exit` device: a byte written there stops the VM at once.
pub const EXIT_PORT: u16 = 0xf4;

/// The run as the guest init needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory (created if missing).
    pub cwd: String,
    /// `user[:group]`, resolved in the root's /etc/passwd and /etc/group.
    pub user: String,
    /// Hostname.
    pub hostname: String,
    /// Kernel modules to load, in order (paths in the initramfs).
    pub modules: Vec<String>,
    /// `/etc/hosts`, `resolv.conf`, `hostname`: name and content, bound over the image's.
    pub etc_files: Vec<(String, Vec<u8>)>,
    /// Files under `/dev/pipes/` (heredoc scripts): name and content.
    pub inline_files: Vec<(String, Vec<u8>)>,
    /// Extra mounts.
    pub mounts: Vec<GuestMount>,
    /// The root is read-only.
    pub read_only: bool,
    /// Standard input comes from the host ([`Frame::Stdin`]); otherwise it is `/dev/null`.
    pub interactive: bool,
    /// The step gets a pseudo-terminal of this size (rows, columns; 0 0 when unknown) for
    /// its standard streams (`kiln run -t`).
    pub tty: Option<(u16, u16)>,
    /// The host's clock when the run was prepared (seconds and nanoseconds since the
    /// epoch): the guest's clock is set to it if it is behind (the builtin VMM's machine has
    /// no real-time clock, and files the step writes carry its time).
    pub clock: Option<(u64, u32)>,
    /// The root is on the disk `kiln-root` (an ext4 image whose `root/` it is), not in the
    /// initramfs's `/lower`.
    pub root_disk: bool,
    /// The disks that are persistent-memory ranges (the builtin VMM's), in their order:
    /// `/dev/pmem0` is the first.
    pub pmem: Vec<String>,
}

/// A mount in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestMount {
    /// A tmpfs at `target`, with an optional size in bytes.
    Tmpfs {
        /// Path in the root.
        target: String,
        /// Size limit.
        size: Option<u64>,
    },
    /// A copy of a host file or directory, carried in the initramfs at `source`, bound at
    /// `target`; a writable one's contents go back to the host afterwards.
    Copy {
        /// Path in the root.
        target: String,
        /// Path in the initramfs.
        source: String,
        /// Writes allowed (and returned).
        writable: bool,
    },
}

fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(format!("{key} {}\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits `data` into its records.
fn records(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let nl = data
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("spec: record header without a newline")?;
        let head = std::str::from_utf8(&data[..nl]).map_err(|_| "spec: header is not UTF-8")?;
        let (key, len) = head
            .split_once(' ')
            .ok_or("spec: header without a length")?;
        let len: usize = len.parse().map_err(|_| "spec: bad length")?;
        let rest = &data[nl + 1..];
        if rest.len() < len + 1 || rest[len] != b'\n' {
            return Err("spec: truncated record".into());
        }
        out.push((key.to_string(), rest[..len].to_vec()));
        data = &rest[len + 1..];
    }
    Ok(out)
}

/// `"A B"` as two numbers.
fn two_numbers(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once(' ')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn text(v: Vec<u8>) -> Result<String, String> {
    String::from_utf8(v).map_err(|_| "spec: a value is not UTF-8".to_string())
}

impl GuestSpec {
    /// The spec file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for a in &self.argv {
            record(&mut out, "arg", a.as_bytes());
        }
        for e in &self.env {
            record(&mut out, "env", e.as_bytes());
        }
        record(&mut out, "cwd", self.cwd.as_bytes());
        record(&mut out, "user", self.user.as_bytes());
        record(&mut out, "hostname", self.hostname.as_bytes());
        for m in &self.modules {
            record(&mut out, "module", m.as_bytes());
        }
        for (name, body) in &self.etc_files {
            record(&mut out, &format!("etc:{name}"), body);
        }
        for (name, body) in &self.inline_files {
            record(&mut out, &format!("inline:{name}"), body);
        }
        for m in &self.mounts {
            match m {
                GuestMount::Tmpfs { target, size } => {
                    let size = size.map(|s| s.to_string()).unwrap_or_default();
                    record(&mut out, "tmpfs", format!("{target}\0{size}").as_bytes());
                }
                GuestMount::Copy {
                    target,
                    source,
                    writable,
                } => {
                    let mode = if *writable { "rw" } else { "ro" };
                    record(
                        &mut out,
                        "copy",
                        format!("{target}\0{source}\0{mode}").as_bytes(),
                    );
                }
            }
        }
        if self.read_only {
            record(&mut out, "read-only", b"1");
        }
        if self.interactive {
            record(&mut out, "stdin", b"1");
        }
        if let Some((rows, cols)) = self.tty {
            record(&mut out, "tty", format!("{rows} {cols}").as_bytes());
        }
        if let Some((secs, nanos)) = self.clock {
            record(&mut out, "clock", format!("{secs} {nanos}").as_bytes());
        }
        if self.root_disk {
            record(&mut out, "root-disk", b"1");
        }
        for name in &self.pmem {
            record(&mut out, "pmem", name.as_bytes());
        }
        out
    }

    /// Reads a spec file's bytes.
    pub fn decode(data: &[u8]) -> Result<GuestSpec, String> {
        let mut spec = GuestSpec::default();
        for (key, value) in records(data)? {
            match key.as_str() {
                "arg" => spec.argv.push(text(value)?),
                "env" => spec.env.push(text(value)?),
                "cwd" => spec.cwd = text(value)?,
                "user" => spec.user = text(value)?,
                "hostname" => spec.hostname = text(value)?,
                "module" => spec.modules.push(text(value)?),
                "read-only" => spec.read_only = value == b"1",
                "stdin" => spec.interactive = value == b"1",
                "root-disk" => spec.root_disk = value == b"1",
                "pmem" => spec.pmem.push(text(value)?),
                "tty" => spec.tty = Some(two_numbers(&text(value)?).ok_or("spec: bad tty size")?),
                "clock" => {
                    let v = text(value)?;
                    let parsed = v
                        .split_once(' ')
                        .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)));
                    spec.clock = Some(parsed.ok_or("spec: bad clock")?);
                }
                "tmpfs" | "copy" => {
                    let v = text(value)?;
                    let (target, rest) = v.split_once('\0').ok_or("spec: bad mount")?;
                    let target = target.to_string();
                    spec.mounts.push(if key == "tmpfs" {
                        let size = match rest {
                            "" => None,
                            s => Some(s.parse().map_err(|_| "spec: bad tmpfs size")?),
                        };
                        GuestMount::Tmpfs { target, size }
                    } else {
                        let (source, mode) = rest.split_once('\0').ok_or("spec: bad mount")?;
                        GuestMount::Copy {
                            target,
                            source: source.to_string(),
                            writable: mode == "rw",
                        }
                    });
                }
                other => {
                    if let Some(name) = other.strip_prefix("etc:") {
                        spec.etc_files.push((name.to_string(), value));
                    } else if let Some(name) = other.strip_prefix("inline:") {
                        spec.inline_files.push((name.to_string(), value));
                    } else {
                        return Err(format!("spec: unknown record {other:?}"));
                    }
                }
            }
        }
        Ok(spec)
    }
}

/// One message from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Bytes the step wrote to standard output.
    Stdout(Vec<u8>),
    /// Bytes the step wrote to standard error.
    Stderr(Vec<u8>),
    /// The step exited with this code.
    Exited(i32),
    /// A signal killed the step; `oom` when the kernel's OOM killer did it.
    Killed {
        /// The signal.
        signal: i32,
        /// The OOM killer sent it.
        oom: bool,
    },
    /// The guest could not set the step up or start it.
    Failed(String),
    /// The changed files are on the output device: a tar of this many bytes.
    Output(u64),
    /// The writable mounts' contents are on the mounts device: a tar of this many bytes,
    /// mount `N` under `N/`.
    Mounts(u64),
    /// The guest reads frames from the host now.
    Ready,
    /// From the host: bytes for the step's standard input.
    Stdin(Vec<u8>),
    /// From the host: the step's standard input has ended.
    StdinEnd,
    /// From the host: send this signal to the step's process.
    Signal(i32),
    /// From the host: the caller's terminal is now this many rows and columns.
    WindowSize(u16, u16),
    /// The step's standard input took this many more bytes (the host's window to send more).
    StdinTaken(u64),
}

const CHUNK: usize = 2048;

/// The largest payload one output frame carries; longer writes become several frames.
pub const MAX_CHUNK: usize = CHUNK;

fn hex(data: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in data {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

fn unhex(data: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if !data.len().is_multiple_of(2) {
        return None;
    }
    data.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

impl Frame {
    /// The frame's line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Stdout(d) => (b'o', d.clone()),
            Frame::Stderr(d) => (b'e', d.clone()),
            Frame::Exited(c) => (b'x', c.to_string().into_bytes()),
            Frame::Killed { signal, oom } => (b'k', format!("{signal} {oom}").into_bytes()),
            Frame::Failed(m) => (b'f', m.clone().into_bytes()),
            Frame::Output(n) => (b'd', n.to_string().into_bytes()),
            Frame::Mounts(n) => (b'm', n.to_string().into_bytes()),
            Frame::Ready => (b'r', Vec::new()),
            Frame::Stdin(d) => (b'i', d.clone()),
            Frame::StdinEnd => (b'z', Vec::new()),
            Frame::Signal(s) => (b's', s.to_string().into_bytes()),
            Frame::WindowSize(r, c) => (b'w', format!("{r} {c}").into_bytes()),
            Frame::StdinTaken(n) => (b't', n.to_string().into_bytes()),
        };
        let mut out = FRAME_MARK.to_vec();
        out.push(kind);
        out.push(b' ');
        hex(&payload, &mut out);
        out.push(b'\n');
        out
    }

    /// Reads one line (without its newline; a trailing `\r` is ignored). `None`: not a frame.
    pub fn decode(line: &[u8]) -> Option<Frame> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let pos = line
            .windows(FRAME_MARK.len())
            .position(|w| w == FRAME_MARK)?;
        let rest = &line[pos + FRAME_MARK.len()..];
        let (&kind, rest) = rest.split_first()?;
        let payload = unhex(rest.strip_prefix(b" ")?)?;
        let text = || String::from_utf8(payload.clone()).ok();
        Some(match kind {
            b'o' => Frame::Stdout(payload),
            b'e' => Frame::Stderr(payload),
            b'x' => Frame::Exited(text()?.parse().ok()?),
            b'k' => {
                let t = text()?;
                let (s, oom) = t.split_once(' ')?;
                Frame::Killed {
                    signal: s.parse().ok()?,
                    oom: oom == "true",
                }
            }
            b'f' => Frame::Failed(text()?),
            b'd' => Frame::Output(text()?.parse().ok()?),
            b'm' => Frame::Mounts(text()?.parse().ok()?),
            b'r' => Frame::Ready,
            b'i' => Frame::Stdin(payload),
            b'z' => Frame::StdinEnd,
            b's' => Frame::Signal(text()?.parse().ok()?),
            b't' => Frame::StdinTaken(text()?.parse().ok()?),
            b'w' => {
                let (r, c) = two_numbers(&text()?)?;
                Frame::WindowSize(r, c)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_with_any_bytes() {
        let spec = GuestSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo 'a\nb' 12 3\n".into()],
            env: vec!["A=1 2".into(), "EMPTY=".into()],
            cwd: "/app dir".into(),
            user: "1000:users".into(),
            hostname: "h".into(),
            modules: vec!["/kiln/modules/00-virtio.ko".into()],
            etc_files: vec![("hosts".into(), b"127.0.0.1 localhost\n".to_vec())],
            inline_files: vec![("script".into(), b"#!/bin/sh\n\0\xff".to_vec())],
            mounts: vec![
                GuestMount::Tmpfs {
                    target: "/tmp".into(),
                    size: Some(1 << 20),
                },
                GuestMount::Tmpfs {
                    target: "/t2".into(),
                    size: None,
                },
                GuestMount::Copy {
                    target: "/src".into(),
                    source: "/kiln/binds/0".into(),
                    writable: false,
                },
                GuestMount::Copy {
                    target: "/cache".into(),
                    source: "/kiln/rw/1".into(),
                    writable: true,
                },
            ],
            read_only: true,
            interactive: true,
            tty: Some((24, 80)),
            clock: Some((1_700_000_000, 123_456_789)),
            root_disk: true,
            pmem: vec!["kiln-out".into(), "kiln-root".into()],
        };
        assert_eq!(GuestSpec::decode(&spec.encode()).unwrap(), spec);
        assert!(GuestSpec::decode(b"arg 10\nshort\n").is_err());
        assert!(GuestSpec::decode(b"bogus 1\nx\n").is_err());
    }

    #[test]
    fn xattr_lists_round_trip_with_any_bytes() {
        let list: Vec<Xattr> = vec![
            (
                b"lower/bin/ping".to_vec(),
                "security.capability".into(),
                vec![1, 0, 0, 2, 0, 0x20, 0, 0],
            ),
            (
                b"lower/odd\nname".to_vec(),
                "user.note".into(),
                b"a\0b\n".to_vec(),
            ),
            (b"lower/empty".to_vec(), "trusted.x".into(), Vec::new()),
        ];
        assert_eq!(decode_xattrs(&encode_xattrs(&list)).unwrap(), list);
        assert!(decode_xattrs(b"x 3\nabc\n").is_err());
    }

    #[test]
    fn frames_round_trip_and_other_lines_are_not_frames() {
        for f in [
            Frame::Stdout(b"hello\n\x1b[kiln:x 00\n".to_vec()),
            Frame::Stderr(vec![0, 255, 10]),
            Frame::Exited(-3),
            Frame::Killed {
                signal: 9,
                oom: true,
            },
            Frame::Failed("exec: \"x\": not found".into()),
            Frame::Output(1 << 40),
            Frame::Mounts(7),
            Frame::Ready,
            Frame::Stdin(b"line\n\x04".to_vec()),
            Frame::StdinEnd,
            Frame::Signal(15),
            Frame::WindowSize(50, 132),
            Frame::StdinTaken(1024),
        ] {
            let line = f.encode();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(Frame::decode(&line[..line.len() - 1]), Some(f.clone()));
            let mut crlf = line[..line.len() - 1].to_vec();
            crlf.push(b'\r');
            assert_eq!(Frame::decode(&crlf), Some(f));
        }
        assert_eq!(Frame::decode(b"[    1.2] Kernel panic - not syncing"), None);
        assert_eq!(Frame::decode(b"\x1b[kiln:o 4"), None);
        assert_eq!(Frame::decode(b"\x1b[kiln:q 00"), None);
    }
}
