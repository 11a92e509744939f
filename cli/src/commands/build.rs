//! `kiln build [-f Dockerfile] [-t name]... [--build-arg K=V]... [--target stage] CONTEXT`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use builder::registry::RegistryOptions;
use builder::{BuildRequest, Builder, Platform};
use snapshotter::Reference;
use snapshotter::snapshot::Snapshots;

use crate::args::BuildArgs;
use crate::build_progress::{Mode, Renderer};

/// Pulls what `FROM` and `COPY --from` name when the store lacks it.
struct RegistrySource<'a> {
    store: &'a snapshotter::FsStore,
    options: &'a RegistryOptions,
    quiet: bool,
}

impl builder::build::ImageSource for RegistrySource<'_> {
    fn qualify(&self, name: &str) -> Result<Reference, String> {
        self.options.qualify(name).map_err(|e| e.to_string())
    }

    fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<oci_spec::image::Descriptor, String> {
        super::registry::pull_into(self.store, self.options, reference, platform, 3, self.quiet)
            .map(|p| p.image.descriptor)
            .map_err(|e| format!("{e:#}"))
    }
}

/// `kiln build -`: standard input is a context tarball (plain, gzip or zstd), or else a
/// Dockerfile with an empty context, as with `docker build -`.
fn stdin_context(scratch: &Path) -> anyhow::Result<(PathBuf, Option<String>)> {
    let mut input = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
        .context("read the context from stdin")?;
    let dir = scratch.join("context");
    std::fs::create_dir_all(&dir)?;
    let plain = snapshotter::layer::decompressed(&input[..])
        .ok()
        .and_then(|mut r| {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut buf).ok()?;
            Some(buf)
        });
    let is_tar = plain
        .as_ref()
        .is_some_and(|b| b.len() >= 512 && &b[257..262] == b"ustar");
    if let (true, Some(tarball)) = (is_tar, plain) {
        let mut ar = tar::Archive::new(&tarball[..]);
        for entry in ar.entries().context("read the context tarball")? {
            entry
                .context("read the context tarball")?
                .unpack_in(&dir)
                .context("unpack the context tarball")?;
        }
        return Ok((dir, None));
    }
    let text =
        String::from_utf8(input).context("stdin is neither a tar archive nor a Dockerfile")?;
    Ok((dir, Some(text)))
}

pub(crate) fn run(root: &Path, reg: &RegistryOptions, a: BuildArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir().context("create a scratch directory")?;
    let (context, stdin_dockerfile) = if a.context.as_os_str() == "-" {
        if a.file.as_deref().is_some_and(|f| f.as_os_str() == "-") {
            anyhow::bail!("the context and the Dockerfile cannot both come from stdin");
        }
        stdin_context(scratch.path())?
    } else {
        (a.context.clone(), None)
    };
    if !context.is_dir() {
        anyhow::bail!("build context {} is not a directory", context.display());
    }
    let dockerfile_path = match &a.file {
        Some(f) if f.as_os_str() == "-" => PathBuf::from("-"),
        // With a context tarball on stdin, -f names a file inside it.
        Some(f) if a.context.as_os_str() == "-" && f.is_relative() => context.join(f),
        Some(f) => f.clone(),
        None => context.join("Dockerfile"),
    };
    let dockerfile = if let Some(text) = stdin_dockerfile {
        text
    } else if dockerfile_path.as_os_str() == "-" {
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
    // --build-arg-file: KEY=VALUE lines (blank lines and # comments skipped); --build-arg wins.
    for f in &a.build_arg_files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{}:{}: expected KEY=VALUE", f.display(), n + 1))?;
            build_args.push((k.trim().to_string(), v.to_string()));
        }
    }
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
    // As root, one pids cgroup and one memory cgroup for the whole build, joined at its first
    // RUN step (the steps find them and join no other). A microVM's memory is its own
    // (--vm-memory): qemu is not held to --memory.
    let memory = match super::vm_options(&a.isolation)? {
        None => super::build_memory_limit(a.memory.as_deref())?,
        Some(_) => None,
    };
    let sandbox = super::limits::LimitedSandbox::new(
        super::sandbox_for(root, &a.isolation)?,
        builder::STEP_MAX_PROCESSES,
        memory,
    );
    let quiet = a.quiet;
    let mode = Mode::choose(&a.progress, quiet).map_err(anyhow::Error::msg)?;
    let renderer = Renderer::new(mode);
    let progress = |e: builder::BuildEvent<'_>| renderer.event(e);
    let compression = a.compression.parse().map_err(anyhow::Error::msg)?;
    let cache = std::sync::Mutex::new(builder::cache::Cache::open(root));
    let source = RegistrySource {
        store: &store,
        options: reg,
        quiet,
    };
    // Every output and cache export is checked before anything is built.
    for spec in &a.outputs {
        parse_output(spec).with_context(|| format!("--output {spec}"))?;
    }
    for spec in &a.cache_to {
        super::build_cache::parse_spec(spec, true)?;
    }
    let warn = |w: &str| renderer.event(builder::BuildEvent::Warning(w));
    let remote_cache = super::build_cache::import(&a.cache_from, root, reg, &warn);
    let cache_log = std::sync::Mutex::new(builder::remote_cache::CacheLog::default());
    let source_date_epoch = builder::source_date_epoch(&build_args).map_err(anyhow::Error::msg)?;
    let builder = Builder {
        cache: (!a.no_cache).then_some(&cache),
        compression,
        root_mode: snapshotter::snapshot::RootMode::detect(),
        store: &store,
        snapshots: &snapshots,
        sandbox: &sandbox,
        progress: &progress,
        capture_output: mode.captures_output(),
        remote_cache: remote_cache.as_ref(),
        cache_log: (!a.cache_to.is_empty()).then_some(&cache_log),
        source: Some(&source),
        always_pull: a.pull,
        source_date_epoch,
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
        secrets: a
            .secrets
            .iter()
            .map(|s| parse_secret(s))
            .collect::<anyhow::Result<_>>()?,
        ssh: a
            .ssh
            .iter()
            .map(|s| parse_ssh(s))
            .collect::<anyhow::Result<_>>()?,
        no_cache_filter: a.no_cache_filter.clone(),
        inline_cache: super::build_cache::wants_inline(&a.cache_to),
        format: a.format.as_deref().map(|f| match f {
            "docker" => snapshotter::image::ImageFormat::Docker,
            _ => snapshotter::image::ImageFormat::Oci,
        }),
    };
    let built = builder.build(&req);
    if built.is_err() {
        renderer.failed();
    }
    let image = built.map_err(|e| match e {
        builder::BuildError::Parse { file, error } => {
            anyhow::Error::new(parser::dockerfile_error(&file, &req.dockerfile, &error))
        }
        e => anyhow::Error::new(e),
    })?;
    let unused = builder::unused_build_args(&req.dockerfile, &req.build_args);
    if !unused.is_empty() {
        renderer.event(builder::BuildEvent::Warning(&format!(
            "One or more build-args {unused:?} were not consumed"
        )));
    }
    if matches!(mode, Mode::Plain | Mode::Tty) {
        for t in &req.tags {
            eprintln!("naming to {t}");
        }
    }
    let size: u64 = image.manifest.layers().iter().map(|l| l.size()).sum();
    renderer.summary(&image.id().to_string(), size);
    if a.explain_cache {
        renderer.explain_cache();
    }
    for spec in &a.outputs {
        export(&store, &snapshots, &image, &req.tags, spec)
            .with_context(|| format!("--output {spec}"))?;
    }
    if !a.cache_to.is_empty() {
        let log = cache_log.lock().unwrap_or_else(|p| p.into_inner());
        super::build_cache::export(&a.cache_to, &store, reg, &log)?;
    }
    if a.push {
        if req.tags.is_empty() {
            anyhow::bail!("--push needs at least one -t name");
        }
        for t in &req.tags {
            super::registry::push_image(&store, reg, &t.to_string(), t, 3, quiet)
                .with_context(|| format!("push {t}"))?;
        }
    }
    if let Some(f) = &a.iidfile {
        std::fs::write(f, image.id().to_string())
            .with_context(|| format!("write {}", f.display()))?;
    }
    println!("{}", image.id());
    Ok(ExitCode::SUCCESS)
}

/// `--secret id=ID,src=FILE` / `id=ID,env=VAR` / `id=ID` (the variable ID, as buildx reads it).
fn parse_secret(spec: &str) -> anyhow::Result<(String, builder::SecretSource)> {
    let (mut id, mut src, mut env) = (None, None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("env", v)) => env = Some(v.to_string()),
            Some(("type", "file" | "env")) => {}
            _ => anyhow::bail!("--secret {spec}: unknown field {part:?} (id=, src=, env=)"),
        }
    }
    let id = id.ok_or_else(|| anyhow::anyhow!("--secret {spec}: id= is required"))?;
    let source = match (src, env) {
        (Some(p), None) => builder::SecretSource::File(p),
        (None, Some(v)) => builder::SecretSource::Env(v),
        (None, None) => builder::SecretSource::Env(id.clone()),
        (Some(_), Some(_)) => anyhow::bail!("--secret {spec}: give src= or env=, not both"),
    };
    Ok((id, source))
}

/// `--ssh default` (the agent at `$SSH_AUTH_SOCK`) or `--ssh ID=SOCKET`.
fn parse_ssh(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((id, path)) => Ok((id.to_string(), PathBuf::from(path))),
        None => {
            let sock = std::env::var_os("SSH_AUTH_SOCK")
                .ok_or_else(|| anyhow::anyhow!("--ssh {spec}: SSH_AUTH_SOCK is not set"))?;
            Ok((spec.to_string(), PathBuf::from(sock)))
        }
    }
}

/// `--output type=docker|oci|tar|local,dest=...`: its type and destination.
fn parse_output(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let mut kind = None;
    let mut dest = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_string()),
            Some(("dest", v)) => dest = Some(PathBuf::from(v)),
            _ => anyhow::bail!("unknown field {part:?} (type=...,dest=...)"),
        }
    }
    let (Some(kind), Some(dest)) = (kind, dest) else {
        anyhow::bail!("needs type= and dest=")
    };
    if !matches!(kind.as_str(), "docker" | "oci" | "tar" | "local") {
        anyhow::bail!("unknown output type {kind:?} (docker, oci, tar, local)");
    }
    Ok((kind, dest))
}

/// Writes the built image somewhere else too (`--output type=...,dest=...`).
fn export(
    store: &snapshotter::FsStore,
    snapshots: &Snapshots,
    image: &snapshotter::image::StoredImage,
    tags: &[Reference],
    spec: &str,
) -> anyhow::Result<()> {
    use snapshotter::archive::{ArchiveFormat, save};
    let (kind, dest) = parse_output(spec)?;
    let name = tags
        .first()
        .cloned()
        .map_or_else(|| format!("kiln-build:{}", image.id().short()).parse(), Ok)?;
    let archive = |format| -> anyhow::Result<()> {
        let file =
            std::fs::File::create(&dest).with_context(|| format!("create {}", dest.display()))?;
        save(
            store,
            &[(name.clone(), image.clone())],
            format,
            std::io::BufWriter::new(file),
        )?;
        Ok(())
    };
    match kind.as_str() {
        "docker" => archive(ArchiveFormat::DockerArchive),
        "oci" => archive(ArchiveFormat::OciArchive),
        "local" | "tar" => {
            let layers = snapshots.ensure_image(store, image)?;
            let bottom_first: Vec<PathBuf> = layers.into_iter().map(|(_, d)| d).collect();
            if kind == "local" {
                std::fs::create_dir_all(&dest)?;
                snapshotter::copyfs::materialize(&bottom_first, &dest)?;
                return Ok(());
            }
            let tmp = tempfile::tempdir()?;
            snapshotter::copyfs::materialize(&bottom_first, tmp.path())?;
            let file = std::fs::File::create(&dest)
                .with_context(|| format!("create {}", dest.display()))?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            tar.follow_symlinks(false);
            tar.append_dir_all(".", tmp.path())?;
            tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            Ok(())
        }
        other => anyhow::bail!("unknown output type {other:?} (docker, oci, tar, local)"),
    }
}
