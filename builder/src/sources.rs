//! The sources of a COPY or ADD from the build context, planned before anything is copied
//! (so the cache key can be computed first): wildcards, `--parents`, `--exclude`, heredoc
//! sources, and for ADD archives to unpack, URLs and git repositories.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use parser::dockerignore::Matcher;

use crate::copy::{CopyAttrs, Dest, context_path, copy_into};
use crate::fetch::{Packing, archive_packing, checkout, download, git_source, unpack_archive};

/// One thing to put into the new layer.
pub(crate) enum Item {
    /// A context path: a file (or link) to `target`, or a directory's contents into `target`;
    /// `exclude_root` is what `--exclude` patterns are relative to.
    Context {
        path: PathBuf,
        target: String,
        exclude_root: PathBuf,
        unpack: Option<Packing>,
    },
    /// A file made for this step (heredoc body, download) placed at `target`.
    File {
        path: PathBuf,
        target: String,
        mode: u32,
        mtime: Option<i64>,
    },
    /// A directory's contents (a git checkout) into `target`.
    Tree { dir: PathBuf, target: String },
}

/// What a COPY or ADD asks for, expanded.
pub(crate) struct SourceRequest<'a> {
    pub(crate) context: &'a Path,
    /// Sources as written (after variable expansion).
    pub(crate) sources: Vec<String>,
    /// Heredoc sources: name and body.
    pub(crate) heredocs: Vec<(String, String)>,
    /// The destination, absolute.
    pub(crate) dest_abs: String,
    /// The destination ends in `/` (or is `.`): sources go into it.
    pub(crate) dest_is_dir: bool,
    pub(crate) is_add: bool,
    pub(crate) parents: bool,
    pub(crate) exclude: Option<&'a Matcher>,
    pub(crate) checksum: Option<String>,
    pub(crate) keep_git_dir: bool,
    pub(crate) unpack: Option<bool>,
    /// `.dockerignore`: whether a context path is left out.
    pub(crate) ignored: &'a dyn Fn(&Path, bool) -> bool,
}

/// The planned sources and what identifies their content (for the cache key), plus the
/// scratch directory that holds heredoc bodies, downloads and checkouts.
pub(crate) struct SourcePlan {
    pub(crate) items: Vec<Item>,
    /// `name -> content identity` for sources that are not context files (those are
    /// hashed by the cache with [`SourcePlan::excluded`]).
    pub(crate) identities: BTreeMap<String, String>,
    pub(crate) _scratch: tempfile::TempDir,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Context paths matching a pattern, one path component at a time (`*` does not cross `/`),
/// sorted, without what `.dockerignore` leaves out.
fn glob_context(
    context: &Path,
    pattern: &str,
    ignored: &dyn Fn(&Path, bool) -> bool,
) -> Vec<(PathBuf, String)> {
    let clean = context_path(Path::new("/"), pattern).unwrap_or_default();
    let parts: Vec<String> = clean
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let mut found = vec![context.to_path_buf()];
    for part in &parts {
        let mut next = Vec::new();
        for dir in &found {
            if has_glob(part) {
                let Ok(entries) = fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for n in names {
                    if parser::shell::glob_match(part, &n) {
                        next.push(dir.join(n));
                    }
                }
            } else {
                let p = dir.join(part);
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
            }
        }
        found = next;
    }
    // Each match again, resolved inside the context (a symlinked directory on the way must
    // not lead out of it).
    let mut resolved: Vec<(PathBuf, String)> = found
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(context).ok()?;
            let name = p.file_name()?.to_string_lossy().into_owned();
            let r = crate::copy::scoped_path(context, &rel.to_string_lossy()).ok()?;
            fs::symlink_metadata(&r).is_ok().then_some((r, name))
        })
        .collect();
    resolved.dedup();
    resolved.retain(|(p, _)| p != context && !ignored(p, p.is_dir()));
    resolved
}

/// With `--parents`, the part of a source path kept under the destination: from the
/// `/./` pivot when there is one, else the whole path relative to the context.
fn parents_rel(src: &str, matched: &Path, context: &Path) -> PathBuf {
    let rel = matched
        .strip_prefix(context)
        .unwrap_or(matched)
        .to_path_buf();
    match src.find("/./") {
        Some(i) => {
            let skip = Path::new(&src[..i])
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .count();
            rel.components().skip(skip).collect()
        }
        None => rel,
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Plans the sources of one COPY or ADD.
pub(crate) fn plan(req: &SourceRequest<'_>) -> Result<SourcePlan, String> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-sources-")
        .tempdir()
        .map_err(|e| format!("create a scratch directory: {e}"))?;
    let mut items = Vec::new();
    let mut identities = BTreeMap::new();
    let count = req.sources.len() + req.heredocs.len();
    let mut into_dir = req.dest_is_dir || count > 1;
    for (i, src) in req.sources.iter().enumerate() {
        let remote = src.starts_with("http://")
            || src.starts_with("https://")
            || src.starts_with("git@")
            || src.starts_with("git://")
            || src.starts_with("ssh://");
        if remote && !req.is_add {
            return Err(format!("source can't be a URL for COPY: {src} (use ADD)"));
        }
        if req.is_add
            && let Some(g) = git_source(src)
        {
            let dir = scratch.path().join(format!("git-{i}"));
            let co = checkout(&g, &dir, req.keep_git_dir)?;
            identities.insert(
                format!("git:{src}"),
                format!(
                    "{}:{}:{}",
                    co.commit,
                    g.subdir.unwrap_or_default(),
                    req.keep_git_dir
                ),
            );
            items.push(Item::Tree {
                dir: co.tree,
                target: req.dest_abs.clone(),
            });
            continue;
        }
        if req.is_add && remote {
            let dir = scratch.path().join(format!("url-{i}"));
            fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let d = download(src, &dir, req.checksum.as_deref())?;
            identities.insert(format!("url:{src}"), d.digest.to_string());
            let target = if into_dir {
                join(&req.dest_abs, &d.name)
            } else {
                req.dest_abs.clone()
            };
            // Remote files are not unpacked unless --unpack=true asks for it.
            if req.unpack == Some(true)
                && let Some(p) = archive_packing(&d.path)
            {
                items.push(Item::Context {
                    path: d.path,
                    target: req.dest_abs.clone(),
                    exclude_root: dir,
                    unpack: Some(p),
                });
            } else {
                items.push(Item::File {
                    path: d.path,
                    target,
                    mode: 0o600,
                    mtime: d.mtime,
                });
            }
            continue;
        }
        if req.checksum.is_some() {
            return Err("--checksum applies to URL sources only".into());
        }
        let matches = if has_glob(src) {
            let m = glob_context(req.context, src, req.ignored);
            if m.len() > 1 {
                into_dir = true;
            }
            m
        } else {
            let path = crate::copy::scoped_path(req.context, src)?;
            let missing =
                || format!("failed to compute cache key: \"{src}\" not found in the build context");
            let md = fs::symlink_metadata(&path).map_err(|_| missing())?;
            if path != req.context && (req.ignored)(&path, md.is_dir()) {
                return Err(missing() + " (it is excluded by .dockerignore)");
            }
            let name = Path::new(src)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            vec![(path, name)]
        };
        for (path, name) in matches {
            let is_dir = fs::metadata(&path).is_ok_and(|m| m.is_dir())
                && !fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if let Some(ex) = req.exclude
                && !is_dir
                && ex.matches(&name)
            {
                continue;
            }
            let unpack = if req.is_add && !is_dir && req.unpack != Some(false) {
                archive_packing(&path)
            } else {
                None
            };
            let target = if req.parents {
                let rel = parents_rel(src, &path, req.context);
                join(&req.dest_abs, &rel.to_string_lossy())
            } else if unpack.is_some() || is_dir || !into_dir {
                req.dest_abs.clone()
            } else {
                join(&req.dest_abs, &name)
            };
            let exclude_root = if is_dir {
                path.clone()
            } else {
                path.parent().unwrap_or(req.context).to_path_buf()
            };
            items.push(Item::Context {
                path,
                target,
                exclude_root,
                unpack,
            });
        }
    }
    for (i, (name, body)) in req.heredocs.iter().enumerate() {
        let path = scratch.path().join(format!("heredoc-{i}"));
        fs::write(&path, body).map_err(|e| format!("write heredoc {name}: {e}"))?;
        identities.insert(
            format!("heredoc:{name}"),
            snapshotter::Digest::of(body.as_bytes()).to_string(),
        );
        let target = if into_dir {
            join(&req.dest_abs, name)
        } else {
            req.dest_abs.clone()
        };
        items.push(Item::File {
            path,
            target,
            mode: 0o664,
            mtime: None,
        });
    }
    Ok(SourcePlan {
        items,
        identities,
        _scratch: scratch,
    })
}

impl SourcePlan {
    /// Whether a context path below `root` is left out (`.dockerignore` or `--exclude`).
    pub(crate) fn excluded<'a>(
        req: &'a SourceRequest<'a>,
        root: &'a Path,
    ) -> impl Fn(&Path, bool) -> bool + 'a {
        move |p: &Path, is_dir: bool| {
            if (req.ignored)(p, is_dir) {
                return true;
            }
            let Some(ex) = req.exclude else { return false };
            let rel = p
                .strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            ex.matches(&rel) && !(is_dir && ex.may_reinclude_below(&rel))
        }
    }

    /// Puts every item into the destination (the new layer's directory over its lowers).
    pub(crate) fn apply(
        &self,
        req: &SourceRequest<'_>,
        dest: &Dest<'_>,
        attrs: CopyAttrs,
    ) -> Result<(), String> {
        for item in &self.items {
            match item {
                Item::Context {
                    path,
                    target,
                    exclude_root,
                    unpack,
                } => match unpack {
                    Some(p) => {
                        let dir = crate::copy::prepare_dir(dest, target, attrs.owner)?;
                        unpack_archive(path, *p, &dir)?;
                        if attrs.owner.is_some() || attrs.mode.is_some() {
                            crate::copy::restamp_tree(&dir, attrs)?;
                        }
                    }
                    None => copy_into(
                        dest,
                        path,
                        target,
                        attrs,
                        &Self::excluded(req, exclude_root),
                    )?,
                },
                Item::File {
                    path,
                    target,
                    mode,
                    mtime,
                } => {
                    use std::os::unix::fs::PermissionsExt as _;
                    fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                        .map_err(|e| e.to_string())?;
                    if let Some(t) = mtime {
                        let _ = filetime::set_file_mtime(
                            path,
                            filetime::FileTime::from_unix_time(*t, 0),
                        );
                    }
                    copy_into(dest, path, target, attrs, &|_: &Path, _: bool| false)?;
                }
                Item::Tree { dir, target } => {
                    copy_into(dest, dir, target, attrs, &|_: &Path, _: bool| false)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "a.txt",
            "b.txt",
            "c.md",
            "src/x.rs",
            "src/y.rs",
            "src/deep/z.rs",
            ".hidden",
        ] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        d
    }

    fn names(ctx: &Path, v: &[(PathBuf, String)]) -> Vec<String> {
        v.iter()
            .map(|(p, _)| p)
            .map(|p| p.strip_prefix(ctx).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn wildcards_match_one_component_at_a_time() {
        let d = tree();
        let none = |_: &Path, _: bool| false;
        assert_eq!(
            names(d.path(), &glob_context(d.path(), "*.txt", &none)),
            ["a.txt", "b.txt"]
        );
        assert_eq!(
            names(d.path(), &glob_context(d.path(), "src/*.rs", &none)),
            ["src/x.rs", "src/y.rs"]
        );
        assert_eq!(
            names(d.path(), &glob_context(d.path(), "*/*/z.rs", &none)),
            ["src/deep/z.rs"]
        );
        assert_eq!(
            names(d.path(), &glob_context(d.path(), "[ab].txt", &none)),
            ["a.txt", "b.txt"]
        );
        assert_eq!(
            names(d.path(), &glob_context(d.path(), "*.none", &none)),
            Vec::<String>::new()
        );
        let no_b = |p: &Path, _: bool| p.ends_with("b.txt");
        assert_eq!(
            names(d.path(), &glob_context(d.path(), "?.txt", &no_b)),
            ["a.txt"]
        );
    }

    #[test]
    fn parents_keep_the_path_from_the_pivot() {
        let c = Path::new("/ctx");
        assert_eq!(
            parents_rel("src/deep/z.rs", Path::new("/ctx/src/deep/z.rs"), c),
            Path::new("src/deep/z.rs")
        );
        assert_eq!(
            parents_rel("src/./deep/z.rs", Path::new("/ctx/src/deep/z.rs"), c),
            Path::new("deep/z.rs")
        );
    }
}
