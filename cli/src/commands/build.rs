//! `kiln build [-f Dockerfile] [-t name]... [--build-arg K=V]... [--target stage] CONTEXT`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use builder::{BuildRequest, Builder, Platform};
use snapshotter::Reference;
use snapshotter::snapshot::Snapshots;

use crate::args::BuildArgs;

pub(crate) fn run(root: &Path, a: BuildArgs) -> anyhow::Result<ExitCode> {
    let context = a.context.clone();
    if !context.is_dir() {
        anyhow::bail!("build context {} is not a directory", context.display());
    }
    let dockerfile_path = match &a.file {
        Some(f) if f.as_os_str() == "-" => PathBuf::from("-"),
        Some(f) => f.clone(),
        None => context.join("Dockerfile"),
    };
    let dockerfile = if dockerfile_path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read Dockerfile from stdin")?
    } else {
        std::fs::read_to_string(&dockerfile_path)
            .with_context(|| format!("read {}", dockerfile_path.display()))?
    };
    let tags = a
        .tags
        .iter()
        .map(|t| t.parse::<Reference>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut build_args = Vec::new();
    for kv in &a.build_args {
        match kv.split_once('=') {
            Some((k, v)) => build_args.push((k.to_string(), v.to_string())),
            // `--build-arg NAME` takes the value from the environment, as in Docker.
            None => {
                if let Ok(v) = std::env::var(kv) {
                    build_args.push((kv.clone(), v));
                }
            }
        }
    }
    let platform = a
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_else(Platform::host);
    let store = super::open_store(root)?;
    let _gc = snapshotter::gc::GcLock::shared(root)?;
    let snapshots = Snapshots::open(root)?;
    let sandbox = super::sandbox(root)?;
    let quiet = a.quiet;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let compression = a.compression.parse().map_err(anyhow::Error::msg)?;
    let cache = std::sync::Mutex::new(builder::cache::Cache::open(root));
    let builder = Builder {
        cache: (!a.no_cache).then_some(&cache),
        compression,
        root_mode: snapshotter::snapshot::RootMode::detect(),
        store: &store,
        snapshots: &snapshots,
        sandbox: &sandbox,
        progress: &progress,
    };
    // `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`.
    let ignore_path = parser::dockerignore::ignore_file(&dockerfile_path, &context);
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => Some(
            parser::dockerignore::Matcher::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ignore_path.display()))?,
        ),
        Err(_) => None,
    };
    let req = BuildRequest {
        ignore,
        dockerfile,
        dockerfile_name: dockerfile_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into()),
        context,
        build_args,
        target: a.target,
        tags,
        platform,
    };
    let image = builder.build(&req).map_err(|e| match e {
        builder::BuildError::Parse { file, error } => {
            anyhow::Error::new(parser::dockerfile_error(&file, &req.dockerfile, &error))
        }
        e => anyhow::Error::new(e),
    })?;
    if !quiet {
        for t in &req.tags {
            eprintln!("naming to {t}");
        }
    }
    println!("{}", image.id());
    Ok(ExitCode::SUCCESS)
}
