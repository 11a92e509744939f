//! The `kiln` binary: argument parsing, wiring of the concrete store and backends, and
//! rendering of results and errors. All build logic lives in the library crates.
//!
//! # Brief overview
//!
//! - `args`: the clap definitions ([`args::Cli`]).
//! - `commands`: one module per subcommand.
//! - Errors print as one line, `kiln: error: ...`, with a non-zero exit.

mod args;
mod build_progress;
mod commands;
mod containers;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    // The sandbox helper must start before anything else (it forks; no threads allowed).
    let mut raw = std::env::args_os();
    let mode = raw.nth(1);
    if mode
        .as_ref()
        .is_some_and(|a| a == vm_sandbox::container::INIT_ARG)
    {
        let spec = raw.next().map(PathBuf::from).unwrap_or_default();
        return ExitCode::from(vm_sandbox::container::init_main(&spec).clamp(0, 255) as u8);
    }
    if mode
        .as_ref()
        .is_some_and(|a| a == vm_sandbox::container::ENTER_ARG)
    {
        let spec = raw.next().map(PathBuf::from).unwrap_or_default();
        return ExitCode::from(vm_sandbox::container::enter_main(&spec).clamp(0, 255) as u8);
    }
    if mode
        .as_ref()
        .is_some_and(|a| a == containers::monitor::MONITOR_ARG)
    {
        let root = raw.next().map(PathBuf::from).unwrap_or_default();
        let id = raw
            .next()
            .and_then(|s| s.into_string().ok())
            .unwrap_or_default();
        return match containers::monitor::monitor_main(&root, &id) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("kiln: error: {e:#}");
                ExitCode::from(125)
            }
        };
    }
    if mode
        .as_ref()
        .is_some_and(|a| a == vm_sandbox::vm::VMM_PROBE_ARG)
    {
        // The builtin VMM's start-up, for bench/vm-step.sh: a one-instruction guest.
        return match vm_sandbox::vm::first_instruction_probe() {
            Ok(t) => {
                println!("{}", t.as_micros());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kiln: error: {e}");
                ExitCode::from(125)
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // Usage errors are one line too, like every other error.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("kiln: error: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    // Without root, commands that write the store run in a user namespace with the caller's
    // subordinate ids mapped (while this process has no threads), so that layers keep their
    // owners. Commands that act on running containers stay outside, where they may join them.
    if !nix::unistd::geteuid().is_root()
        && cli.command.writes_store()
        && vm_sandbox::container::subordinate_ranges().is_some()
        && !vm_sandbox::container::in_user_namespace()
        && let Err(e) = vm_sandbox::container::enter_user_namespace()
    {
        eprintln!("kiln: error: {e}");
        return ExitCode::from(1);
    }
    init_logging(&cli);
    let result = run(cli);
    // Snapshots dropped during the command are deleted on threads: let them finish.
    snapshotter::snapshot::finish_removals();
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line (the whole cause chain joined, as `a: b: c`), except that Dockerfile
            // errors add the source line and a caret below it.
            let msg = match e.downcast_ref::<parser::DockerfileError>() {
                Some(d) => d.to_string(),
                None => format!("{e:#}").replace('\n', " "),
            };
            eprintln!("kiln: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = if cli.debug {
        "debug"
    } else {
        cli.log_level.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// The store directory: `--root`/`KILN_ROOT`, else the per-user default.
fn store_root(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(r) = &cli.root {
        return Ok(r.clone());
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/kiln"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("kiln"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow::anyhow!("cannot choose a store: set --root, KILN_ROOT or HOME"))?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = store_root(&cli)?;
    let reg = commands::registry::options(
        &root,
        &cli.insecure_registries,
        cli.default_registry.as_deref(),
    )?;
    tracing::debug!(root = %root.display(), "store");
    match cli.command {
        Command::Import(a) => commands::import::run(&root, a),
        Command::Images(a) => commands::images::run(&root, a),
        Command::Tag(a) => commands::image::tag(&root, a),
        Command::Rmi(a) => commands::image::rmi(&root, a),
        Command::Inspect(a) => commands::image::inspect(&root, a),
        Command::History(a) => commands::image::history(&root, a),
        Command::Save(a) => commands::system::save_cmd(&root, a),
        Command::Load(a) => commands::system::load_cmd(&root, a),
        Command::System(args::SystemCommand::Df) => commands::system::df(&root),
        Command::System(args::SystemCommand::Prune(a)) => commands::system::prune(&root, a),
        Command::System(args::SystemCommand::Check(a)) => commands::system::check_cmd(&root, a),
        Command::Build(a) => commands::build::run(&root, &reg, *a),
        Command::Run(a) => commands::run::run(&root, &reg, *a),
        Command::Ps(a) => commands::containers::ps(&root, a),
        Command::Logs(a) => commands::containers::logs(&root, a),
        Command::Top(a) => commands::containers::top(&root, a),
        Command::Cp(a) => commands::exec_cp::cp(&root, a),
        Command::Exec(a) => commands::exec_cp::exec(&root, a),
        Command::Stop(a) => commands::containers::stop(&root, a),
        Command::Kill(a) => commands::containers::kill(&root, a),
        Command::Wait(a) => commands::containers::wait(&root, a),
        Command::Rm(a) => commands::containers::rm(&root, a),
        Command::Parse(a) => commands::parse::parse(a),
        Command::Layer(args::LayerCommand::Create(a)) => commands::system::layer_create(&root, a),
        Command::Lint(a) => commands::parse::lint_cmd(&root, a),
        Command::Pull(a) => commands::registry::pull_cmd(&root, &reg, a),
        Command::Push(a) => commands::registry::push_cmd(&root, &reg, a),
        Command::Login(a) => commands::registry::login(&reg, a),
        Command::Logout(a) => commands::registry::logout(&reg, a),
        Command::Search(a) => commands::registry::search(&reg, a),
    }
}
