//! The program's environment and its lookup in `PATH`, shared by the container backend and
//! the microVM's guest init (which includes this file; `std` only).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

/// The default `PATH` when the image sets none (Docker's).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `env` with Docker's defaults added where it lacks them: `PATH`, `HOME` (the user's),
/// `HOSTNAME`.
pub(crate) fn with_defaults(env: &[String], home: &str, hostname: &str) -> Vec<String> {
    let mut env = env.to_vec();
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|kv| kv.split_once('=').is_some_and(|(key, _)| key == k))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    env
}

/// Looks `program` up as `execvp` would, in the `PATH` of `env` (in the current root).
pub(crate) fn find_program(program: &str, env: &[String]) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{program}"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
