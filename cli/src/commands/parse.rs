//! `kiln parse [-f FILE|-] [--json]` and `kiln lint [-f FILE|-] [--format text|json]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use parser::dockerfile_error;
use parser::lint::{LintContext, lint};
use snapshotter::image::read_image;
use snapshotter::{FsStore, Reference, Store};

use crate::args::{LintArgs, ParseArgs};

/// Reads the Dockerfile named by `-f` (`-` for stdin; default `./Dockerfile`).
fn read_dockerfile(file: Option<&Path>) -> anyhow::Result<(String, String)> {
    match file {
        Some(f) if f.as_os_str() == "-" => Ok((
            "-".into(),
            std::io::read_to_string(std::io::stdin()).context("read stdin")?,
        )),
        Some(f) => Ok((
            f.display().to_string(),
            std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?,
        )),
        None => Ok((
            "Dockerfile".into(),
            std::fs::read_to_string("Dockerfile").context("read Dockerfile")?,
        )),
    }
}

pub(crate) fn parse(a: ParseArgs) -> anyhow::Result<ExitCode> {
    let (name, text) = read_dockerfile(a.file.as_deref())?;
    let doc = parser::parse(&text).map_err(|e| dockerfile_error(&name, &text, &e))?;
    if a.json {
        let v =
            parser::json::document_json(&doc).map_err(|e| dockerfile_error(&name, &text, &e))?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (globals, stages) = parser::stages(&doc).map_err(|e| dockerfile_error(&name, &text, &e))?;
    for g in &globals {
        println!(
            "global ARG {}{}",
            g.name,
            g.default
                .as_ref()
                .map(|d| format!("={d}"))
                .unwrap_or_default()
        );
    }
    for s in &stages {
        let label = s
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        println!("stage {}{label}: FROM {}", s.index, s.from.image);
        for (n, _) in &s.instructions {
            println!("  {:>4}: {}", n.start.line, n.dump());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn lint_cmd(root: &Path, a: LintArgs) -> anyhow::Result<ExitCode> {
    let (name, text) = read_dockerfile(a.file.as_deref())?;
    let doc = parser::parse(&text).map_err(|e| dockerfile_error(&name, &text, &e))?;
    // Typing errors (unknown instructions, bad flags) fail the lint like a build would.
    parser::stages(&doc).map_err(|e| dockerfile_error(&name, &text, &e))?;
    let context_dir = a
        .context
        .clone()
        .unwrap_or_else(|| Path::new(".").to_path_buf());
    let ignore_path = parser::dockerignore::ignore_file(Path::new(&name), &context_dir);
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(t) => Some(parser::dockerignore::Matcher::parse(&t).map_err(anyhow::Error::msg)?),
        Err(_) => None,
    };
    // Base images' environments come from the local store when it has them.
    let store = FsStore::open(root).ok();
    let base_env = |image: &str| -> Option<Vec<String>> {
        let store = store.as_ref()?;
        let r: Reference = image.parse().ok()?;
        let desc = store.resolve(&r).ok()??;
        let img = read_image(store, &desc).ok()?;
        Some(
            img.config
                .config
                .env_pairs()
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        )
    };
    let report = lint(
        &doc,
        &LintContext {
            base_env: Some(&base_env),
            ignore: ignore.as_ref(),
        },
    );
    if a.format == "json" {
        let v: Vec<_> = report
            .findings
            .iter()
            .map(|f| serde_json::json!({"file": name, "line": f.line, "rule": f.rule, "message": f.message, "url": f.url(), "level": if report.failed { "error" } else { "warning" }}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for f in &report.findings {
            println!("{name}:{}: {}: {}", f.line, f.rule, f.message);
        }
    }
    Ok(if report.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
