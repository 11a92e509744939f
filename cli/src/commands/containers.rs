//! `kiln ps`, `logs`, `top`, `stop`, `kill`, `wait` and `rm`.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::args::{ContainersArgs, KillArgs, LogsArgs, PsArgs, RmArgs, StopArgs, TopArgs};
use crate::containers::logs::{PrintOptions, print};
use crate::containers::{Container, Containers, State};

/// `SIGTERM`, `TERM`, `term` or `15`.
pub(crate) fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow::anyhow!("invalid signal: {s}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("invalid signal: {s}"))
}

/// Runs `each` for every named container, printing errors as they come; fails if any did.
fn for_each(
    root: &Path,
    names: &[String],
    mut each: impl FnMut(&Containers, &Container, &str) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let containers = Containers::open(root)?;
    let mut failed = false;
    for name in names {
        let r = containers
            .find(name)
            .and_then(|c| each(&containers, &c, name));
        if let Err(e) = r {
            eprintln!("kiln: error: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits until the container has ended (its monitor wrote how), up to `timeout`.
fn wait_exited(c: &Container, timeout: Option<Duration>) -> bool {
    let start = Instant::now();
    loop {
        if matches!(c.state(), State::Exited { .. }) || !c.dir.exists() {
            return true;
        }
        if timeout.is_some_and(|t| start.elapsed() > t) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(c: &Container, sig: Signal) -> anyhow::Result<()> {
    let State::Running { .. } = c.state() else {
        bail!(
            "cannot kill container {}: container {} is not running",
            c.config.name,
            &c.config.id[..12]
        );
    };
    c.signal(sig)
}

pub(crate) fn kill(root: &Path, a: KillArgs) -> anyhow::Result<ExitCode> {
    let sig = parse_signal(&a.signal)?;
    for_each(root, &a.containers, |_, c, name| {
        signal(c, sig)?;
        println!("{name}");
        Ok(())
    })
}

pub(crate) fn stop(root: &Path, a: StopArgs) -> anyhow::Result<ExitCode> {
    for_each(root, &a.containers, |_, c, name| {
        if let State::Running { .. } = c.state() {
            let sig = parse_signal(&c.config.stop_signal).unwrap_or(Signal::SIGTERM);
            let _ = c.signal(sig);
            if !wait_exited(c, Some(Duration::from_secs(a.time))) {
                let _ = c.signal(Signal::SIGKILL);
                wait_exited(c, Some(Duration::from_secs(30)));
            }
        }
        println!("{name}");
        Ok(())
    })
}

pub(crate) fn wait(root: &Path, a: ContainersArgs) -> anyhow::Result<ExitCode> {
    for_each(root, &a.containers, |_, c, _| {
        wait_exited(c, None);
        let code = c.exit_record().map_or(255, |r| r.code());
        println!("{code}");
        Ok(())
    })
}

pub(crate) fn rm(root: &Path, a: RmArgs) -> anyhow::Result<ExitCode> {
    for_each(root, &a.containers, |containers, c, name| {
        if let State::Running { .. } = c.state() {
            if !a.force {
                bail!(
                    "you cannot remove a running container {}; stop the container before attempting removal or force remove",
                    &c.config.id[..12]
                );
            }
            let _ = c.signal(Signal::SIGKILL);
            wait_exited(c, Some(Duration::from_secs(30)));
        }
        // A container run with --rm may be removing itself.
        if c.dir.exists() {
            c.remove(containers)?;
        }
        if a.volumes {
            for v in &c.config.anonymous_volumes {
                let dir = root.join("volumes").join(v);
                snapshotter::gc::remove_tree(&dir).with_context(|| format!("remove volume {v}"))?;
            }
        }
        println!("{name}");
        Ok(())
    })
}

pub(crate) fn logs(root: &Path, a: LogsArgs) -> anyhow::Result<ExitCode> {
    let containers = Containers::open(root)?;
    let c = containers.find(&a.container)?;
    let tail = match a.tail.as_str() {
        "all" => None,
        n => Some(
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("invalid --tail {n:?}: a number or \"all\""))?,
        ),
    };
    let opts = PrintOptions {
        timestamps: a.timestamps,
        tail,
    };
    print(&c.log_path(), &opts, a.follow, || {
        !matches!(c.state(), State::Running { .. } | State::Created)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Docker's way of saying how long ago, without "ago".
fn duration_words(secs: i64) -> String {
    match secs {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 86400 * 2 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

fn seconds_since(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds())
        .unwrap_or(0)
}

fn status_text(c: &Container, state: &State) -> (String, &'static str) {
    match state {
        State::Created => ("Created".into(), "created"),
        State::Running { .. } => {
            let since = c.started().map_or(0, |s| seconds_since(&s));
            (format!("Up {}", duration_words(since)), "running")
        }
        State::Exited { code, finished } => {
            let ago = if finished.is_empty() {
                String::new()
            } else {
                format!(" {} ago", duration_words(seconds_since(finished)))
            };
            (format!("Exited ({code}){ago}"), "exited")
        }
    }
}

pub(crate) fn ps(root: &Path, a: PsArgs) -> anyhow::Result<ExitCode> {
    if a.format != "table" && a.format != "json" {
        bail!("unknown --format {:?} (use table or json)", a.format);
    }
    let containers = Containers::open(root)?;
    let mut rows = Vec::new();
    let mut out = std::io::stdout().lock();
    for c in containers.list()? {
        let state = c.state();
        if !a.all && !matches!(state, State::Running { .. }) {
            continue;
        }
        let id = if a.no_trunc {
            c.config.id.clone()
        } else {
            c.config.id[..12].to_string()
        };
        if a.quiet {
            writeln!(out, "{id}")?;
            continue;
        }
        let command = c
            .config
            .spec
            .argv
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let (status, state_word) = status_text(&c, &state);
        if a.format == "json" {
            let row = json!({
                "ID": id,
                "Image": c.config.image,
                "Command": format!("\"{command}\""),
                "CreatedAt": c.config.created,
                "RunningFor": super::images::ago(&c.config.created),
                "Status": status,
                "State": state_word,
                "Names": c.config.name,
                "Ports": "",
            });
            writeln!(out, "{row}")?;
            continue;
        }
        let shown = if a.no_trunc || command.chars().count() <= 20 {
            command
        } else {
            format!("{}…", command.chars().take(19).collect::<String>())
        };
        rows.push([
            id,
            c.config.image.clone(),
            format!("\"{shown}\""),
            super::images::ago(&c.config.created),
            status,
            String::new(),
            c.config.name.clone(),
        ]);
    }
    if a.quiet || a.format == "json" {
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = *w));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(|s| s.as_str()).collect()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The host PIDs of every process in the PID namespace of `pid`.
fn pids_in_namespace_of(pid: i32) -> anyhow::Result<Vec<i32>> {
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .with_context(|| format!("read the PID namespace of {pid}"))?;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{p}/ns/pid"))
            .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// Like `docker top`: the host's `ps` with the given options, only the container's rows.
pub(crate) fn top(root: &Path, a: TopArgs) -> anyhow::Result<ExitCode> {
    let containers = Containers::open(root)?;
    let c = containers.find(&a.container)?;
    let State::Running { pid } = c.state() else {
        bail!("container {} is not running", a.container);
    };
    if c.config.vm.is_some() {
        bail!(
            "top is not supported for container {}: its processes run in a microVM (--isolation vm), out of the host's sight",
            a.container
        );
    }
    let pids = pids_in_namespace_of(pid)?;
    let ps_args = if a.ps_args.is_empty() {
        vec!["-ef".to_string()]
    } else {
        a.ps_args.clone()
    };
    let o = std::process::Command::new("ps")
        .args(&ps_args)
        .output()
        .context("run ps")?;
    if !o.status.success() {
        bail!(
            "ps {}: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let Some(col) = header.split_whitespace().position(|h| h == "PID") else {
        bail!("couldn't find the PID field in the ps output");
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{header}")?;
    for l in lines {
        if l.split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|p| pids.contains(&p))
        {
            writeln!(out, "{l}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
