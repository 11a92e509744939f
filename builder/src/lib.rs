//! kiln's builder: from the parser's model to images in the store.
//!
//! # Brief overview
//!
//! - [`Builder`]: `kiln build`, a Dockerfile's stages run into an image ([`BuildRequest`]);
//!   RUN steps go through a `vm_sandbox::Sandbox`, layers through the snapshotter.
//! - [`import()`]: `kiln import`, a rootfs tarball to a one-layer image ([`ImportOptions`]).
//! - [`dispatch`]: what config-only instructions (ENV, CMD, WORKDIR, ...) do to an image
//!   config ([`ConfigState`], [`apply_config`]).
//! - [`Platform`] and [`creation_time`] (which honours `SOURCE_DATE_EPOCH`).
//! - [`registry`]: pull and push through the `Registry` seam (HTTP client and test double).
//! - Errors are [`BuildError`]s; Dockerfile errors carry `file:line:col`.

pub mod build;
pub mod cache;
mod chmod;
mod copy;
mod copy_tree;
pub mod dispatch;
pub mod error;
mod fetch;
mod history;
pub mod import;
pub mod platform;
pub mod registry;
pub mod remote_cache;
mod run_mounts;
mod schedule;
mod sources;
mod step_cache;
mod steps;
mod unwritten;

pub use build::{BuildEvent, BuildRequest, Builder, SecretSource, unused_build_args};
pub use dispatch::{ConfigState, apply_config};
pub use error::{BuildError, Result};
pub use import::{ImportOptions, import};
pub use platform::{Platform, creation_time, creation_time_at, source_date_epoch};

/// The most processes a RUN step's user may have at once: a fork bomb in a Dockerfile fails
/// its step instead of filling the host's process table.
pub const STEP_MAX_PROCESSES: u64 = 4096;
