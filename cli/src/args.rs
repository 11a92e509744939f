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
