//! One module per subcommand.

pub(crate) mod build;
pub(crate) mod build_cache;
pub(crate) mod containers;
pub(crate) mod exec_cp;
pub(crate) mod image;
pub(crate) mod images;
pub(crate) mod import;
pub(crate) mod parse;
pub(crate) mod registry;
pub(crate) mod run;
pub(crate) mod system;

use std::path::Path;

use anyhow::Context;
use snapshotter::FsStore;

/// Opens (creating if needed) the store at `root`.
pub(crate) fn open_store(root: &Path) -> anyhow::Result<FsStore> {
    FsStore::open(root).with_context(|| format!("open store {}", root.display()))
}

/// The container sandbox, with the `kiln` binary itself as its helper.
pub(crate) fn sandbox(root: &Path) -> anyhow::Result<vm_sandbox::ContainerSandbox> {
    use vm_sandbox::Sandbox;
    let exe = std::env::current_exe().context("find the kiln binary")?;
    let sandbox = vm_sandbox::ContainerSandbox::new(exe, root.join("sandbox"));
    sandbox.probe()?;
    Ok(sandbox)
}
