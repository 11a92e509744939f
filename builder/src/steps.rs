//! The layer-making steps (RUN, COPY, WORKDIR); the cache around them is in `step_cache`.

use std::path::PathBuf;

use parser::Lexer;
use snapshotter::Digest;
use vm_sandbox::{Network, RootFs, RunIo, RunSpec};

use crate::build::{BuildEvent, BuildRequest, Builder, Earlier, StageState, stage_ref};
use crate::cache::StepInputs;
use crate::chmod::ModeSpec;
use crate::copy::{CopyAttrs, context_path, copy_from_layers, read_through_layers};
use crate::sources::{self, Item, SourcePlan, SourceRequest};

/// `--chown` and `--chmod` of a COPY, resolved.
fn attrs_of(
    b: &Builder<'_>,
    state: &StageState,
    spec: &parser::CopySpec,
    expand: &dyn Fn(&str) -> Result<String, String>,
) -> Result<CopyAttrs, String> {
    let mut attrs = CopyAttrs::default();
    if let Some(c) = &spec.chown {
        attrs.owner = Some(b.resolve_owner(state, &expand(c)?)?);
    }
    if let Some(c) = &spec.chmod {
        attrs.mode = Some(ModeSpec::parse(&expand(c)?)?);
    }
    Ok(attrs)
}

/// A COPY's destination made absolute (relative to WORKDIR), and whether sources go into it
/// as a directory (a trailing `/`, `.`, or several sources).
fn copy_destination(
    state: &StageState,
    spec: &parser::CopySpec,
    expand: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(String, bool), String> {
    let dest = expand(&spec.dest)?;
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
    let into_dir = dest.ends_with('/') || dest == "." || spec.sources.len() > 1;
    Ok((dest_abs, into_dir))
}

/// A RUN's argument vector, with BuildKit's heredoc rules: `RUN <<EOF` alone runs the body
/// (through the shell, or as a script at `/dev/pipes/EOF` when it starts with `#!`); any other
/// command with heredocs goes to the shell whole, bodies and delimiters put back.
fn run_argv(
    state: &StageState,
    run: &parser::Run,
) -> Result<(Vec<String>, Vec<vm_sandbox::InlineFile>), String> {
    if run.heredocs.is_empty() {
        return Ok((state.cfg.argv(&run.command), Vec::new()));
    }
    let parser::Command::Shell(text) = &run.command else {
        return Err("heredocs need the shell form of RUN".into());
    };
    if is_lone_heredoc(text) {
        let doc = &run.heredocs[0];
        if doc.content.starts_with("#!") {
            let file = vm_sandbox::InlineFile {
                name: doc.name.clone(),
                content: doc.content.clone(),
            };
            return Ok((vec![format!("/dev/pipes/{}", doc.name)], vec![file]));
        }
        let body = parser::Command::Shell(doc.content.clone());
        return Ok((state.cfg.argv(&body), Vec::new()));
    }
    let mut full = text.clone();
    for doc in &run.heredocs {
        full.push('\n');
        full.push_str(&doc.content);
        full.push_str(&doc.name);
    }
    Ok((state.cfg.argv(&parser::Command::Shell(full)), Vec::new()))
}

/// Whether a command is nothing but one heredoc opener (`<<EOF`, `<<-"EOF"`, `3<<EOF`).
fn is_lone_heredoc(text: &str) -> bool {
    let t = text.trim();
    let t = t.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(t) = t.strip_prefix("<<") else {
        return false;
    };
    let t = t.strip_prefix('-').unwrap_or(t).trim_start();
    let t = t.trim_matches(['"', '\'']);
    let mut chars = t.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a COPY source word is the `<<NAME` opener of one of its heredocs.
fn is_heredoc_marker(word: &str, names: &[&str]) -> bool {
    let w = word.trim_start_matches(|c: char| c.is_ascii_digit());
    w.strip_prefix("<<").is_some_and(|rest| {
        let rest = rest
            .strip_prefix('-')
            .unwrap_or(rest)
            .trim_matches(['"', '\'']);
        names.contains(&rest)
    })
}

/// Expands variables in a heredoc body the way BuildKit does for COPY sources: the body is
/// one word, quotes and backslashes kept as text.
fn expand_heredoc(lexer: &Lexer, env: &dyn parser::Env, body: &str) -> Result<String, String> {
    // Quotes and escape characters become literal by escaping them, except that an escaped
    // `$` stays escaped (no expansion), as in a shell heredoc.
    let esc = lexer.escape();
    let mut word = String::with_capacity(body.len() + 16);
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == esc && chars.peek() == Some(&'$') {
            word.push(esc);
            word.push(chars.next().expect("peeked"));
        } else if c == esc || c == '\'' || c == '"' {
            word.push(esc);
            word.push(c);
        } else {
            word.push(c);
        }
    }
    lexer.expand_word(&word, env).map_err(|e| e.to_string())
}

/// The parent part of a cache key: the chain below the step.
pub(crate) fn parent_of(state: &StageState) -> String {
    state
        .layers
        .last()
        .map_or_else(|| "scratch".to_string(), |l| l.chain.to_string())
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_step(
        &self,
        state: &mut StageState,
        run: &parser::Run,
        lexer: &Lexer,
        req: &BuildRequest,
        slot: &Digest,
        earlier: &Earlier<'_>,
    ) -> Result<(), String> {
        let workdir = state
            .cfg
            .image
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let env_now = state.cfg.expansion_env();
        let expand = |w: &str| lexer.expand_word(w, &env_now).map_err(|e| e.to_string());
        let mounts = self.prepare_mounts(&run.mounts, &workdir, req, earlier, &expand)?;
        if run.security == Some(parser::Security::Insecure) {
            return Err("RUN --security=insecure is not allowed".into());
        }
        let network = match run.network {
            Some(parser::NetworkMode::None) => Network::None,
            _ => Network::Host,
        };
        let (argv, inline_files) = run_argv(state, run)?;
        state.created_by = crate::history::run(&state.cfg.args, &argv);
        // Build args are in the environment of RUN, under ENV of the same name.
        let mut env: Vec<String> = state
            .cfg
            .args
            .iter()
            .filter(|(k, _)| state.cfg.image.config.env_get(k).is_none())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(state.cfg.image.config.env.clone().unwrap_or_default());
        env.extend(mounts.env.iter().cloned());
        let c = &state.cfg.image.config;
        let spec = RunSpec {
            argv: argv.clone(),
            env,
            cwd: c.working_dir.clone().unwrap_or_else(|| "/".into()),
            user: c.user.clone().unwrap_or_default(),
            network,
            hostname: String::new(),
            inline_files,
            mounts: mounts.mounts.clone(),
            limits: vm_sandbox::Limits {
                processes: Some(crate::STEP_MAX_PROCESSES),
                // The build as a whole holds the memory limit (`kiln build --memory`).
                memory: None,
            },
            tty: false,
            read_only: false,
        };
        // Secret values reach the environment but not the cache key.
        let secret_env: Vec<&String> = mounts
            .env
            .iter()
            .filter(|e| !e.starts_with("SSH_AUTH_SOCK="))
            .collect();
        let inputs = StepInputs {
            parent: parent_of(state),
            instruction: serde_json::to_string(&argv).expect("argv serializes"),
            env: spec
                .env
                .iter()
                .filter(|e| !secret_env.contains(e))
                .cloned()
                .collect(),
            context: [spec.cwd.clone(), spec.user.clone(), format!("{network:?}")]
                .into_iter()
                .chain(
                    spec.inline_files
                        .iter()
                        .map(|f| format!("{}:{}", f.name, f.content)),
                )
                .chain(mounts.key.iter().cloned())
                .collect(),
            ..Default::default()
        };
        self.with_cache(state, slot, inputs, |this, state, _| {
            let lower = state.lower_dirs();
            let active = this
                .snapshots
                .prepare_root(&lower, this.root_mode)
                .map_err(|e| e.to_string())?;
            let rootfs = RootFs {
                direct: active.direct_root.is_some(),
                lower: lower.clone(),
                upper: active
                    .direct_root
                    .clone()
                    .unwrap_or_else(|| active.upper.clone()),
                work: active.work.clone(),
                throwaway: true,
            };
            let outcome = this.run_sandboxed(&rootfs, &spec, state.step)?;
            if outcome.oom_killed {
                return Err(format!(
                    "process {:?} did not complete successfully: out of memory (killed by the OOM killer at the build's memory limit, --memory)",
                    argv.join(" ")
                ));
            }
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
            let written = active.direct_root.as_ref().unwrap_or(&active.upper);
            crate::run_mounts::remove_mount_stubs(written, &lower, &mounts.targets);
            active.collect_changes(&lower).map_err(|e| e.to_string())?;
            Ok(active)
        })
    }

    /// COPY or ADD from the build context (or, for ADD, URLs and git repositories).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_step(
        &self,
        state: &mut StageState,
        spec: &parser::CopySpec,
        is_add: bool,
        lexer: &Lexer,
        req: &BuildRequest,
        slot: &Digest,
        earlier: &Earlier<'_>,
    ) -> Result<(), String> {
        let env = state.cfg.expansion_env();
        let expand = |w: &str| lexer.expand_word(w, &env).map_err(|e| e.to_string());
        let attrs = attrs_of(self, state, spec, &expand)?;
        if let Some(from) = &spec.from {
            if is_add {
                return Err("ADD does not take --from (use COPY --from)".into());
            }
            let from = expand(from)?;
            return self.copy_from_step(state, spec, &from, &expand, attrs, slot, earlier);
        }
        let (dest_abs, _) = copy_destination(state, spec, &expand)?;
        let dest = expand(&spec.dest)?;
        // `.dockerignore`: paths relative to the context root.
        let rel = |p: &std::path::Path| {
            p.strip_prefix(&req.context)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        };
        let ignored = |p: &std::path::Path, is_dir: bool| -> bool {
            let Some(m) = &req.ignore else { return false };
            let r = rel(p);
            m.matches(&r) && !(is_dir && m.may_reinclude_below(&r))
        };
        let exclude = if spec.exclude.is_empty() {
            None
        } else {
            let patterns = spec
                .exclude
                .iter()
                .map(|p| expand(p))
                .collect::<Result<Vec<_>, _>>()?;
            Some(
                parser::dockerignore::Matcher::new(&patterns)
                    .map_err(|e| format!("--exclude: {e}"))?,
            )
        };
        let heredocs = spec
            .heredocs
            .iter()
            .map(|h| {
                let body = if h.expand {
                    expand_heredoc(lexer, &env, &h.content)?
                } else {
                    h.content.clone()
                };
                Ok((h.name.clone(), body))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let heredoc_names: Vec<&str> = spec.heredocs.iter().map(|h| h.name.as_str()).collect();
        let sources = spec
            .sources
            .iter()
            .filter(|s| !is_heredoc_marker(s, &heredoc_names))
            .map(|s| expand(s))
            .collect::<Result<Vec<_>, _>>()?;
        let sreq = SourceRequest {
            context: &req.context,
            sources,
            heredocs,
            dest_abs,
            dest_is_dir: dest.ends_with('/') || dest == "." || dest.is_empty(),
            is_add,
            parents: spec.parents,
            exclude: exclude.as_ref(),
            checksum: spec.checksum.as_deref().map(&expand).transpose()?,
            keep_git_dir: spec.keep_git_dir,
            unpack: spec.unpack,
            ignored: &ignored,
        };
        let plan = sources::plan(&sreq)?;
        let mut shown: Vec<String> = sreq.sources.clone();
        shown.extend(spec.heredocs.iter().map(|h| format!("<<{}", h.name)));
        state.created_by = crate::history::copy(if is_add { "ADD" } else { "COPY" }, &shown, &dest);
        let mut files = plan.identities.clone();
        let started = std::time::Instant::now();
        if let Some(c) = self.cache {
            let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
            for item in &plan.items {
                if let Item::Context {
                    path, exclude_root, ..
                } = item
                {
                    c.hash_source(
                        &req.context,
                        path,
                        &mut files,
                        &SourcePlan::excluded(&sreq, exclude_root),
                    )
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                }
            }
        }
        tracing::debug!(
            files = files.len(),
            ms = started.elapsed().as_millis() as u64,
            "sources hashed"
        );
        let targets: Vec<String> = plan
            .items
            .iter()
            .map(|item| match item {
                Item::Context {
                    path,
                    target,
                    unpack,
                    ..
                } => format!(
                    "{}->{target}{}",
                    path.strip_prefix(&req.context).unwrap_or(path).display(),
                    if unpack.is_some() { " (unpack)" } else { "" }
                ),
                Item::File { target, mode, .. } => format!("file:{mode:o}->{target}"),
                Item::Tree { target, .. } => format!("tree->{target}"),
            })
            .collect();
        let inputs = StepInputs {
            parent: parent_of(state),
            instruction: format!(
                "{} {targets:?} owner={:?} mode={:?}",
                if is_add { "ADD" } else { "COPY" },
                attrs.owner,
                attrs.mode
            ),
            files,
            ..Default::default()
        };
        self.with_cache(state, slot, inputs, |this, state, previous| {
            let active = this.snapshots.prepare().map_err(|e| e.to_string())?;
            let lower = state.lower_dirs();
            let dest = crate::copy::Dest {
                upper: &active.upper,
                lower: &lower,
                previous: previous.map(|p| crate::copy::PreviousCopy {
                    upper: &p.upper,
                    context: &req.context,
                    unchanged: &p.unchanged,
                }),
            };
            let started = std::time::Instant::now();
            plan.apply(&sreq, &dest, attrs)?;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "sources copied");
            Ok(active)
        })
    }

    /// The layer directories (top-most first) and top chain ID of an earlier stage (by name
    /// or index) or an image (pulled when missing), for `--from`.
    pub(crate) fn layers_of(
        &self,
        from: &str,
        earlier: &Earlier<'_>,
    ) -> Result<(Vec<PathBuf>, String), String> {
        match stage_ref(earlier.names, from) {
            Some(j) => {
                let s = earlier.done[j]
                    .as_ref()
                    .ok_or_else(|| format!("stage {from} did not run"))?;
                for l in s.layers.iter().filter(|l| l.pending) {
                    self.ensure_present(l)?;
                }
                Ok((s.lower_dirs(), parent_of(s)))
            }
            None if from.parse::<usize>().is_ok() => {
                Err("there is no earlier stage with that index".into())
            }
            None => {
                let d = self.find_or_pull(from, earlier.platform)?;
                let img =
                    snapshotter::image::read_image(self.store, &d).map_err(|e| e.to_string())?;
                let chain = self
                    .snapshots
                    .ensure_image(self.store, &img)
                    .map_err(|e| e.to_string())?;
                let top = chain
                    .last()
                    .map_or_else(|| "scratch".to_string(), |(c, _)| c.to_string());
                Ok((chain.into_iter().rev().map(|(_, d)| d).collect(), top))
            }
        }
    }

    /// `COPY --from=STAGE|INDEX|IMAGE`: files from another stage's (or an image's) root.
    #[allow(clippy::too_many_arguments)]
    fn copy_from_step(
        &self,
        state: &mut StageState,
        spec: &parser::CopySpec,
        from: &str,
        expand: &dyn Fn(&str) -> Result<String, String>,
        attrs: CopyAttrs,
        slot: &Digest,
        earlier: &Earlier<'_>,
    ) -> Result<(), String> {
        // The source's chain ID names its content, so the key needs no files: a cache hit
        // does not fetch a stage that an imported cache served.
        let top = match stage_ref(earlier.names, from) {
            Some(j) => parent_of(
                earlier.done[j]
                    .as_ref()
                    .ok_or_else(|| format!("COPY --from={from}: stage {from} did not run"))?,
            ),
            None => {
                self.layers_of(from, earlier)
                    .map_err(|e| format!("COPY --from={from}: {e}"))?
                    .1
            }
        };
        let (dest_abs, into_dir) = copy_destination(state, spec, expand)?;
        let sources = spec
            .sources
            .iter()
            .map(|w| expand(w))
            .collect::<Result<Vec<_>, _>>()?;
        state.created_by = crate::history::copy("COPY", &sources, &expand(&spec.dest)?);
        let inputs = StepInputs {
            parent: parent_of(state),
            instruction: format!(
                "COPY --from={top} {sources:?} -> {dest_abs} into_dir={into_dir} owner={:?} mode={:?}",
                attrs.owner, attrs.mode
            ),
            ..Default::default()
        };
        self.with_cache(state, slot, inputs, |this, state, _| {
            let (layers, _) = this
                .layers_of(from, earlier)
                .map_err(|e| format!("COPY --from={from}: {e}"))?;
            let mut plan: Vec<(PathBuf, String)> = Vec::new();
            for src in &sources {
                let rel = context_path(std::path::Path::new(""), src)?;
                let (_, md) =
                    snapshotter::copyfs::merged_lookup(&layers, &rel).ok_or_else(|| {
                        format!("failed to compute cache key: \"{src}\" not found in {from}")
                    })?;
                let target = match rel.file_name() {
                    Some(name) if into_dir && !md.is_dir() => format!(
                        "{}/{}",
                        dest_abs.trim_end_matches('/'),
                        name.to_string_lossy()
                    ),
                    _ => dest_abs.clone(),
                };
                plan.push((rel, target));
            }
            let active = this.snapshots.prepare().map_err(|e| e.to_string())?;
            let lower = state.lower_dirs();
            let dest = crate::copy::Dest {
                upper: &active.upper,
                lower: &lower,
                previous: None,
            };
            for (rel, target) in &plan {
                copy_from_layers(&layers, rel, &dest, target, attrs)?;
            }
            Ok(active)
        })
    }

    /// Runs a RUN step's process; its output goes to stderr, or line by line to the
    /// progress sink when the builder captures it.
    fn run_sandboxed(
        &self,
        rootfs: &RootFs,
        spec: &RunSpec,
        step: usize,
    ) -> Result<vm_sandbox::RunOutcome, String> {
        if !self.capture_output {
            return self
                .sandbox
                .run(rootfs, spec, RunIo::OutputToStderr)
                .map_err(|e| e.to_string());
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("create a pipe: {e}"))?;
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                use std::io::BufRead as _;
                let lines = std::io::BufReader::new(std::fs::File::from(read));
                for line in lines.split(b'\n').map_while(Result::ok) {
                    (self.progress)(BuildEvent::Output {
                        number: step,
                        line: &String::from_utf8_lossy(&line),
                    });
                }
            });
            // The sandbox keeps its own copies; ours closes when `io` drops, so the reader
            // ends when the process does.
            let io = RunIo::OutputTo(std::sync::Arc::new(write));
            let result = self
                .sandbox
                .run(rootfs, spec, io)
                .map_err(|e| e.to_string());
            let _ = reader.join();
            result
        })
    }

    /// WORKDIR's layer: the directory and its missing parents, owned by the USER.
    pub(crate) fn workdir_step(
        &self,
        state: &mut StageState,
        wd: &str,
        slot: &Digest,
    ) -> Result<(), String> {
        let user = state.cfg.image.config.user.clone().unwrap_or_default();
        let owner = if user.is_empty() {
            None
        } else {
            Some(self.resolve_owner(state, &user)?)
        };
        let inputs = StepInputs {
            parent: parent_of(state),
            instruction: format!("WORKDIR {wd} owner={owner:?}"),
            ..Default::default()
        };
        state.created_by = format!("WORKDIR {wd}");
        self.with_cache(state, slot, inputs, |this, state, _| {
            let active = this.snapshots.prepare().map_err(|e| e.to_string())?;
            let lower = state.lower_dirs();
            let dest = crate::copy::Dest {
                upper: &active.upper,
                lower: &lower,
                previous: None,
            };
            crate::copy::prepare_dir(&dest, wd, owner)?;
            Ok(active)
        })
    }

    /// `--chown` user and group, by number or by name in the stage's /etc/passwd and /etc/group.
    fn resolve_owner(&self, state: &StageState, spec: &str) -> Result<(u32, u32), String> {
        // The user database may sit in layers an imported cache has not fetched yet.
        for l in state.layers.iter().filter(|l| l.pending) {
            self.ensure_present(l)?;
        }
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
}
