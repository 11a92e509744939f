//! How `kiln build` shows its progress (`--progress`): plain lines (CI logs, pipes), a live
//! line per running step on a terminal (indicatif: elapsed time and the last line of
//! output), or one JSON object per event (`json`, for CI tools); then a closing summary and,
//! with `--explain-cache`, what the cache did for every layer step. Stages may run at once,
//! so everything is kept per step number. No colours are used, so `NO_COLOR` holds by
//! construction.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Instant;

use builder::BuildEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The chosen rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Plain,
    Tty,
    Json,
    Quiet,
}

impl Mode {
    /// `--progress` (auto, plain, tty, json) and `-q`: auto is tty on a terminal, plain when
    /// stderr is not one or `CI=true`.
    pub(crate) fn choose(flag: &str, quiet: bool) -> Result<Mode, String> {
        if quiet {
            return Ok(Mode::Quiet);
        }
        match flag {
            "plain" => Ok(Mode::Plain),
            "tty" => Ok(Mode::Tty),
            "json" | "rawjson" => Ok(Mode::Json),
            "quiet" => Ok(Mode::Quiet),
            "auto" => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                Ok(if std::io::stderr().is_terminal() && !ci {
                    Mode::Tty
                } else {
                    Mode::Plain
                })
            }
            other => Err(format!("--progress={other}: use auto, plain, tty or json")),
        }
    }

    /// Whether RUN output should come through the progress sink (it goes straight to stderr
    /// in plain mode).
    pub(crate) fn captures_output(self) -> bool {
        matches!(self, Mode::Tty | Mode::Json | Mode::Quiet)
    }
}

/// One step as the renderer knows it.
struct StepRecord {
    instruction: String,
    started: Instant,
    decision: Option<String>,
    bar: Option<ProgressBar>,
    tail: Vec<String>,
}

#[derive(Default)]
struct State {
    steps: BTreeMap<usize, StepRecord>,
    ran: usize,
    cached: usize,
    /// Per finished layer step: its number, instruction and what the cache did.
    decisions: Vec<(usize, String, String)>,
}

/// Renders build events; [`Renderer::summary`] closes the build.
pub(crate) struct Renderer {
    mode: Mode,
    started: Instant,
    multi: MultiProgress,
    state: Mutex<State>,
}

fn json_line(v: serde_json::Value) {
    eprintln!("{v}");
}

fn is_layer_step(instruction: &str) -> bool {
    let keyword = instruction.split_whitespace().next().unwrap_or_default();
    ["RUN", "COPY", "ADD", "ONBUILD"]
        .iter()
        .any(|k| keyword.eq_ignore_ascii_case(k))
}

impl Renderer {
    pub(crate) fn new(mode: Mode) -> Renderer {
        Renderer {
            mode,
            started: Instant::now(),
            multi: MultiProgress::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// One event.
    pub(crate) fn event(&self, e: BuildEvent<'_>) {
        let mut st = self.state.lock().expect("progress lock");
        match e {
            BuildEvent::Step {
                number,
                total,
                instruction,
            } => self.step(&mut st, number, total, instruction),
            BuildEvent::StepDone { number, cached } => self.step_done(&mut st, number, cached),
            BuildEvent::Cached { number } => {
                if let Some(r) = st.steps.get_mut(&number) {
                    r.decision = Some("CACHED".into());
                }
                match self.mode {
                    Mode::Plain => eprintln!("  CACHED"),
                    Mode::Json => json_line(serde_json::json!({"type": "cached", "step": number})),
                    _ => {}
                }
            }
            BuildEvent::CacheMiss { number, reason } => {
                if let Some(r) = st.steps.get_mut(&number) {
                    r.decision = Some(format!("ran: {reason}"));
                    if let Some(b) = &r.bar {
                        b.println(format!("[{number}] cache miss: {reason}"));
                    }
                }
                match self.mode {
                    Mode::Plain => eprintln!("  cache miss: {reason}"),
                    Mode::Json => json_line(
                        serde_json::json!({"type": "cache-miss", "step": number, "reason": reason}),
                    ),
                    _ => {}
                }
            }
            BuildEvent::CacheSkipped { number } => {
                if let Some(r) = st.steps.get_mut(&number) {
                    r.decision = Some("ran: --no-cache-filter".into());
                }
                match self.mode {
                    Mode::Plain => eprintln!("  cache skipped: --no-cache-filter"),
                    Mode::Json => {
                        json_line(serde_json::json!({"type": "cache-skipped", "step": number}))
                    }
                    _ => {}
                }
            }
            BuildEvent::Output { number, line } => {
                if let Some(r) = st.steps.get_mut(&number) {
                    r.tail.push(line.to_string());
                    if r.tail.len() > 6 {
                        r.tail.remove(0);
                    }
                    if let Some(b) = &r.bar {
                        let tail: String = line.chars().take(60).collect();
                        b.set_message(format!("{}  | {tail}", r.instruction));
                    }
                }
                match self.mode {
                    Mode::Plain => eprintln!("{line}"),
                    Mode::Json => {
                        json_line(serde_json::json!({"type": "log", "step": number, "line": line}))
                    }
                    _ => {}
                }
            }
            BuildEvent::Warning(w) => match self.mode {
                Mode::Json => json_line(serde_json::json!({"type": "warning", "message": w})),
                Mode::Quiet => {}
                Mode::Tty => {
                    let _ = self.multi.println(format!("[Warning] {w}"));
                }
                Mode::Plain => eprintln!("[Warning] {w}"),
            },
        }
    }

    fn step(&self, st: &mut State, number: usize, total: usize, instruction: &str) {
        let first_line = instruction.lines().next().unwrap_or_default().to_string();
        let bar = (self.mode == Mode::Tty).then(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
                    .expect("template is valid"),
            );
            bar.set_prefix(format!("{number}/{total}"));
            bar.set_message(first_line.clone());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        match self.mode {
            Mode::Plain => eprintln!("[{number}/{total}] {instruction}"),
            Mode::Json => json_line(
                serde_json::json!({"type": "step", "step": number, "total": total, "instruction": instruction}),
            ),
            _ => {}
        }
        st.steps.insert(
            number,
            StepRecord {
                instruction: first_line,
                started: Instant::now(),
                decision: None,
                bar,
                tail: Vec::new(),
            },
        );
    }

    fn step_done(&self, st: &mut State, number: usize, cached: bool) {
        let Some(r) = st.steps.remove(&number) else {
            return;
        };
        let secs = r.started.elapsed().as_secs_f64();
        if cached {
            st.cached += 1;
        } else if !r.instruction.starts_with("FROM ") {
            st.ran += 1;
        }
        if is_layer_step(&r.instruction) {
            let decision = r.decision.clone().unwrap_or_else(|| {
                if cached {
                    "CACHED".into()
                } else {
                    "ran: not in the cache".into()
                }
            });
            st.decisions.push((number, r.instruction.clone(), decision));
        }
        match self.mode {
            Mode::Json => json_line(
                serde_json::json!({"type": "step-done", "step": number, "cached": cached, "seconds": (secs * 1000.0).round() / 1000.0}),
            ),
            Mode::Tty => {
                if let Some(bar) = r.bar {
                    let how = if cached {
                        "CACHED".to_string()
                    } else {
                        format!("{secs:.1}s")
                    };
                    bar.set_style(
                        ProgressStyle::with_template("{msg}").expect("template is valid"),
                    );
                    bar.finish_with_message(format!("[{number}] {}  {how}", r.instruction));
                }
            }
            _ => {}
        }
    }

    /// After a failed build: steps still open are marked failed; on a terminal their last
    /// lines of output are shown (they were not printed as they came).
    pub(crate) fn failed(&self) {
        let mut st = self.state.lock().expect("progress lock");
        for (number, r) in std::mem::take(&mut st.steps) {
            if let Some(bar) = r.bar {
                bar.set_style(ProgressStyle::with_template("{msg}").expect("template is valid"));
                bar.abandon_with_message(format!("[{number}] {}  failed", r.instruction));
            }
            if self.mode == Mode::Tty {
                for l in &r.tail {
                    eprintln!("  > {l}");
                }
            }
        }
    }

    /// `--explain-cache`: what the cache did for every layer step of the build.
    pub(crate) fn explain_cache(&self) {
        let mut st = self.state.lock().expect("progress lock");
        st.decisions.sort();
        if self.mode == Mode::Json {
            for (n, ins, d) in &st.decisions {
                json_line(
                    serde_json::json!({"type": "cache-report", "step": n, "instruction": ins, "decision": d}),
                );
            }
            return;
        }
        eprintln!("cache report:");
        for (n, ins, d) in &st.decisions {
            eprintln!("  [{n}] {ins}: {d}");
        }
    }

    /// The closing summary: time, steps run and cached, the image and its size.
    pub(crate) fn summary(&self, image: &str, size: u64) {
        let st = self.state.lock().expect("progress lock");
        let secs = self.started.elapsed().as_secs_f64();
        match self.mode {
            Mode::Json => json_line(
                serde_json::json!({"type": "done", "image": image, "seconds": (secs * 1000.0).round() / 1000.0, "steps_run": st.ran, "steps_cached": st.cached, "size": size}),
            ),
            Mode::Quiet => {}
            _ => eprintln!(
                "built in {secs:.2}s: {} steps run, {} cached; image {} ({})",
                st.ran,
                st.cached,
                image,
                crate::commands::images::human_size(size)
            ),
        }
    }
}
