//! How `kiln build` shows its progress (`--progress`): plain lines (CI logs, pipes), a live
//! line per step on a terminal (indicatif: elapsed time and the last line of output), or
//! one JSON object per event (`json`, for CI tools); then a closing summary. No colours are
//! used, so `NO_COLOR` holds by construction.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Instant;

use builder::BuildEvent;
use indicatif::{ProgressBar, ProgressStyle};

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

struct State {
    step: usize,
    step_started: Instant,
    instruction: String,
    ran: usize,
    cached: usize,
    bar: Option<ProgressBar>,
    last_output: Vec<String>,
    /// Per layer step: its number, instruction and what the cache did (`--explain-cache`).
    decisions: Vec<(usize, String, String)>,
    /// The current step's cache decision, when one was reported.
    decision: Option<String>,
}

/// Renders build events; [`Renderer::summary`] closes the build.
pub(crate) struct Renderer {
    mode: Mode,
    started: Instant,
    state: Mutex<State>,
}

fn json_line(v: serde_json::Value) {
    eprintln!("{v}");
}

impl Renderer {
    pub(crate) fn new(mode: Mode) -> Renderer {
        Renderer {
            mode,
            started: Instant::now(),
            state: Mutex::new(State {
                step: 0,
                step_started: Instant::now(),
                instruction: String::new(),
                ran: 0,
                cached: 0,
                bar: None,
                last_output: Vec::new(),
                decisions: Vec::new(),
                decision: None,
            }),
        }
    }

    fn close_step(&self, st: &mut State, cached: bool) {
        if st.step == 0 {
            return;
        }
        let keyword = st
            .instruction
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD")
            || st.instruction.starts_with("ONBUILD ")
        {
            let decision = st.decision.take().unwrap_or_else(|| {
                if cached {
                    "CACHED".into()
                } else {
                    "ran: not in the cache".into()
                }
            });
            let entry = (st.step, st.instruction.clone(), decision);
            st.decisions.push(entry);
        }
        st.decision = None;
        let secs = st.step_started.elapsed().as_secs_f64();
        let is_layer_step = !st.instruction.starts_with("FROM ");
        if !cached && is_layer_step {
            st.ran += 1;
        }
        match self.mode {
            Mode::Json => json_line(
                serde_json::json!({"type": "step-done", "step": st.step, "cached": cached, "seconds": (secs * 1000.0).round() / 1000.0}),
            ),
            Mode::Tty => {
                if let Some(bar) = st.bar.take() {
                    let how = if cached {
                        "CACHED".to_string()
                    } else {
                        format!("{secs:.1}s")
                    };
                    bar.set_style(
                        ProgressStyle::with_template("{msg}").expect("template is valid"),
                    );
                    bar.finish_with_message(format!("[{}] {}  {how}", st.step, st.instruction));
                }
            }
            _ => {}
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
            } => {
                self.close_step(&mut st, false);
                st.step = number;
                st.step_started = Instant::now();
                st.instruction = instruction.lines().next().unwrap_or_default().to_string();
                st.last_output.clear();
                match self.mode {
                    Mode::Plain => eprintln!("[{number}/{total}] {instruction}"),
                    Mode::Json => json_line(
                        serde_json::json!({"type": "step", "step": number, "total": total, "instruction": instruction}),
                    ),
                    Mode::Tty => {
                        let bar = ProgressBar::new_spinner();
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
                                .expect("template is valid"),
                        );
                        bar.set_prefix(format!("{number}/{total}"));
                        bar.set_message(st.instruction.clone());
                        bar.enable_steady_tick(std::time::Duration::from_millis(120));
                        st.bar = Some(bar);
                    }
                    Mode::Quiet => {}
                }
            }
            BuildEvent::Cached => {
                st.cached += 1;
                st.decision = Some("CACHED".into());
                match self.mode {
                    Mode::Plain => eprintln!("  CACHED"),
                    Mode::Json => json_line(serde_json::json!({"type": "cached", "step": st.step})),
                    _ => {}
                }
                self.close_step(&mut st, true);
                st.step = 0;
            }
            BuildEvent::CacheMiss(why) => {
                st.decision = Some(format!("ran: {why}"));
                self.cache_miss(&st, why);
            }
            BuildEvent::CacheSkipped => {
                st.decision = Some("ran: --no-cache-filter".into());
                match self.mode {
                    Mode::Plain => eprintln!("  cache skipped: --no-cache-filter"),
                    Mode::Json => {
                        json_line(serde_json::json!({"type": "cache-skipped", "step": st.step}))
                    }
                    _ => {}
                }
            }
            BuildEvent::Output(line) => self.output(&mut st, line),
            BuildEvent::Warning(w) => match self.mode {
                Mode::Json => json_line(serde_json::json!({"type": "warning", "message": w})),
                Mode::Quiet => {}
                _ => eprintln!("[Warning] {w}"),
            },
        }
    }

    fn cache_miss(&self, st: &State, why: &str) {
        match self.mode {
            Mode::Plain => eprintln!("  cache miss: {why}"),
            Mode::Json => {
                json_line(serde_json::json!({"type": "cache-miss", "step": st.step, "reason": why}))
            }
            Mode::Tty => {
                if let Some(b) = &st.bar {
                    b.println(format!("[{}] cache miss: {why}", st.step));
                }
            }
            Mode::Quiet => {}
        }
    }

    fn output(&self, st: &mut State, line: &str) {
        st.last_output.push(line.to_string());
        if st.last_output.len() > 6 {
            st.last_output.remove(0);
        }
        match self.mode {
            Mode::Plain => eprintln!("{line}"),
            Mode::Json => {
                json_line(serde_json::json!({"type": "log", "step": st.step, "line": line}))
            }
            Mode::Tty => {
                if let Some(b) = &st.bar {
                    let tail: String = line.chars().take(60).collect();
                    b.set_message(format!("{}  | {tail}", st.instruction));
                }
            }
            Mode::Quiet => {}
        }
    }

    /// After a failed build: on a terminal the step's last lines of output (they were not
    /// printed as they came).
    pub(crate) fn failed(&self) {
        let mut st = self.state.lock().expect("progress lock");
        if let Some(bar) = st.bar.take() {
            bar.set_style(ProgressStyle::with_template("{msg}").expect("template is valid"));
            bar.abandon_with_message(format!("[{}] {}  failed", st.step, st.instruction));
        }
        if self.mode == Mode::Tty {
            for l in &st.last_output {
                eprintln!("  > {l}");
            }
        }
    }

    /// `--explain-cache`: what the cache did for every layer step of the build.
    pub(crate) fn explain_cache(&self) {
        let st = self.state.lock().expect("progress lock");
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
        let mut st = self.state.lock().expect("progress lock");
        self.close_step(&mut st, false);
        st.step = 0;
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
