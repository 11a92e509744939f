//! `kiln system check`: verify the store, and repair what can be repaired.

use std::fs;

use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, Result};
use crate::gc::remove_tree;
use crate::image::read_image;
use crate::store::{FsStore, Store};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, one line.
    pub what: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
    /// False for harmless leftovers (temporary files of a killed process): reported, but the
    /// store is still consistent.
    pub corrupt: bool,
}

/// Checks every blob's digest, every name's image, and leftover temporary files. With
/// `repair`, removes corrupt blobs, names whose image is incomplete, and leftovers.
pub fn check(store: &FsStore, repair: bool) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let mut add = |what: String, repaired: bool| {
        problems.push(Problem {
            what,
            repaired,
            corrupt: true,
        })
    };
    let blobs = store.root().join("blobs/sha256");
    for e in fs::read_dir(&blobs).at("read directory", &blobs)? {
        let e = e.at("read directory", &blobs)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
            let fixed = repair && fs::remove_file(e.path()).is_ok();
            add(format!("stray file blobs/sha256/{name}"), fixed);
            continue;
        };
        let f = fs::File::open(e.path()).at("open", e.path())?;
        let mut r = HashingReader::new(f);
        std::io::copy(&mut r, &mut std::io::sink()).at("read", e.path())?;
        let (actual, _, _) = r.finish();
        if actual != d {
            let fixed = repair && store.remove(&d).is_ok();
            add(
                format!("blob {d} is corrupt (content hashes to {actual})"),
                fixed,
            );
        }
    }
    for (name, desc) in store.images()? {
        let bad = match read_image(store, &desc) {
            Err(e) => Some(e.to_string()),
            Ok(img) => img
                .manifest
                .layers()
                .iter()
                .filter_map(|l| Digest::try_from(l.digest()).ok())
                .find(|d| !store.contains(d).unwrap_or(false))
                .map(|d| format!("layer {d} is missing")),
        };
        if let Some(why) = bad {
            let fixed = repair && store.untag(&name).is_ok();
            add(format!("image {name}: {why}"), fixed);
        }
    }
    // Hold the GC lock exclusively while calling this: then no writer is running, and
    // whatever is in the temporary areas was left by a process that died.
    for dir in ["ingest", "snapshots/tmp", "sandbox"] {
        let p = store.root().join(dir);
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let fixed = repair && remove_tree(&e.path()).is_ok();
            problems.push(Problem {
                what: format!(
                    "leftover temporary {dir}/{} (harmless)",
                    e.file_name().to_string_lossy()
                ),
                repaired: fixed,
                corrupt: false,
            });
        }
    }
    Ok(problems)
}
