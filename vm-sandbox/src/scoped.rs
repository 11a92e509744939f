//! Paths resolved inside a root directory, symlinks included, without leaving it.

use std::fs;
use std::path::{Path, PathBuf};

/// Resolves `src` inside `root` on disk, following symlinks as if `root` were `/`: a link's
/// absolute target starts again at `root` and `..` stops at it, so no path leads outside.
/// The sandbox places mounts this way (before `pivot_root`), and the builder resolves build
/// context sources this way, as BuildKit scopes them (`COPY link-to-/etc/passwd` copies the
/// context's own `etc/passwd`, if there is one).
pub fn scoped_path(root: &Path, src: &str) -> Result<PathBuf, String> {
    let mut todo: Vec<String> = src
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    todo.reverse();
    let mut cur = root.to_path_buf();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => {}
            ".." => {
                if cur != root {
                    cur.pop();
                }
            }
            name => {
                let next = cur.join(name);
                match fs::read_link(&next) {
                    Ok(target) => {
                        hops += 1;
                        if hops > 40 {
                            return Err(format!("{src}: too many levels of symbolic links"));
                        }
                        let t = target.to_string_lossy().into_owned();
                        if t.starts_with('/') {
                            cur = root.to_path_buf();
                        }
                        todo.extend(
                            t.split('/')
                                .filter(|p| !p.is_empty())
                                .rev()
                                .map(str::to_string),
                        );
                    }
                    Err(_) => cur = next,
                }
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "inside").unwrap();
        symlink("/etc/passwd", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("up")).unwrap();
        symlink("/", root.join("top")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(scoped_path(root, "abs").unwrap(), root.join("etc/passwd"));
        assert_eq!(
            scoped_path(root, "up/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            scoped_path(root, "top/etc/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(scoped_path(root, "../x").unwrap(), root.join("x"));
        assert!(scoped_path(root, "loop1").is_err());
    }
}
