//! One module per subcommand.

pub(crate) mod images;
pub(crate) mod import;

use std::path::Path;

use anyhow::Context;
use snapshotter::FsStore;

/// Opens (creating if needed) the store at `root`.
pub(crate) fn open_store(root: &Path) -> anyhow::Result<FsStore> {
    FsStore::open(root).with_context(|| format!("open store {}", root.display()))
}
