//! What ADD brings in besides context files: archives it unpacks (tar, plain or gzip, bzip2,
//! xz, zstd, detected by content), files from http(s) URLs (with `--checksum`), and trees
//! from git repositories (`URL#ref:subdir`).

use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use snapshotter::Digest;

/// How an archive is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packing {
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn decoder(packing: Packing, file: fs::File) -> std::io::Result<Box<dyn Read>> {
    let r = BufReader::new(file);
    Ok(match packing {
        Packing::Plain => Box::new(r),
        Packing::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Packing::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Packing::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        Packing::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

/// Whether `path` is a tar archive (maybe compressed), as ADD decides: by content, not name.
pub(crate) fn archive_packing(path: &Path) -> Option<Packing> {
    let mut head = [0u8; 6];
    let n = fs::File::open(path).ok()?.read(&mut head).ok()?;
    let head = &head[..n];
    let packing = if head.starts_with(&[0x1f, 0x8b]) {
        Packing::Gzip
    } else if head.starts_with(b"BZh") {
        Packing::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Packing::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Packing::Zstd
    } else {
        Packing::Plain
    };
    // The (decompressed) stream must open with a valid tar header.
    let mut block = [0u8; 512];
    let mut r = decoder(packing, fs::File::open(path).ok()?).ok()?;
    r.read_exact(&mut block).ok()?;
    let field = std::str::from_utf8(&block[148..156]).ok()?;
    let stored =
        u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()?;
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    (sum == stored).then_some(packing)
}

/// Unpacks an archive into `dest` (created if missing). Entries cannot land outside `dest`
/// (`..`, absolute paths and links out are refused by the tar crate's `unpack_in`); owners
/// are kept when running as root.
pub(crate) fn unpack_archive(path: &Path, packing: Packing, dest: &Path) -> Result<(), String> {
    fs::create_dir_all(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    let file = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(decoder(packing, file).map_err(|e| e.to_string())?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    for entry in archive
        .entries()
        .map_err(|e| format!("read archive {}: {e}", path.display()))?
    {
        let mut entry = entry.map_err(|e| format!("read archive {}: {e}", path.display()))?;
        entry.unpack_in(dest).map_err(|e| {
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            format!("unpack {}: {why}", path.display())
        })?;
    }
    Ok(())
}

/// A file ADD downloaded.
pub(crate) struct Download {
    /// Where it is, in a temporary directory.
    pub(crate) path: PathBuf,
    /// The name it gets in a destination directory (the URL's last path segment).
    pub(crate) name: String,
    /// Its sha256.
    pub(crate) digest: Digest,
    /// Its `Last-Modified`, as Unix seconds.
    pub(crate) mtime: Option<i64>,
}

/// Downloads `url` into `dir`, checking `--checksum` (`sha256:...`) when given.
pub(crate) fn download(url: &str, dir: &Path, checksum: Option<&str>) -> Result<Download, String> {
    let expected = checksum
        .map(|c| {
            c.parse::<Digest>()
                .map_err(|_| format!("invalid --checksum {c:?} (want sha256:<64 hex digits>)"))
        })
        .transpose()?;
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.split_once("://"))
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, p)| {
            p.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "__unnamed__".to_string());
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(30)))
            .timeout_per_read(Some(std::time::Duration::from_secs(120)))
            .build(),
    );
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("download {url}: {e}"))?;
    let mtime = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let path = dir.join(format!("download-{}", std::process::id()));
    let mut out = fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut hashing = snapshotter::digest::HashingReader::new(resp.into_body().into_reader());
    std::io::copy(&mut hashing, &mut out).map_err(|e| format!("download {url}: {e}"))?;
    out.flush().map_err(|e| e.to_string())?;
    let (digest, _, _) = hashing.finish();
    if let Some(want) = expected
        && want != digest
    {
        return Err(format!(
            "download {url}: checksum mismatch: expected {want}, got {digest}"
        ));
    }
    Ok(Download {
        path,
        name,
        digest,
        mtime,
    })
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) as Unix seconds.
fn parse_http_date(v: &str) -> Option<i64> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// A git source of ADD: `URL[#REF][:SUBDIR]` split up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GitSource {
    pub(crate) remote: String,
    pub(crate) reference: Option<String>,
    pub(crate) subdir: Option<String>,
}

/// Recognizes git URLs as BuildKit does: `git@host:path`, `git://`, `ssh://`, and http(s)
/// URLs whose path ends in `.git`; the fragment is `ref[:subdir]`.
pub(crate) fn git_source(src: &str) -> Option<GitSource> {
    let (remote, fragment) = src
        .split_once('#')
        .map_or((src, None), |(r, f)| (r, Some(f)));
    let is_git = remote.starts_with("git@")
        || remote.starts_with("git://")
        || remote.starts_with("ssh://")
        || ((remote.starts_with("https://") || remote.starts_with("http://"))
            && remote.trim_end_matches('/').ends_with(".git"));
    if !is_git {
        return None;
    }
    let (reference, subdir) = match fragment {
        None => (None, None),
        Some(f) => {
            let (r, s) = f.split_once(':').map_or((f, None), |(r, s)| (r, Some(s)));
            (
                Some(r.to_string()).filter(|r| !r.is_empty()),
                s.map(str::to_string).filter(|s| !s.is_empty()),
            )
        }
    };
    Some(GitSource {
        remote: remote.to_string(),
        reference,
        subdir,
    })
}

/// A checked-out tree.
pub(crate) struct Checkout {
    /// The directory whose contents ADD copies (the subdirectory, when one was named).
    pub(crate) tree: PathBuf,
    /// The commit checked out.
    pub(crate) commit: String,
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("run git: {e} (is git installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default();
        return Err(format!(
            "git {}: {}",
            args.first().unwrap_or(&""),
            line.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Clones `src` into `dir` and checks out its ref; `.git` is removed unless `keep_git_dir`.
pub(crate) fn checkout(
    src: &GitSource,
    dir: &Path,
    keep_git_dir: bool,
) -> Result<Checkout, String> {
    let repo = dir.join("git");
    fs::create_dir_all(&repo).map_err(|e| e.to_string())?;
    git(&repo, &["init", "-q"])?;
    git(&repo, &["remote", "add", "origin", &src.remote])?;
    let wanted = src.reference.as_deref().unwrap_or("HEAD");
    // A shallow fetch of the ref; a full fetch where the server cannot do shallow (dumb HTTP)
    // or the ref is a commit.
    let fetched = git(&repo, &["fetch", "-q", "--depth", "1", "origin", wanted]).or_else(|_| {
        git(
            &repo,
            &[
                "fetch",
                "-q",
                "--tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
            ],
        )
        .map(|_| String::new())
    })?;
    drop(fetched);
    let target = if git(
        &repo,
        &["rev-parse", "-q", "--verify", "FETCH_HEAD^{commit}"],
    )
    .is_ok()
        && src.reference.is_none()
    {
        "FETCH_HEAD".to_string()
    } else {
        [
            format!("origin/{wanted}"),
            format!("refs/tags/{wanted}"),
            wanted.to_string(),
            "FETCH_HEAD".to_string(),
        ]
        .into_iter()
        .find(|r| {
            git(
                &repo,
                &["rev-parse", "-q", "--verify", &format!("{r}^{{commit}}")],
            )
            .is_ok()
        })
        .ok_or_else(|| format!("git: ref {wanted:?} not found in {}", src.remote))?
    };
    git(
        &repo,
        &["-c", "advice.detachedHead=false", "checkout", "-q", &target],
    )?;
    let commit = git(&repo, &["rev-parse", "HEAD"])?;
    if !keep_git_dir {
        fs::remove_dir_all(repo.join(".git")).map_err(|e| e.to_string())?;
    }
    let tree = match &src.subdir {
        Some(s) => crate::copy::scoped_path(&repo, s)?,
        None => repo,
    };
    if !tree.is_dir() {
        return Err(format!(
            "git: {} has no directory {:?}",
            src.remote,
            src.subdir.as_deref().unwrap_or("/")
        ));
    }
    Ok(Checkout { tree, commit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_cksum();
        b.append_data(&mut h, "dir/f", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn archives_are_recognized_by_content_and_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let plain = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&plain).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&plain).unwrap();
        let cases = [
            ("a.tar", plain.clone(), Some(Packing::Plain)),
            ("a.bin", gz.finish().unwrap(), Some(Packing::Gzip)),
            ("a.bz", bz.finish().unwrap(), Some(Packing::Bzip2)),
            ("a.xz", xz.finish().unwrap(), Some(Packing::Xz)),
            (
                "a.zst",
                zstd::encode_all(&plain[..], 1).unwrap(),
                Some(Packing::Zstd),
            ),
            (
                "notes.tar.gz",
                b"just text, named like an archive".to_vec(),
                None,
            ),
        ];
        for (name, bytes, want) in cases {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            assert_eq!(archive_packing(&p), want, "{name}");
            if let Some(k) = want {
                let out = dir.path().join(format!("out-{name}"));
                unpack_archive(&p, k, &out).unwrap();
                assert_eq!(fs::read(out.join("dir/f")).unwrap(), b"hi");
            }
        }
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn git_urls_are_recognized_like_buildkit() {
        let g = git_source("https://example.com/org/repo.git#v1.2:docs/sub").unwrap();
        assert_eq!(g.remote, "https://example.com/org/repo.git");
        assert_eq!(g.reference.as_deref(), Some("v1.2"));
        assert_eq!(g.subdir.as_deref(), Some("docs/sub"));
        assert!(git_source("git@github.com:org/repo").is_some());
        assert!(git_source("git://host/repo#main").is_some());
        assert!(git_source("https://example.com/file.tar.gz").is_none());
        assert!(git_source("src/dir").is_none());
        let g = git_source("http://127.0.0.1:1/r.git#:sub").unwrap();
        assert_eq!((g.reference, g.subdir.as_deref()), (None, Some("sub")));
    }
}
