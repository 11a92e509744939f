//! Writes the overlay upper directory as an OCI layer tar: whiteouts (0:0 character devices)
//! become `.wh.NAME` entries, opaque directories get a `.wh..wh..opq` entry, hard links are
//! stored once, long names, big ids and extended attributes go in PAX headers.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

const BLOCK: usize = 512;

/// Counts what it writes.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One entry's header fields.
struct Header<'a> {
    path: &'a [u8],
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &'a [u8],
    dev: (u64, u64),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn octal(field: &mut [u8], value: u64) -> bool {
    let digits = format!("{value:o}");
    if digits.len() >= field.len() {
        return false;
    }
    let pad = field.len() - 1 - digits.len();
    field[..pad].fill(b'0');
    field[pad..pad + digits.len()].copy_from_slice(digits.as_bytes());
    field[field.len() - 1] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // The length counts itself: find the number of digits that makes it consistent.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn raw_header(h: &Header, name: &[u8], size: u64, kind: u8) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], u64::from(h.mode & 0o7777));
    octal(&mut b[108..116], h.uid.min(0o7777777));
    octal(&mut b[116..124], h.gid.min(0o7777777));
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], h.mtime.min(0o77777777777));
    b[156] = kind;
    let l = h.link.len().min(100);
    b[157..157 + l].copy_from_slice(&h.link[..l]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], h.dev.0);
    octal(&mut b[337..345], h.dev.1);
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
    octal(&mut b[148..155], u64::from(sum));
    b[155] = b' ';
    b
}

fn write_entry(w: &mut impl Write, h: &Header, data: Option<&Path>) -> io::Result<()> {
    let mut pax = Vec::new();
    if h.path.len() > 100 {
        pax_record(&mut pax, "path", h.path);
    }
    if h.link.len() > 100 {
        pax_record(&mut pax, "linkpath", h.link);
    }
    if h.size > 0o77777777777 {
        pax_record(&mut pax, "size", h.size.to_string().as_bytes());
    }
    for (name, id) in [("uid", h.uid), ("gid", h.gid)] {
        if id > 0o7777777 {
            pax_record(&mut pax, name, id.to_string().as_bytes());
        }
    }
    for (k, v) in &h.xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
    }
    if !pax.is_empty() {
        w.write_all(&raw_header(h, b"././@PaxHeader", pax.len() as u64, b'x'))?;
        write_padded(w, &pax)?;
    }
    w.write_all(&raw_header(h, h.path, h.size, h.kind))?;
    if let Some(p) = data {
        let mut f = fs::File::open(p)?;
        let copied = io::copy(&mut io::Read::take(&mut f, h.size), w)?;
        if copied != h.size {
            return Err(io::Error::other(format!(
                "{} shrank while archived",
                p.display()
            )));
        }
        pad(w, h.size)?;
    }
    Ok(())
}

fn write_padded(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data)?;
    pad(w, data.len() as u64)
}

fn pad(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (len % BLOCK as u64) as usize;
    if rem != 0 {
        w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

fn layer_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = crate::sys::list_xattrs(path)
        .into_iter()
        .filter(|n| !n.starts_with("trusted.overlay.") && !n.starts_with("user.overlay."))
        .filter_map(|n| crate::sys::get_xattr(path, &n).map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

struct Walker<W> {
    out: W,
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walker<W> {
    fn dir(&mut self, dir: &Path, rel: &[u8]) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            self.entry(&path, &r)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &[u8]) -> io::Result<()> {
        let md = fs::symlink_metadata(path)?;
        let ft = md.file_type();
        let mut h = Header {
            path: rel,
            kind: b'0',
            mode: md.mode(),
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            size: 0,
            mtime: u64::try_from(md.mtime()).unwrap_or(0),
            link: b"",
            dev: (0, 0),
            xattrs: Vec::new(),
        };
        if ft.is_char_device() && md.rdev() == 0 {
            // A whiteout: the file below is deleted.
            let (parent, name) = match rel.iter().rposition(|b| *b == b'/') {
                Some(i) => (&rel[..=i], &rel[i + 1..]),
                None => (&b""[..], rel),
            };
            let wh = [parent, b".wh.", name].concat();
            h.path = &wh;
            h.mode = 0o644;
            h.uid = 0;
            h.gid = 0;
            h.mtime = 0;
            return write_entry(&mut self.out, &h, None);
        }
        h.xattrs = layer_xattrs(path);
        if ft.is_dir() {
            let with_slash = [rel, b"/"].concat();
            h.path = &with_slash;
            h.kind = b'5';
            write_entry(&mut self.out, &h, None)?;
            let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
                .iter()
                .any(|n| crate::sys::get_xattr(path, n).is_some_and(|v| v == b"y"));
            if opaque {
                let marker = [rel, b"/.wh..wh..opq"].concat();
                let m = Header {
                    path: &marker,
                    kind: b'0',
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime: 0,
                    link: b"",
                    dev: (0, 0),
                    xattrs: Vec::new(),
                };
                write_entry(&mut self.out, &m, None)?;
            }
            return self.dir(path, rel);
        }
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                h.kind = b'1';
                h.link = &first;
                h.xattrs.clear();
                return write_entry(&mut self.out, &h, None);
            }
            self.links.insert(key, rel.to_vec());
        }
        if ft.is_file() {
            h.size = md.len();
            return write_entry(&mut self.out, &h, Some(path));
        }
        let target;
        if ft.is_symlink() {
            target = fs::read_link(path)?;
            h.kind = b'2';
            h.link = target.as_os_str().as_bytes();
        } else if ft.is_char_device() || ft.is_block_device() {
            h.kind = if ft.is_char_device() { b'3' } else { b'4' };
            let rdev = md.rdev();
            h.dev = (
                ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff),
                ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff),
            );
        } else if ft.is_fifo() {
            h.kind = b'6';
        } else {
            // A socket: tar has no type for it, and a layer never carries one.
            return Ok(());
        }
        write_entry(&mut self.out, &h, None)
    }
}

/// Writes `upper` as a layer tar to `out`; returns the bytes written.
pub(crate) fn write_layer(upper: &Path, out: impl Write) -> io::Result<u64> {
    let mut w = Walker {
        out: Counted {
            inner: io::BufWriter::with_capacity(1 << 20, out),
            written: 0,
        },
        links: HashMap::new(),
    };
    w.dir(upper, b"")?;
    w.out.write_all(&[0u8; 2 * BLOCK])?;
    w.out.flush()?;
    Ok(w.out.written)
}
