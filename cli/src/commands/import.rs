//! `kiln import SOURCE REF`.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use builder::{ImportOptions, Platform};
use snapshotter::Reference;

use crate::args::ImportArgs;

pub(crate) fn run(root: &Path, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let name: Reference = a.reference.parse()?;
    let platform = a
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if a.source.contains("://") {
        anyhow::bail!(
            "import {}: importing from a URL is not supported; download the file first",
            a.source
        );
    }
    let input: Box<dyn Read + Send> = if a.source == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(&a.source).with_context(|| format!("open {}", a.source))?)
    };
    let store = super::open_store(root)?;
    let _gc = snapshotter::gc::GcLock::shared(root)?;
    let opts = ImportOptions {
        changes: a.changes,
        message: a.message,
        platform,
        source: a.source,
        compression: a.compression.parse().map_err(anyhow::Error::msg)?,
    };
    let image = builder::import(&store, input, &name, &opts)?;
    println!("{}", image.id());
    Ok(ExitCode::SUCCESS)
}
