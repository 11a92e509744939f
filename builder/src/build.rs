//! `kiln build`: stages and steps of a Dockerfile executed into an image.
//!
//! Stages run in file order; only the target and the stages it depends on (`FROM stage`)
//! run. Each `RUN` goes through the [`Sandbox`] on an overlay of the stage's layers plus a
//! fresh upper directory, which then becomes the step's layer; `COPY` fills an upper directory
//! from the context; config instructions change only the image config.

use std::path::PathBuf;

use parser::{Instruction, Lexer, Node};
use snapshotter::config::History;
use snapshotter::image::{ImageFormat, StoredImage, read_image, write_image_as};
use snapshotter::layer::Layer;
use snapshotter::snapshot::Snapshots;
use snapshotter::{Digest, ImageConfig, Reference, Store};
use vm_sandbox::Sandbox;

use crate::dispatch::{ConfigState, apply_config};
use crate::error::{BuildError, Result};
use crate::platform::{Platform, creation_time_at};

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// Its name, for messages (`Dockerfile`).
    pub dockerfile_name: String,
    /// The build context directory.
    pub context: PathBuf,
    /// `--build-arg` values.
    pub build_args: Vec<(String, String)>,
    /// `--target` stage.
    pub target: Option<String>,
    /// Names to give the result.
    pub tags: Vec<Reference>,
    /// The platform recorded for `FROM scratch` stages.
    pub platform: Platform,
    /// The context's `.dockerignore` (or `<Dockerfile>.dockerignore`), if any.
    pub ignore: Option<parser::dockerignore::Matcher>,
    /// `--secret id=...`: what `RUN --mount=type=secret` can mount.
    pub secrets: Vec<(String, SecretSource)>,
    /// `--ssh ID=SOCKET`: agent sockets `RUN --mount=type=ssh` can mount.
    pub ssh: Vec<(String, PathBuf)>,
    /// `--cache-to type=inline`: embed the target stage's cache records in the image config.
    pub inline_cache: bool,
    /// `--no-cache-filter`: stages (names or indexes) whose steps run even when cached.
    pub no_cache_filter: Vec<String>,
    /// `--format`: the image's media types (`None`: Docker's when the config uses
    /// HEALTHCHECK, ONBUILD or SHELL, else OCI).
    pub format: Option<ImageFormat>,
}

/// Where a build secret's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file.
    File(PathBuf),
    /// An environment variable of kiln's.
    Env(String),
}

/// The pieces a build runs with.
pub struct Builder<'a> {
    /// Blobs and image names.
    pub store: &'a dyn Store,
    /// Unpacked layers.
    pub snapshots: &'a Snapshots,
    /// Where RUN steps run.
    pub sandbox: &'a dyn Sandbox,
    /// Where progress goes (steps, cache decisions, warnings, and RUN output when
    /// `capture_output` is set).
    pub progress: &'a (dyn Fn(BuildEvent<'_>) + Sync),
    /// RUN steps' output goes to `progress` as [`BuildEvent::Output`] lines instead of
    /// straight to stderr.
    pub capture_output: bool,
    /// How new layers are compressed.
    pub compression: snapshotter::compress::LayerCompression,
    /// How RUN steps get their root filesystem (overlay, or copies where overlay is missing).
    pub root_mode: snapshotter::snapshot::RootMode,
    /// The build cache (`None` with `--no-cache`).
    pub cache: Option<&'a std::sync::Mutex<crate::cache::Cache>>,
    /// Where `FROM` and `COPY --from` get images the store lacks (`None`: local images only).
    pub source: Option<&'a dyn ImageSource>,
    /// Pull every base image even when the store has it (`--pull`).
    pub always_pull: bool,
    /// Caches imported with `--cache-from`, consulted after the local one.
    pub remote_cache: Option<&'a crate::remote_cache::RemoteCache>,
    /// Where each layer step's key and layer are recorded, for `--cache-to`.
    pub cache_log: Option<&'a std::sync::Mutex<crate::remote_cache::CacheLog>>,
    /// `SOURCE_DATE_EPOCH` ([`crate::source_date_epoch`]): layer mtimes are clamped to it,
    /// the image's dates are it, and it is part of every layer step's cache key.
    pub source_date_epoch: Option<u64>,
}

/// What every stage of one build shares.
#[derive(Clone, Copy)]
struct StageRun<'a> {
    stages: &'a [parser::Stage<'a>],
    names: &'a [Option<String>],
    bases: &'a [String],
    meta_args: &'a [(String, String)],
    lexer: &'a Lexer,
    req: &'a BuildRequest,
    file: &'a str,
    total: usize,
    /// Per stage: the image has its layers.
    exported: &'a [bool],
}

/// What a build reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildEvent<'a> {
    /// A step starts (FROM counts as one): `number` of `total`, its instruction as written.
    Step {
        /// 1-based.
        number: usize,
        /// Steps in the build.
        total: usize,
        /// The instruction's text.
        instruction: &'a str,
    },
    /// A step ended; `cached` when its result came from the cache.
    StepDone {
        /// The step's number.
        number: usize,
        /// Served from the cache.
        cached: bool,
    },
    /// The step's result comes from the cache.
    Cached {
        /// The step's number.
        number: usize,
    },
    /// The step runs; why the cache could not serve it (compared with the last build).
    CacheMiss {
        /// The step's number.
        number: usize,
        /// Why.
        reason: &'a str,
    },
    /// The step runs because `--no-cache-filter` names its stage.
    CacheSkipped {
        /// The step's number.
        number: usize,
    },
    /// A line a RUN step printed (with `capture_output`).
    Output {
        /// The step's number.
        number: usize,
        /// The line, without its newline.
        line: &'a str,
    },
    /// Something the user should know.
    Warning(&'a str),
}

/// Where images named in a Dockerfile come from when the store lacks them: a registry.
pub trait ImageSource: Sync {
    /// The full reference for a name as written (short names may resolve against a
    /// configured default registry).
    fn qualify(&self, name: &str) -> std::result::Result<Reference, String>;
    /// Pulls the image for `platform` into the store; returns the stored descriptor.
    fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> std::result::Result<oci_spec::image::Descriptor, String>;
}

impl Builder<'_> {
    /// The stored image `name` refers to, pulled first when the store lacks it (or always,
    /// with `always_pull`).
    pub(crate) fn find_or_pull(
        &self,
        name: &str,
        platform: &Platform,
    ) -> std::result::Result<oci_spec::image::Descriptor, String> {
        let plain: std::result::Result<Reference, String> =
            name.parse().map_err(|e| format!("{e}"));
        let qualified = match self.source {
            Some(src) => src.qualify(name)?,
            None => plain.clone()?,
        };
        if !self.always_pull {
            for r in [plain.as_ref().ok(), Some(&qualified)]
                .into_iter()
                .flatten()
            {
                if let Some(d) = self.store.resolve(r).map_err(|e| e.to_string())? {
                    return Ok(d);
                }
            }
        }
        match self.source {
            Some(src) => src
                .pull(&qualified, platform)
                .map_err(|e| format!("pull {name}: {e}")),
            None => Err(format!("image {name} not found in the local store")),
        }
    }
}

/// A layer of a stage, with its chain ID and unpacked directory.
#[derive(Clone, Debug)]
pub(crate) struct StageLayer {
    pub(crate) layer: Layer,
    pub(crate) chain: Digest,
    pub(crate) dir: PathBuf,
    /// Served by an imported cache and not fetched yet: `dir` does not exist (and the blob
    /// may not be in the store) until a step needs it.
    pub(crate) pending: bool,
}

/// The build's stages, for `COPY --from` and `--mount from=` (those already built have a state).
pub(crate) struct Earlier<'s> {
    pub(crate) names: &'s [Option<String>],
    pub(crate) done: &'s [Option<StageState>],
    /// The build's target platform (for images `COPY --from` pulls).
    pub(crate) platform: &'s Platform,
}

#[derive(Clone, Debug)]
pub(crate) struct StageState {
    name: Option<String>,
    pub(crate) layers: Vec<StageLayer>,
    pub(crate) cfg: ConfigState,
    /// `--no-cache-filter` names this stage: its steps run even when cached.
    pub(crate) no_cache: bool,
    /// The number of the step running (for progress events).
    pub(crate) step: usize,
    /// The stage's index (for the cache log).
    pub(crate) index: usize,
    /// The step running was served from the cache.
    pub(crate) from_cache: bool,
    /// The history text of the layer step running (`RUN ... # buildkit`).
    pub(crate) created_by: String,
    /// The image has this stage's layers (it is the target, or the target is based on it):
    /// they get their blobs as they are made. Other stages' layers are only read from
    /// their snapshots (`COPY --from`, `--mount from=`), see [`crate::unwritten`].
    pub(crate) exported: bool,
    /// The build's `SOURCE_DATE_EPOCH`, for the history's dates.
    pub(crate) source_date_epoch: Option<u64>,
}

impl StageState {
    pub(crate) fn lower_dirs(&self) -> Vec<PathBuf> {
        self.layers.iter().rev().map(|l| l.dir.clone()).collect()
    }
}

impl Builder<'_> {
    /// Builds the request's target stage and tags the image.
    pub fn build(&self, req: &BuildRequest) -> Result<StoredImage> {
        let file = req.dockerfile_name.as_str();
        let parse_err = |error| BuildError::Parse {
            file: file.into(),
            error,
        };
        let doc = parser::parse(&req.dockerfile).map_err(parse_err)?;
        let lexer = Lexer::new(doc.directives.escape);
        let (globals, stages) = parser::stages(&doc).map_err(parse_err)?;
        let fail = |n: &Node, message: String| BuildError::Instruction {
            at: format!("{file}:{}", n.start),
            message,
        };

        // Global ARGs: a --build-arg wins over the default; defaults may use earlier globals.
        // The predefined platform args are global: usable in FROM, and in a stage once declared.
        let mut meta_args: Vec<(String, String)> = predefined_args(&req.platform);
        for a in &globals {
            let v = match lookup(&req.build_args, &a.name) {
                Some(v) => Some(v),
                None => a
                    .default
                    .as_ref()
                    .map(|d| lexer.expand_word(d, &meta_args))
                    .transpose()
                    .map_err(|e| BuildError::Other(format!("{file}: ARG {}: {e}", a.name)))?,
            };
            if let Some(v) = v {
                meta_args.push((a.name.clone(), v));
            }
        }
        let names: Vec<Option<String>> = stages.iter().map(|s| s.name.clone()).collect();
        let target = match &req.target {
            None => stages.len() - 1,
            Some(t) => stage_index(&names, t).ok_or_else(|| {
                BuildError::Other(format!("target stage {t:?} could not be found in {file}"))
            })?,
        };
        let bases: Vec<String> = stages
            .iter()
            .map(|s| {
                lexer
                    .expand_word(&s.from.image, &meta_args)
                    .map_err(|e| fail(s.from_node, e.to_string()))
            })
            .collect::<Result<_>>()?;
        let copy_froms: Vec<Vec<String>> = stages
            .iter()
            .map(|s| {
                s.instructions
                    .iter()
                    .flat_map(|(_, ins)| match ins {
                        Instruction::Copy(c) => c.from.iter().cloned().collect::<Vec<_>>(),
                        // RUN --mount=from=STAGE needs that stage too.
                        Instruction::Run(r) => {
                            r.mounts.iter().filter_map(|m| m.from.clone()).collect()
                        }
                        _ => Vec::new(),
                    })
                    .map(|f| lexer.expand_word(&f, &meta_args).unwrap_or(f))
                    .collect()
            })
            .collect();
        let deps = |i: usize| -> Vec<usize> {
            let mut d: Vec<usize> = stage_index(&names[..i], &bases[i]).into_iter().collect();
            d.extend(copy_froms[i].iter().filter_map(|f| stage_ref(&names, f)));
            d
        };
        let needed =
            crate::schedule::ordered_stages(&names, &deps, target).map_err(|(by, on, m)| {
                // Point at the instruction of stage `by` that names stage `on`.
                let stage = &stages[by];
                let node = stage
                    .instructions
                    .iter()
                    .find(|(_, ins)| {
                        let froms: Vec<&String> = match ins {
                            Instruction::Copy(c) => c.from.iter().collect(),
                            Instruction::Run(r) => {
                                r.mounts.iter().filter_map(|m| m.from.as_ref()).collect()
                            }
                            _ => Vec::new(),
                        };
                        froms.iter().any(|f| {
                            let f = lexer
                                .expand_word(f, &meta_args)
                                .unwrap_or_else(|_| f.to_string());
                            stage_ref(&names, &f) == Some(on)
                        })
                    })
                    .map_or(stage.from_node, |(n, _)| n);
                fail(node, m)
            })?;
        // The image has the target's layers, and those of every stage it is based on.
        let mut exported = vec![false; stages.len()];
        let mut at = Some(target);
        while let Some(i) = at.filter(|&i| !exported[i]) {
            exported[i] = true;
            at = stage_index(&names[..i], &bases[i]);
        }
        let total: usize = needed
            .iter()
            .map(|&i| stages[i].instructions.len() + 1)
            .sum();
        // Step numbers follow the order the stages are listed in (dependencies first),
        // whichever order they finish in.
        let mut first_step = vec![0usize; stages.len()];
        let mut next = 1;
        for &i in &needed {
            first_step[i] = next;
            next += stages[i].instructions.len() + 1;
        }
        let ctx = StageRun {
            stages: &stages,
            names: &names,
            bases: &bases,
            meta_args: &meta_args,
            lexer: &lexer,
            req,
            file,
            total,
            exported: &exported,
        };
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        let run =
            |i: usize, done: &[Option<StageState>]| self.build_stage(&ctx, i, first_step[i], done);
        if let Some(log) = self.cache_log {
            log.lock().unwrap_or_else(|p| p.into_inner()).target = Some(target);
        }
        let mut done = crate::schedule::run_stages(&needed, stages.len(), jobs, &deps, &run)?;
        let state = done[target].take().expect("target stage ran");
        if let Some(c) = self.cache {
            c.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
        self.finish(state, req)
    }

    #[allow(clippy::too_many_arguments)]
    fn from(
        &self,
        image: &str,
        earlier: &[Option<String>],
        done: &[Option<StageState>],
        stage: &parser::Stage,
        meta: &[(String, String)],
        req: &BuildRequest,
    ) -> Result<StageState, String> {
        if image.is_empty() {
            return Err("FROM requires an image name (it expanded to nothing)".into());
        }
        let name = stage.name.clone();
        let fresh_cfg = |image: ImageConfig| ConfigState {
            image,
            ..Default::default()
        };
        let mut state = if let Some(j) = stage_index(earlier, image) {
            let mut s = done[j].clone().ok_or("base stage did not run")?;
            s.name = name;
            s.cfg.cmd_set = false;
            s.cfg.args.clear();
            s
        } else if image.eq_ignore_ascii_case("scratch") {
            // As BuildKit's empty image: the default PATH and `/` as working directory.
            let cfg = ImageConfig {
                architecture: req.platform.architecture.clone(),
                os: req.platform.os.clone(),
                variant: req.platform.variant.clone(),
                config: snapshotter::config::RunConfig {
                    env: Some(vec![
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    ]),
                    working_dir: Some("/".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            StageState {
                name,
                layers: Vec::new(),
                cfg: fresh_cfg(cfg),
                no_cache: false,
                step: 0,
                index: 0,
                from_cache: false,
                created_by: String::new(),
                exported: true,
                source_date_epoch: self.source_date_epoch,
            }
        } else {
            let desc = self.find_or_pull(image, &req.platform)?;
            let base = read_image(self.store, &desc).map_err(|e| e.to_string())?;
            let chain = self
                .snapshots
                .ensure_image(self.store, &base)
                .map_err(|e| e.to_string())?;
            let layers = base
                .manifest
                .layers()
                .iter()
                .zip(&base.config.rootfs.diff_ids)
                .zip(chain)
                .map(|((d, diff), (chain, dir))| {
                    Ok(StageLayer {
                        pending: false,
                        layer: Layer {
                            descriptor: d.clone(),
                            diff_id: diff.parse().map_err(|e| format!("{e}"))?,
                        },
                        chain,
                        dir,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            StageState {
                name,
                layers,
                cfg: fresh_cfg(base.config),
                no_cache: false,
                step: 0,
                index: 0,
                from_cache: false,
                created_by: String::new(),
                exported: true,
                source_date_epoch: self.source_date_epoch,
            }
        };
        // Global ARGs are visible in a stage only once redeclared there; keep them at hand.
        state.cfg.globals = meta.to_vec();
        Ok(state)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        state: &mut StageState,
        node: &Node,
        ins: &Instruction,
        lexer: &Lexer,
        req: &BuildRequest,
        slot: &Digest,
        earlier: &Earlier<'_>,
    ) -> Result<(), String> {
        match ins {
            Instruction::Arg(args) => {
                for a in args {
                    let env = state.cfg.expansion_env();
                    let v = match lookup(&req.build_args, &a.name) {
                        Some(v) => Some(v),
                        None => match &a.default {
                            Some(d) => Some(lexer.expand_word(d, &env).map_err(|e| e.to_string())?),
                            // Redeclaring a global ARG without a value takes the global value.
                            None => lookup(&state.cfg.globals, &a.name),
                        },
                    };
                    state.cfg.args.retain(|(n, _)| n != &a.name);
                    state.cfg.args.push((a.name.clone(), v.unwrap_or_default()));
                }
                // BuildKit records the declarations (defaults expanded), not the values given.
                let env = state.cfg.expansion_env();
                let decls: Vec<String> = args
                    .iter()
                    .map(|a| match &a.default {
                        Some(d) => format!(
                            "{}={}",
                            a.name,
                            lexer.expand_word(d, &env).unwrap_or_else(|_| d.clone())
                        ),
                        None => a.name.clone(),
                    })
                    .collect();
                push_history(state, format!("ARG {}", decls.join(" ")), true);
                Ok(())
            }
            Instruction::Run(run) => self.run_step(state, run, lexer, req, slot, earlier),
            // WORKDIR makes its directory (owned by the USER) in a layer of its own, as BuildKit does.
            Instruction::Workdir(_) => {
                apply_config(&mut state.cfg, ins, lexer)?;
                let wd = state
                    .cfg
                    .image
                    .config
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".into());
                if wd == "/" {
                    push_history(state, format!("WORKDIR {wd}"), true);
                    return Ok(());
                }
                self.workdir_step(state, &wd, slot)
            }
            Instruction::Copy(spec) => {
                self.copy_step(state, spec, false, lexer, req, slot, earlier)
            }
            Instruction::Add(spec) => self.copy_step(state, spec, true, lexer, req, slot, earlier),
            ins => {
                let before = state.cfg.clone();
                if apply_config(&mut state.cfg, ins, lexer)? {
                    // ONBUILD leaves no history entry, as in BuildKit.
                    if !matches!(ins, Instruction::Onbuild(_)) {
                        let text =
                            crate::history::config(ins, &before, &state.cfg, lexer, &node.original);
                        push_history(state, text, true);
                    }
                    Ok(())
                } else {
                    Err(format!("{} is not supported here", node.keyword))
                }
            }
        }
    }

    /// Builds stage `i` (its steps numbered from `first_step`), seeing the finished stages.
    fn build_stage(
        &self,
        ctx: &StageRun<'_>,
        i: usize,
        first_step: usize,
        done: &[Option<StageState>],
    ) -> Result<StageState> {
        let StageRun {
            stages,
            names,
            bases,
            meta_args,
            lexer,
            req,
            file,
            total,
            exported,
        } = *ctx;
        let fail = |n: &Node, message: String| BuildError::Instruction {
            at: format!("{file}:{}", n.start),
            message,
        };
        let stage = &stages[i];
        let mut step = first_step;
        (self.progress)(BuildEvent::Step {
            number: step,
            total,
            instruction: &stage.from_node.original,
        });
        let mut state = self
            .from(&bases[i], &names[..i], done, stage, meta_args, req)
            .map_err(|m| fail(stage.from_node, m))?;
        state.step = step;
        state.index = i;
        state.exported = exported[i];
        state.no_cache = req.no_cache_filter.iter().any(|f| {
            f == &i.to_string()
                || stage
                    .name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(f))
        });
        // The base image's ONBUILD triggers run first, and are not passed on.
        let triggers = state.cfg.image.config.on_build.take().unwrap_or_default();
        for (k, trigger) in triggers.iter().enumerate() {
            let text = format!("ONBUILD {trigger}");
            (self.progress)(BuildEvent::Step {
                number: step,
                total,
                instruction: &text,
            });
            let on = |m: String| fail(stage.from_node, format!("ONBUILD {trigger}: {m}"));
            let node = parser::parse_line(trigger).map_err(|e| on(e.to_string()))?;
            let ins = parser::instruction(&node).map_err(|e| on(e.to_string()))?;
            if matches!(ins, Instruction::From(_) | Instruction::Onbuild(_)) {
                return Err(on(format!(
                    "{} is not allowed as an ONBUILD trigger",
                    node.keyword
                )));
            }
            let slot = Digest::of(
                format!("{}\0{file}\0{i}\0onbuild{k}", req.context.display()).as_bytes(),
            );
            let earlier = Earlier {
                names,
                done,
                platform: &req.platform,
            };
            self.step(&mut state, &node, &ins, lexer, req, &slot, &earlier)
                .map_err(on)?;
        }
        (self.progress)(BuildEvent::StepDone {
            number: step,
            cached: false,
        });
        for (n, (node, ins)) in stage.instructions.iter().enumerate() {
            step += 1;
            (self.progress)(BuildEvent::Step {
                number: step,
                total,
                instruction: &node.original,
            });
            // Where this step stands, to explain a cache miss against the last build.
            let slot =
                Digest::of(format!("{}\0{file}\0{i}\0{n}", req.context.display()).as_bytes());
            let earlier = Earlier {
                names,
                done,
                platform: &req.platform,
            };
            state.step = step;
            state.from_cache = false;
            self.step(&mut state, node, ins, lexer, req, &slot, &earlier)
                .map_err(|m| fail(node, m))?;
            (self.progress)(BuildEvent::StepDone {
                number: step,
                cached: state.from_cache,
            });
        }
        Ok(state)
    }

    /// Writes the image of the target stage and names it.
    fn finish(&self, state: StageState, req: &BuildRequest) -> Result<StoredImage> {
        let mut image = state.cfg.image;
        let created = creation_time_at(self.source_date_epoch).map_err(BuildError::Other)?;
        image.created = Some(created);
        image.rootfs.diff_ids = state
            .layers
            .iter()
            .map(|l| l.layer.diff_id.to_string())
            .collect();
        if req.inline_cache
            && let Some(log) = self.cache_log
        {
            let log = log.lock().unwrap_or_else(|p| p.into_inner());
            let records = log.select(crate::remote_cache::ExportMode::Min);
            image.build_cache = Some(crate::remote_cache::inline_document(&records));
        }
        // The image needs its layers' blobs (not their snapshots) in the store; a layer
        // another build made for a stage the image did not have gets its blob now.
        let mut layers: Vec<Layer> = Vec::with_capacity(state.layers.len());
        for l in &state.layers {
            let layer = self.written_layer(l).map_err(BuildError::Other)?;
            self.ensure_blob(&layer.descriptor)
                .map_err(BuildError::Other)?;
            layers.push(layer);
        }
        // HEALTHCHECK, ONBUILD and SHELL exist only in Docker's config format: it is the
        // default when they are used; asked for OCI, they are dropped with a warning (as
        // buildah does).
        let c = &mut image.config;
        let docker_only = c.healthcheck.is_some()
            || c.on_build.as_ref().is_some_and(|o| !o.is_empty())
            || c.shell.is_some();
        // (Docker's format has no zstd layers: a zstd build stays OCI.)
        let zstd = layers
            .iter()
            .any(|l| l.descriptor.media_type().to_string().ends_with("+zstd"));
        let format = match req.format {
            Some(f) => f,
            None if docker_only && !zstd => ImageFormat::Docker,
            None => ImageFormat::Oci,
        };
        if format == ImageFormat::Oci && docker_only {
            (self.progress)(BuildEvent::Warning(
                "HEALTHCHECK, ONBUILD and SHELL are not part of the OCI image format and are left out (use --format docker to keep them)",
            ));
            c.healthcheck = None;
            c.on_build = None;
            c.shell = None;
        }
        let stored = write_image_as(self.store, &image, &layers, format)?;
        for t in &req.tags {
            self.store.tag(t, &stored.descriptor)?;
        }
        Ok(stored)
    }
}

/// Adds a history entry; a layer step's text is the one it left in `state.created_by`.
pub(crate) fn push_history(state: &mut StageState, created_by: String, empty: bool) {
    state.cfg.image.history.push(History {
        created: creation_time_at(state.source_date_epoch).ok(),
        created_by: Some(created_by),
        comment: Some("buildkit.dockerfile.v0".into()),
        empty_layer: empty.then_some(true),
        ..Default::default()
    });
}

fn lookup(args: &[(String, String)], k: &str) -> Option<String> {
    args.iter()
        .rev()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.clone())
}

/// The target and every stage it builds on (`FROM <stage>`), in file order.
/// A `--from` value naming a stage (of those given): its name or its index.
pub(crate) fn stage_ref(stages: &[Option<String>], from: &str) -> Option<usize> {
    match from.parse::<usize>() {
        Ok(n) => (n < stages.len()).then_some(n),
        Err(_) => stage_index(stages, from),
    }
}

/// BuildKit's predefined platform build args.
fn predefined_args(target: &Platform) -> Vec<(String, String)> {
    let build = Platform::host();
    let mut v = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", &build)] {
        v.push((format!("{prefix}PLATFORM"), p.to_string()));
        v.push((format!("{prefix}OS"), p.os.clone()));
        v.push((format!("{prefix}ARCH"), p.architecture.clone()));
        v.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    v
}

/// Build args given but never declared by an ARG that the build reached (Docker warns).
pub fn unused_build_args(dockerfile: &str, given: &[(String, String)]) -> Vec<String> {
    let Ok(doc) = parser::parse(dockerfile) else {
        return Vec::new();
    };
    let Ok((globals, stages)) = parser::stages(&doc) else {
        return Vec::new();
    };
    let mut declared: std::collections::BTreeSet<String> =
        globals.into_iter().map(|a| a.name).collect();
    for s in &stages {
        for (_, ins) in &s.instructions {
            if let Instruction::Arg(args) = ins {
                declared.extend(args.iter().map(|a| a.name.clone()));
            }
        }
    }
    const PROXY: &[&str] = &[
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ];
    let mut out: Vec<String> = given
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| {
            !declared.contains(k)
                && !PROXY.contains(&k.to_ascii_uppercase().as_str())
                && k != "SOURCE_DATE_EPOCH"
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The earlier stage a name refers to, if any (stage names are case-insensitive).
fn stage_index(names: &[Option<String>], image: &str) -> Option<usize> {
    let wanted = image.to_ascii_lowercase();
    names
        .iter()
        .position(|n| n.as_deref() == Some(wanted.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshotter::MemStore;
    use vm_sandbox::{ExitStatus, FakeSandbox};

    fn builder_run(
        dockerfile: &str,
        sandbox: &FakeSandbox,
        store: &MemStore,
        root: &std::path::Path,
    ) -> Result<StoredImage> {
        let snapshots = Snapshots::open(root).unwrap();
        let b = Builder {
            compression: Default::default(),
            root_mode: snapshotter::snapshot::RootMode::Overlay,
            cache: None,
            source: None,
            always_pull: false,
            remote_cache: None,
            cache_log: None,
            source_date_epoch: None,
            store,
            snapshots: &snapshots,
            sandbox,
            progress: &|_| {},
            capture_output: false,
        };
        b.build(&BuildRequest {
            dockerfile: dockerfile.into(),
            dockerfile_name: "Dockerfile".into(),
            context: root.to_path_buf(),
            build_args: vec![("A".into(), "from-cli".into())],
            target: None,
            tags: vec!["out".parse().unwrap()],
            platform: Platform::host(),
            ignore: None,
            secrets: Vec::new(),
            ssh: Vec::new(),
            format: None,
            inline_cache: false,
            no_cache_filter: Vec::new(),
        })
    }

    #[test]
    fn run_steps_get_shell_env_and_their_writes_become_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        let sandbox = FakeSandbox::new(|rootfs, spec| {
            std::fs::write(rootfs.upper.join("made-by-run"), spec.argv.join(" ")).unwrap();
            ExitStatus::Code(0)
        });
        let img = builder_run(
            "FROM scratch\nARG A\nENV E=1\nSHELL [\"/bin/bash\", \"-c\"]\nWORKDIR /x\nRUN echo $A\nRUN [\"/prog\", \"arg\"]\n",
            &sandbox,
            &store,
            dir.path(),
        )
        .unwrap();
        let runs = sandbox.runs();
        assert_eq!(runs[0].argv, ["/bin/bash", "-c", "echo $A"]);
        assert_eq!(runs[1].argv, ["/prog", "arg"]);
        // FROM scratch starts with BuildKit's default PATH.
        assert_eq!(
            runs[0].env,
            [
                "A=from-cli",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "E=1"
            ]
        );
        assert_eq!(runs[0].cwd, "/x");
        // WORKDIR made a layer (its directory), and so did each RUN.
        assert_eq!(img.config.rootfs.diff_ids.len(), 3);
        assert_eq!(
            img.config
                .history
                .iter()
                .filter(|h| h.empty_layer != Some(true))
                .count(),
            3
        );
        assert_eq!(
            store.resolve(&"out".parse().unwrap()).unwrap(),
            Some(img.descriptor)
        );
    }

    #[test]
    fn a_failing_run_names_the_instruction_and_tags_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        let sandbox = FakeSandbox::new(|_, _| ExitStatus::Code(2));
        let err =
            builder_run("FROM scratch\n\nRUN false\n", &sandbox, &store, dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Dockerfile:3:1: process \"/bin/sh -c false\" did not complete successfully: exit code: 2"
        );
        assert!(store.images().unwrap().is_empty());
    }
}
