//! A writer of `newc` cpio archives, the format the Linux kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (magic `070701` and thirteen 8-digit hex fields),
//! the NUL-terminated name and the data, each padded to 4 bytes; `TRAILER!!!` ends the
//! archive. Hard links share an inode number: the kernel links every later entry of an inode
//! with `nlink >= 2` to the first, so only the first carries the data.

use std::io::{self, Write};

/// The metadata of one entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryMeta {
    /// File type and permission bits, as `st_mode`.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Seconds since the epoch (newc keeps 32 bits).
    pub(crate) mtime: u64,
    /// Device number of a character or block device: (major, minor).
    pub(crate) rdev: (u32, u32),
}

pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFCHR: u32 = 0o020000;

/// Writes a newc archive to `W`.
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }

    /// A fresh inode number, for an entry that later hard links will name.
    pub(crate) fn new_inode(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn header(
        &mut self,
        name: &[u8],
        meta: &EntryMeta,
        ino: u32,
        nlink: u32,
        size: u64,
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::other("a file of 4 GiB or more does not fit an initramfs"))?;
        if name.contains(&0) {
            return Err(io::Error::other("a file name holds a NUL byte"));
        }
        let mtime = u32::try_from(meta.mtime).unwrap_or(u32::MAX);
        let header = format!(
            "070701{ino:08x}{:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            meta.mode,
            meta.uid,
            meta.gid,
            0,
            0,
            meta.rdev.0,
            meta.rdev.1,
            name.len() + 1,
            0
        );
        self.put(header.as_bytes())?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad()
    }

    /// An entry without data: a directory, device or FIFO.
    pub(crate) fn special(&mut self, name: &[u8], meta: &EntryMeta) -> io::Result<()> {
        let ino = self.new_inode();
        let nlink = if meta.mode & 0o170000 == S_IFDIR {
            2
        } else {
            1
        };
        self.header(name, meta, ino, nlink, 0)
    }

    /// A symbolic link to `target`.
    pub(crate) fn symlink(
        &mut self,
        name: &[u8],
        meta: &EntryMeta,
        target: &[u8],
    ) -> io::Result<()> {
        let ino = self.new_inode();
        self.header(name, meta, ino, 1, target.len() as u64)?;
        self.put(target)?;
        self.pad()
    }

    /// A regular file of `size` bytes read from `data`. `link`: the inode it shares with
    /// other names (from [`CpioWriter::new_inode`]) and whether this is its first name.
    pub(crate) fn file(
        &mut self,
        name: &[u8],
        meta: &EntryMeta,
        size: u64,
        data: impl io::Read,
        link: Option<(u32, bool)>,
    ) -> io::Result<()> {
        let (ino, nlink, carries_data) = match link {
            Some((ino, first)) => (ino, 2, first),
            None => (self.new_inode(), 1, true),
        };
        let size = if carries_data { size } else { 0 };
        self.header(name, meta, ino, nlink, size)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::other("a file shrank while it was packed"));
        }
        self.pad()
    }

    /// Ends the archive; returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let meta = EntryMeta {
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            rdev: (0, 0),
        };
        self.header(b"TRAILER!!!", &meta, 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> EntryMeta {
        EntryMeta {
            mode,
            uid: 1000,
            gid: 100,
            mtime: 1_700_000_000,
            rdev: (0, 0),
        }
    }

    /// GNU cpio (the reference reader) lists and extracts what the writer wrote.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cpio is not installed");
            }
            eprintln!("skipped: cpio is not installed");
            return;
        }
        let mut w = CpioWriter::new(Vec::new());
        w.special(b"d", &meta(S_IFDIR | 0o750)).unwrap();
        let body = b"hello, initramfs\n";
        let ino = w.new_inode();
        w.file(
            b"d/f",
            &meta(S_IFREG | 0o640),
            body.len() as u64,
            &body[..],
            Some((ino, true)),
        )
        .unwrap();
        w.file(
            b"d/g",
            &meta(S_IFREG | 0o640),
            body.len() as u64,
            &body[..],
            Some((ino, false)),
        )
        .unwrap();
        w.symlink(b"d/l", &meta(0o120000 | 0o777), b"f").unwrap();
        w.file(b"odd", &meta(S_IFREG | 0o755), 3, &b"abc"[..], None)
            .unwrap();
        let data = w.finish().unwrap();
        assert_eq!(data.len() % 4, 0);

        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        assert!(child.wait().unwrap().success());
        use std::os::unix::fs::MetadataExt as _;
        let d = dir.path();
        assert_eq!(std::fs::read(d.join("d/f")).unwrap(), body);
        assert_eq!(std::fs::read(d.join("d/g")).unwrap(), body);
        assert_eq!(
            std::fs::metadata(d.join("d/f")).unwrap().ino(),
            std::fs::metadata(d.join("d/g")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(d.join("d/l")).unwrap().to_str(),
            Some("f")
        );
        assert_eq!(std::fs::read(d.join("odd")).unwrap(), b"abc");
        let md = std::fs::metadata(d.join("odd")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755);
        assert_eq!(md.mtime(), 1_700_000_000);
        assert_eq!(
            std::fs::metadata(d.join("d")).unwrap().mode() & 0o7777,
            0o750
        );
    }
}
