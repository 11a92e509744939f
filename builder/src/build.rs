//! `kiln build`: stages and steps of a Dockerfile executed into an image.
//!
//! Stages run in file order; only the target and the stages it depends on (`FROM stage`)
//! run. Each `RUN` goes through the [`Sandbox`] on an overlay of the stage's layers plus a
//! fresh upper directory, which then becomes the step's layer; `COPY` fills an upper directory
//! from the context; config instructions change only the image config.

use std::path::PathBuf;

use parser::{Command, Instruction, Lexer, Node};
use snapshotter::config::History;
use snapshotter::diff::{DiffOptions, write_layer};
use snapshotter::image::{StoredImage, read_image, write_image};
use snapshotter::layer::Layer;
use snapshotter::snapshot::{Active, Snapshots, chain_id};
use snapshotter::{Digest, ImageConfig, Reference, Store};
use vm_sandbox::{Network, RootFs, RunIo, RunSpec, Sandbox};

use crate::copy::{CopyAttrs, context_path, copy_into, read_through_layers};
use crate::dispatch::{ConfigState, apply_config};
use crate::error::{BuildError, Result};
use crate::platform::{Platform, creation_time};

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
}

/// The pieces a build runs with.
pub struct Builder<'a> {
    /// Blobs and image names.
    pub store: &'a dyn Store,
    /// Unpacked layers.
    pub snapshots: &'a Snapshots,
    /// Where RUN steps run.
    pub sandbox: &'a dyn Sandbox,
    /// Progress lines (`[2/5] RUN make`).
    pub progress: &'a dyn Fn(&str),
}

/// A layer of a stage, with its chain ID and unpacked directory.
#[derive(Clone, Debug)]
struct StageLayer {
    layer: Layer,
    chain: Digest,
    dir: PathBuf,
}

#[derive(Clone, Debug)]
struct StageState {
    name: Option<String>,
    layers: Vec<StageLayer>,
    cfg: ConfigState,
}

impl StageState {
    fn lower_dirs(&self) -> Vec<PathBuf> {
        self.layers.iter().rev().map(|l| l.dir.clone()).collect()
    }
}

struct Stage {
    from: Node,
    body: Vec<(Node, Instruction)>,
}

impl Builder<'_> {
    /// Builds the request's target stage and tags the image.
    pub fn build(&self, req: &BuildRequest) -> Result<StoredImage> {
        let file = req.dockerfile_name.as_str();
        let doc = parser::parse(&req.dockerfile).map_err(|error| BuildError::Parse {
            file: file.into(),
            error,
        })?;
        let lexer = Lexer::new(doc.directives.escape);
        let at = |n: &Node| format!("{file}:{}", n.start);
        let fail = |n: &Node, message: String| BuildError::Instruction { at: at(n), message };

        // Meta ARGs before the first FROM, then stages.
        let mut meta_args: Vec<(String, String)> = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for node in &doc.nodes {
            let ins = parser::instruction(node, doc.directives.escape).map_err(|error| {
                BuildError::Parse {
                    file: file.into(),
                    error,
                }
            })?;
            match (&ins, stages.last_mut()) {
                (Instruction::From { .. }, _) => stages.push(Stage {
                    from: node.clone(),
                    body: Vec::new(),
                }),
                (Instruction::Arg(args), None) => {
                    for (k, default) in args {
                        let v = lookup(&req.build_args, k).or_else(|| {
                            default
                                .as_ref()
                                .and_then(|d| lexer.expand_word(d, &meta_args).ok())
                        });
                        if let Some(v) = v {
                            meta_args.push((k.clone(), v));
                        }
                    }
                }
                (_, None) => {
                    return Err(fail(
                        node,
                        format!(
                            "{} before the first FROM (only ARG may come first)",
                            node.keyword
                        ),
                    ));
                }
                (_, Some(stage)) => stage.body.push((node.clone(), ins)),
            }
        }
        if stages.is_empty() {
            return Err(BuildError::Other(format!(
                "{file}: no FROM instruction: the file has no build stage"
            )));
        }
        let names: Vec<Option<String>> = stages
            .iter()
            .map(|s| stage_alias(&s.from, doc.directives.escape))
            .collect();
        let target = match &req.target {
            None => stages.len() - 1,
            Some(t) => names
                .iter()
                .position(|n| n.as_deref() == Some(&t.to_ascii_lowercase()))
                .ok_or_else(|| {
                    BuildError::Other(format!("target stage {t:?} could not be found in {file}"))
                })?,
        };
        let needed = self.needed_stages(&stages, &names, target, &lexer, &meta_args);
        let total: usize = needed.iter().map(|&i| stages[i].body.len() + 1).sum();
        let mut step = 0;
        let mut done: Vec<Option<StageState>> = vec![None; stages.len()];
        for i in needed {
            let stage = &stages[i];
            step += 1;
            (self.progress)(&format!("[{step}/{total}] {}", stage.from.original));
            let mut state = self
                .from(stage, &names, &done, &lexer, &meta_args, req, i)
                .map_err(|m| fail(&stage.from, m))?;
            for (node, ins) in &stage.body {
                step += 1;
                (self.progress)(&format!("[{step}/{total}] {}", node.original));
                self.step(&mut state, node, ins, &lexer, req)
                    .map_err(|m| fail(node, m))?;
            }
            done[i] = Some(state);
        }
        let state = done[target].take().expect("target stage ran");
        self.finish(state, req)
    }

    /// The target and every stage it reaches through `FROM <stage>`, in file order.
    fn needed_stages(
        &self,
        stages: &[Stage],
        names: &[Option<String>],
        target: usize,
        lexer: &Lexer,
        meta: &[(String, String)],
    ) -> Vec<usize> {
        let mut needed = vec![false; stages.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut needed[i], true) {
                continue;
            }
            if let Some(base) = from_image(&stages[i].from, lexer, meta)
                && let Some(j) = stage_index(&names[..i], &base)
            {
                todo.push(j);
            }
        }
        (0..stages.len()).filter(|&i| needed[i]).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn from(
        &self,
        stage: &Stage,
        names: &[Option<String>],
        done: &[Option<StageState>],
        lexer: &Lexer,
        meta: &[(String, String)],
        req: &BuildRequest,
        index: usize,
    ) -> Result<StageState, String> {
        let image = from_image(&stage.from, lexer, meta).ok_or("FROM requires an image name")?;
        let name = names[index].clone();
        let fresh_cfg = |image: ImageConfig| ConfigState {
            image,
            cmd_set: false,
            args: Vec::new(),
        };
        if let Some(j) = stage_index(&names[..index], &image) {
            let mut s = done[j].clone().ok_or("base stage did not run")?;
            s.name = name;
            s.cfg.cmd_set = false;
            s.cfg.args.clear();
            return Ok(s);
        }
        if image.eq_ignore_ascii_case("scratch") {
            let cfg = ImageConfig {
                architecture: req.platform.architecture.clone(),
                os: req.platform.os.clone(),
                variant: req.platform.variant.clone(),
                ..Default::default()
            };
            return Ok(StageState {
                name,
                layers: Vec::new(),
                cfg: fresh_cfg(cfg),
            });
        }
        let reference: Reference = image.parse().map_err(|e| format!("{e}"))?;
        let desc = self
            .store
            .resolve(&reference)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("image {image} not found in the local store (pulling from registries is not supported yet; use kiln import)"))?;
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
                    layer: Layer {
                        descriptor: d.clone(),
                        diff_id: diff.parse().map_err(|e| format!("{e}"))?,
                    },
                    chain,
                    dir,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(StageState {
            name,
            layers,
            cfg: fresh_cfg(base.config),
        })
    }

    fn step(
        &self,
        state: &mut StageState,
        node: &Node,
        ins: &Instruction,
        lexer: &Lexer,
        req: &BuildRequest,
    ) -> Result<(), String> {
        match ins {
            Instruction::Arg(args) => {
                for (k, default) in args {
                    let env = state.cfg.expansion_env();
                    let v = match lookup(&req.build_args, k) {
                        Some(v) => Some(v),
                        None => default
                            .as_ref()
                            .map(|d| lexer.expand_word(d, &env))
                            .transpose()
                            .map_err(|e| e.to_string())?,
                    };
                    state.cfg.args.retain(|(n, _)| n != k);
                    state.cfg.args.push((k.clone(), v.unwrap_or_default()));
                }
                Ok(())
            }
            Instruction::Run { command, flags } => self.run_step(state, node, command, flags),
            Instruction::Copy {
                add,
                sources,
                dest,
                flags,
            } => {
                if *add {
                    return Err("ADD is not supported yet; use COPY (archives and URLs come with the builder issue)".into());
                }
                self.copy_step(state, node, sources, dest, flags, lexer, req)
            }
            Instruction::Other(n) => Err(format!("{} is not supported yet", n.keyword)),
            ins => {
                if apply_config(&mut state.cfg, ins, lexer)? {
                    push_history(state, node, true);
                    Ok(())
                } else {
                    Err(format!("{} is not supported here", node.keyword))
                }
            }
        }
    }

    fn run_step(
        &self,
        state: &mut StageState,
        node: &Node,
        command: &Command,
        flags: &[(String, String)],
    ) -> Result<(), String> {
        let mut network = Network::Host;
        for (k, v) in flags {
            match (k.as_str(), v.as_str()) {
                ("network", "none") => network = Network::None,
                ("network", "default" | "host") => network = Network::Host,
                ("network", other) => {
                    return Err(format!(
                        "unsupported network mode {other:?} (use default, none or host)"
                    ));
                }
                (flag, _) => return Err(format!("RUN --{flag} is not supported yet")),
            }
        }
        let argv = state.cfg.argv(command);
        // Build args are in the environment of RUN, under ENV of the same name.
        let mut env: Vec<String> = state
            .cfg
            .args
            .iter()
            .filter(|(k, _)| state.cfg.image.config.env_get(k).is_none())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(state.cfg.image.config.env.clone().unwrap_or_default());
        let c = &state.cfg.image.config;
        let spec = RunSpec {
            argv: argv.clone(),
            env,
            cwd: c.working_dir.clone().unwrap_or_else(|| "/".into()),
            user: c.user.clone().unwrap_or_default(),
            network,
            hostname: String::new(),
        };
        let active = self.snapshots.prepare().map_err(|e| e.to_string())?;
        let rootfs = RootFs {
            lower: state.lower_dirs(),
            upper: active.upper.clone(),
            work: active.work.clone(),
        };
        let outcome = self
            .sandbox
            .run(&rootfs, &spec, RunIo::OutputToStderr)
            .map_err(|e| e.to_string())?;
        if !outcome.status.success() {
            let how = match outcome.status {
                vm_sandbox::ExitStatus::Code(c) => format!("exit code: {c}"),
                vm_sandbox::ExitStatus::Signal(s) => format!("killed by signal {s}"),
            };
            return Err(format!(
                "process {:?} did not complete successfully: {how}",
                argv.join(" ")
            ));
        }
        self.commit(state, node, active)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        &self,
        state: &mut StageState,
        node: &Node,
        sources: &[String],
        dest: &str,
        flags: &[(String, String)],
        lexer: &Lexer,
        req: &BuildRequest,
    ) -> Result<(), String> {
        let mut attrs = CopyAttrs::default();
        let env = state.cfg.expansion_env();
        let expand = |w: &str| lexer.expand_word(w, &env).map_err(|e| e.to_string());
        for (k, v) in flags {
            match k.as_str() {
                "chown" => attrs.owner = Some(self.resolve_owner(state, &expand(v)?)?),
                "chmod" => {
                    attrs.mode = Some(u32::from_str_radix(&expand(v)?, 8).map_err(|_| {
                        format!("invalid --chmod {v:?}: only octal modes are supported yet")
                    })?)
                }
                "link" => {}
                other => return Err(format!("COPY --{other} is not supported yet")),
            }
        }
        let dest = expand(dest)?;
        let workdir = state
            .cfg
            .image
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let dest_abs = if dest.starts_with('/') {
            dest.clone()
        } else {
            format!("{}/{dest}", workdir.trim_end_matches('/'))
        };
        let into_dir = dest.ends_with('/') || dest == "." || sources.len() > 1;
        let active = self.snapshots.prepare().map_err(|e| e.to_string())?;
        for src in sources {
            let src = expand(src)?;
            if src.contains(['*', '?', '[']) {
                return Err(format!(
                    "wildcards in COPY sources are not supported yet: {src}"
                ));
            }
            let path = context_path(&req.context, &src)?;
            let md = std::fs::symlink_metadata(&path).map_err(|_| {
                format!("failed to compute cache key: \"{src}\" not found in the build context")
            })?;
            let target = if into_dir && !md.is_dir() {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{}/{name}", dest_abs.trim_end_matches('/'))
            } else {
                dest_abs.clone()
            };
            copy_into(&active.upper, &path, &target, attrs)?;
        }
        self.commit(state, node, active)
    }

    fn resolve_owner(&self, state: &StageState, spec: &str) -> Result<(u32, u32), String> {
        let lowers = state.lower_dirs();
        let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
        let lookup = |file: &str, name: &str, field: usize| -> Result<u32, String> {
            if let Ok(n) = name.parse() {
                return Ok(n);
            }
            let text = read_through_layers(&lowers, file).unwrap_or_default();
            text.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&name))
                .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
                .ok_or_else(|| {
                    format!(
                        "unable to find {} {name} in /{file}",
                        if file.ends_with("passwd") {
                            "user"
                        } else {
                            "group"
                        }
                    )
                })
        };
        let uid = lookup("etc/passwd", u, 2)?;
        let gid = if spec.contains(':') {
            lookup("etc/group", g, 2)?
        } else {
            lookup("etc/passwd", u, 3).unwrap_or(uid)
        };
        Ok((uid, gid))
    }

    /// Turns an active snapshot into the stage's next layer.
    fn commit(&self, state: &mut StageState, node: &Node, active: Active) -> Result<(), String> {
        let layer = write_layer(self.store, &active.upper, &DiffOptions::from_env())
            .map_err(|e| e.to_string())?;
        let chain = chain_id(state.layers.last().map(|l| &l.chain), &layer.diff_id);
        let dir = self
            .snapshots
            .commit(active, &chain)
            .map_err(|e| e.to_string())?;
        state.layers.push(StageLayer { layer, chain, dir });
        push_history(state, node, false);
        Ok(())
    }

    fn finish(&self, state: StageState, req: &BuildRequest) -> Result<StoredImage> {
        let mut image = state.cfg.image;
        let created = creation_time().map_err(BuildError::Other)?;
        image.created = Some(created);
        image.rootfs.diff_ids = state
            .layers
            .iter()
            .map(|l| l.layer.diff_id.to_string())
            .collect();
        let layers: Vec<Layer> = state.layers.into_iter().map(|l| l.layer).collect();
        let stored = write_image(self.store, &image, &layers)?;
        for t in &req.tags {
            self.store.tag(t, &stored.descriptor)?;
        }
        Ok(stored)
    }
}

fn push_history(state: &mut StageState, node: &Node, empty: bool) {
    let created_by = match node.keyword.as_str() {
        "RUN" => format!("RUN {} # buildkit", node.original[3..].trim_start()),
        _ => format!("{} # buildkit", node.original),
    };
    state.cfg.image.history.push(History {
        created: creation_time().ok(),
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

fn stage_alias(from: &Node, escape: char) -> Option<String> {
    match parser::instruction(from, escape) {
        Ok(Instruction::From { alias, .. }) => alias,
        _ => None,
    }
}

/// The FROM image with meta ARGs expanded.
fn from_image(from: &Node, lexer: &Lexer, meta: &[(String, String)]) -> Option<String> {
    let meta = meta.to_vec();
    match parser::instruction(from, lexer.escape()) {
        Ok(Instruction::From { image, .. }) => lexer
            .expand_word(&image, &meta)
            .ok()
            .filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// The earlier stage a FROM names, if any (stage names are case-insensitive).
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
            store,
            snapshots: &snapshots,
            sandbox,
            progress: &|_| {},
        };
        b.build(&BuildRequest {
            dockerfile: dockerfile.into(),
            dockerfile_name: "Dockerfile".into(),
            context: root.to_path_buf(),
            build_args: vec![("A".into(), "from-cli".into())],
            target: None,
            tags: vec!["out".parse().unwrap()],
            platform: Platform::host(),
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
        assert_eq!(runs[0].env, ["A=from-cli", "E=1"]);
        assert_eq!(runs[0].cwd, "/x");
        // Each RUN made a layer, and the second one sees the first one's files below it.
        assert_eq!(img.config.rootfs.diff_ids.len(), 2);
        assert_eq!(
            img.config
                .history
                .iter()
                .filter(|h| h.empty_layer != Some(true))
                .count(),
            2
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
