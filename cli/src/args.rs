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

    /// Reach this registry over plain HTTP (loopback always is); repeatable
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    pub(crate) insecure_registries: Vec<String>,

    /// Registry for short names such as `busybox` [default: docker.io]
    #[arg(
        long,
        global = true,
        env = "KILN_DEFAULT_REGISTRY",
        value_name = "HOST[:PORT]"
    )]
    pub(crate) default_registry: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create an image from a root filesystem tarball (plain, gzip or zstd), like `docker import`
    Import(ImportArgs),
    /// List images
    Images(ImagesArgs),
    /// Give an image another name
    Tag(TagArgs),
    /// Remove image names, and the data no image uses any more
    Rmi(RmiArgs),
    /// Show images' details as JSON
    Inspect(InspectArgs),
    /// Show an image's history
    History(HistoryArgs),
    /// Write images to an archive (docker-archive or oci-archive)
    Save(SaveArgs),
    /// Load images from an archive
    Load(LoadArgs),
    /// Manage the store
    #[command(subcommand)]
    System(SystemCommand),
    /// Work with single layers
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Build an image from a Dockerfile
    Build(Box<BuildArgs>),
    /// Run a command in a new container from an image
    Run(Box<RunArgs>),
    /// List containers
    Ps(PsArgs),
    /// Show a container's output
    Logs(LogsArgs),
    /// Show a container's processes
    Top(TopArgs),
    /// Copy files between a container and the host
    Cp(CpArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Stop running containers (the stop signal, then SIGKILL)
    Stop(StopArgs),
    /// Send a signal to running containers
    Kill(KillArgs),
    /// Wait for containers to stop and print their exit codes
    Wait(ContainersArgs),
    /// Remove containers
    Rm(RmArgs),
    /// Print a Dockerfile's stages and instructions
    Parse(ParseArgs),
    /// Run BuildKit's build checks on a Dockerfile
    Lint(LintArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Log in to a registry (credentials go to the Docker config.json)
    Login(LoginArgs),
    /// Log out from a registry
    Logout(LogoutArgs),
    /// Search a registry for repositories
    Search(SearchArgs),
}

impl Command {
    /// Whether the command writes layers, snapshots or containers' files into the store (and
    /// so, rootless, runs in the user namespace with subordinate ids mapped).
    pub(crate) fn writes_store(&self) -> bool {
        matches!(
            self,
            Command::Import(_)
                | Command::Rmi(_)
                | Command::Load(_)
                | Command::System(_)
                | Command::Layer(_)
                | Command::Build(_)
                | Command::Run(_)
                | Command::Pull(_)
                | Command::Rm(_)
        )
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct PullArgs {
    /// Platform to pick from a multi-platform image (os/arch[/variant]) [default: the host's]
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// Print only the image name
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Layers downloaded at once
    #[arg(long, default_value_t = 3)]
    pub(crate) max_concurrent: usize,
    /// NAME[:TAG|@DIGEST]
    pub(crate) image: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PushArgs {
    /// Print only the pushed digest
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Layers uploaded at once
    #[arg(long, default_value_t = 3)]
    pub(crate) max_concurrent: usize,
    /// Write the pushed manifest's digest to this file
    #[arg(long, value_name = "PATH")]
    pub(crate) digestfile: Option<PathBuf>,
    /// Local image (name or ID)
    pub(crate) image: String,
    /// Where to push it [default: the image's own name]
    pub(crate) dest: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LoginArgs {
    /// User name
    #[arg(short, long)]
    pub(crate) username: Option<String>,
    /// Password (prefer --password-stdin)
    #[arg(short, long)]
    pub(crate) password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub(crate) password_stdin: bool,
    /// Registry [default: the default registry]
    pub(crate) server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LogoutArgs {
    /// Registry [default: the default registry]
    pub(crate) server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SearchArgs {
    /// Most results shown
    #[arg(long, default_value_t = 25)]
    pub(crate) limit: usize,
    /// Output format: json
    #[arg(long, value_parser = ["json", "table"])]
    pub(crate) format: Option<String>,
    /// Also list each repository's tags (catalog search)
    #[arg(long)]
    pub(crate) list_tags: bool,
    /// [REGISTRY/]TERM
    pub(crate) term: String,
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
    /// Layer compression: gzip[:1-9] or zstd[:1-19]
    #[arg(long, default_value = "gzip")]
    pub(crate) compression: String,
    /// Run every step: do not use the build cache
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// Run these stages (names or indexes, comma-separated or repeated) without the cache
    #[arg(long, value_name = "STAGE", value_delimiter = ',')]
    pub(crate) no_cache_filter: Vec<String>,
    /// Also export the result: type=docker|oci|tar,dest=FILE or type=local,dest=DIR
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub(crate) outputs: Vec<String>,
    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    pub(crate) iidfile: Option<PathBuf>,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR (repeatable)
    #[arg(long = "secret", value_name = "SPEC")]
    pub(crate) secrets: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: default, or ID=SOCKET (repeatable)
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    pub(crate) ssh: Vec<String>,
    /// Image format: oci, or docker (needed to keep HEALTHCHECK, ONBUILD and SHELL) [default: docker when those are used, else oci]
    #[arg(long, value_parser = ["oci", "docker"])]
    pub(crate) format: Option<String>,
    /// Progress output: auto (tty on a terminal, else plain), plain, tty or json (one event per line)
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub(crate) progress: String,
    /// After the build, list what the cache did for every layer step, and why
    #[arg(long)]
    pub(crate) explain_cache: bool,
    /// Read build args from a file of KEY=VALUE lines (repeatable; --build-arg wins)
    #[arg(long = "build-arg-file", value_name = "FILE")]
    pub(crate) build_arg_files: Vec<PathBuf>,
    /// Export the build cache: type=registry,ref=REF[,mode=min|max] or type=local,dest=DIR (repeatable)
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub(crate) cache_to: Vec<String>,
    /// Use an exported build cache: REF, type=registry,ref=REF or type=local,src=DIR (repeatable)
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub(crate) cache_from: Vec<String>,
    /// Pull base images even when the store has them
    #[arg(long)]
    pub(crate) pull: bool,
    /// Push every tag (-t) to its registry after the build
    #[arg(long)]
    pub(crate) push: bool,
    /// Memory the build's RUN steps may use together (64m, 2g; plain numbers are bytes)
    /// [default: three quarters of the host's memory]
    #[arg(short = 'm', long)]
    pub(crate) memory: Option<String>,
    #[command(flatten)]
    pub(crate) isolation: IsolationArgs,
    /// The build context directory
    pub(crate) context: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Remove the container when it exits
    #[arg(long)]
    pub(crate) rm: bool,
    /// Run in the background and print the container ID
    #[arg(short = 'd', long)]
    pub(crate) detach: bool,
    /// Keep stdin open and pass it to the container
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Give the container a pseudo-terminal
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
    /// Container name [default: a generated one]
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines)
    #[arg(long = "env-file", value_name = "FILE")]
    pub(crate) env_files: Vec<PathBuf>,
    /// Bind a host path or a named volume: SRC:DST[:ro|rw], or DST for a new anonymous volume
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub(crate) volumes: Vec<String>,
    /// Attach a mount: type=bind,source=SRC,target=DST[,readonly] or type=tmpfs,target=DST[,tmpfs-size=BYTES]
    #[arg(long = "mount", value_name = "SPEC")]
    pub(crate) mounts: Vec<String>,
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
    /// Container hostname [default: the short container ID]
    #[arg(long)]
    pub(crate) hostname: Option<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Signal `kiln stop` sends first [default: the image's STOPSIGNAL, else SIGTERM]
    #[arg(long)]
    pub(crate) stop_signal: Option<String>,
    /// Most processes the container may have at once
    #[arg(long)]
    pub(crate) pids_limit: Option<u64>,
    /// Memory limit (64m, 2g; plain numbers are bytes)
    #[arg(short = 'm', long)]
    pub(crate) memory: Option<String>,
    #[command(flatten)]
    pub(crate) isolation: IsolationArgs,
    /// The image
    pub(crate) image: String,
    /// Command and arguments [default: the image's CMD]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PsArgs {
    /// Show all containers (default: running ones)
    #[arg(short, long)]
    pub(crate) all: bool,
    /// Print only container IDs
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Do not shorten IDs and commands
    #[arg(long)]
    pub(crate) no_trunc: bool,
    /// Output format: table or json (one object per line)
    #[arg(long, default_value = "table")]
    pub(crate) format: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LogsArgs {
    /// Keep printing new output until the container stops
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Number of lines from the end to show, or "all"
    #[arg(short = 'n', long, default_value = "all")]
    pub(crate) tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub(crate) timestamps: bool,
    /// Container (name or ID)
    pub(crate) container: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TopArgs {
    /// Container (name or ID)
    pub(crate) container: String,
    /// Options for ps [default: -ef]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) ps_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CpArgs {
    /// CONTAINER:SRC_PATH, a host path, or - (a tar stream on stdin)
    pub(crate) source: String,
    /// CONTAINER:DEST_PATH, a host path, or - (a tar stream to stdout)
    pub(crate) destination: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ExecArgs {
    /// Keep stdin open and pass it to the process
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Give the process a pseudo-terminal
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// User (name|uid[:group|gid]) [default: the container's]
    #[arg(short = 'u', long)]
    pub(crate) user: Option<String>,
    /// Working directory [default: the container's]
    #[arg(short = 'w', long)]
    pub(crate) workdir: Option<String>,
    /// Container (name or ID)
    pub(crate) container: String,
    /// Command and arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct StopArgs {
    /// Seconds to wait after the stop signal before killing
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub(crate) time: u64,
    /// Containers (names or IDs)
    #[arg(required = true)]
    pub(crate) containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct KillArgs {
    /// Signal to send (name or number)
    #[arg(short, long, default_value = "KILL")]
    pub(crate) signal: String,
    /// Containers (names or IDs)
    #[arg(required = true)]
    pub(crate) containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ContainersArgs {
    /// Containers (names or IDs)
    #[arg(required = true)]
    pub(crate) containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RmArgs {
    /// Kill and remove running containers
    #[arg(short, long)]
    pub(crate) force: bool,
    /// Remove the container's anonymous volumes too
    #[arg(short, long)]
    pub(crate) volumes: bool,
    /// Containers (names or IDs)
    #[arg(required = true)]
    pub(crate) containers: Vec<String>,
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
    /// Layer compression: gzip[:1-9] or zstd[:1-19]
    #[arg(long, default_value = "gzip")]
    pub(crate) compression: String,
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
    /// Show manifest digests
    #[arg(long)]
    pub(crate) digests: bool,
    /// Output format: json (one object per line)
    #[arg(long, value_parser = ["json"])]
    pub(crate) format: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TagArgs {
    /// Existing image (name or ID)
    pub(crate) source: String,
    /// New name
    pub(crate) target: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RmiArgs {
    /// Remove an image ID with several names
    #[arg(short, long)]
    pub(crate) force: bool,
    /// Images (names or IDs)
    #[arg(required = true)]
    pub(crate) images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    /// Images (names or IDs)
    #[arg(required = true)]
    pub(crate) images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct HistoryArgs {
    /// Do not truncate CREATED BY
    #[arg(long)]
    pub(crate) no_trunc: bool,
    /// Image (name or ID)
    pub(crate) image: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SaveArgs {
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    /// Archive format
    #[arg(long, default_value = "docker-archive", value_parser = ["docker-archive", "oci-archive"])]
    pub(crate) format: String,
    /// Images (names or IDs)
    #[arg(required = true)]
    pub(crate) images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LoadArgs {
    /// Read from this file instead of standard input (plain, gzip or zstd)
    #[arg(short, long)]
    pub(crate) input: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SystemCommand {
    /// Show disk usage
    Df,
    /// Remove blobs and snapshots no image uses
    Prune(PruneArgs),
    /// Verify the store (every blob's digest, every name's image, leftovers)
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct PruneArgs {
    /// Only print what would be removed
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    /// Remove corrupt blobs, names of incomplete images, and leftovers
    #[arg(long)]
    pub(crate) repair: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum LayerCommand {
    /// Store a directory tree as a layer blob and print its descriptor (JSON)
    Create(LayerCreateArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct LayerCreateArgs {
    /// Compression: gzip[:1-9] or zstd[:1-19]
    #[arg(long, default_value = "gzip")]
    pub(crate) compression: String,
    /// The directory (overlay whiteouts and opaque markers in it are converted)
    pub(crate) dir: PathBuf,
}

/// How RUN steps and containers are isolated.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct IsolationArgs {
    /// Isolation: container (Linux namespaces) or vm (a throwaway microVM per run)
    #[arg(long, env = "KILN_ISOLATION", default_value = "container")]
    pub(crate) isolation: String,
    /// The microVM's VMM: auto, builtin or qemu
    #[arg(long, env = "KILN_VMM", default_value = "auto")]
    pub(crate) vmm: String,
    /// The microVM's kernel [default: KILN_VM_KERNEL, else /boot/vmlinuz-*-cloud-amd64]
    #[arg(long)]
    pub(crate) vm_kernel: Option<PathBuf>,
    /// Longest one microVM run may take (90, 90s, 30m, 2h) [default: no limit]
    #[arg(long, env = "KILN_VM_TIMEOUT")]
    pub(crate) vm_timeout: Option<String>,
    /// The microVM's memory (512m, 2g; plain numbers are MiB)
    #[arg(long, env = "KILN_VM_MEMORY", default_value = "1g")]
    pub(crate) vm_memory: String,
}
