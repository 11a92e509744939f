//! Command-line arguments (clap derive), kept apart from what the commands do.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kiln: build, run and ship OCI images from Dockerfiles.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Store directory [default: /var/lib/kiln as root, else $XDG_DATA_HOME/kiln or ~/.local/share/kiln]
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    pub(crate) root: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        default_value = "warn",
        env = "KILN_LOG_LEVEL"
    )]
    pub(crate) log_level: String,

    /// Debug logging (same as --log-level debug)
    #[arg(short = 'D', long, global = true)]
    pub(crate) debug: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create an image from a root filesystem tarball (plain, gzip or zstd), like `docker import`
    Import(ImportArgs),
    /// List images
    Images(ImagesArgs),
    /// Build an image from a Dockerfile
    Build(BuildArgs),
    /// Run a command in a new container from an image
    Run(RunArgs),
    /// Print a Dockerfile's stages and instructions
    Parse(ParseArgs),
    /// Run BuildKit's build checks on a Dockerfile
    Lint(LintArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct ParseArgs {
    /// The Dockerfile (- for stdin) [default: ./Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Print JSON (schema in the README)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LintArgs {
    /// The Dockerfile (- for stdin) [default: ./Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Output format
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) format: String,
    /// Build context, for .dockerignore checks [default: .]
    pub(crate) context: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct BuildArgs {
    /// The Dockerfile (- for stdin) [default: CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Name the image (repeatable)
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub(crate) tags: Vec<String>,
    /// Set a build argument (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub(crate) build_args: Vec<String>,
    /// Build this stage
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Platform for FROM scratch stages (os/arch[/variant])
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// Print only the image ID
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// The build context directory
    pub(crate) context: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Remove the container when it exits (containers are always removed for now)
    #[arg(long)]
    pub(crate) rm: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub(crate) workdir: Option<String>,
    /// User (name|uid[:group|gid])
    #[arg(short = 'u', long)]
    pub(crate) user: Option<String>,
    /// Override the image's ENTRYPOINT
    #[arg(long)]
    pub(crate) entrypoint: Option<String>,
    /// Network mode: host (default) or none
    #[arg(long, default_value = "host")]
    pub(crate) network: String,
    /// Container hostname [default: the short image ID]
    #[arg(long)]
    pub(crate) hostname: Option<String>,
    /// The image
    pub(crate) image: String,
    /// Command and arguments [default: the image's CMD]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    /// Apply a Dockerfile instruction to the image config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    /// USER, VOLUME, WORKDIR, STOPSIGNAL); repeatable
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub(crate) changes: Vec<String>,
    /// History comment for the imported layer
    #[arg(short = 'm', long)]
    pub(crate) message: Option<String>,
    /// Platform recorded in the image (os/arch[/variant]) [default: the host's]
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// The tarball's path, or - for standard input
    pub(crate) source: String,
    /// Name for the new image, e.g. busybox:latest
    pub(crate) reference: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ImagesArgs {
    /// Show only image IDs
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Show full image IDs
    #[arg(long)]
    pub(crate) no_trunc: bool,
}
