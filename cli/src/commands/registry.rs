//! Registry commands: `pull`, `push`, `login`, `logout`, `search`, and the pulling that
//! `build` and `run` do for images they lack.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use builder::Platform;
use builder::registry::auth::Credentials;
use builder::registry::credentials::{DockerConfig, default_dir};
use builder::registry::{
    HttpRegistry, PullOptions, PushOptions, Registry, RegistryOptions, pull, push,
};
use snapshotter::gc::GcLock;
use snapshotter::{FsStore, Reference, Store};

use crate::args::{LoginArgs, LogoutArgs, PullArgs, PushArgs, SearchArgs};
use crate::progress::Progress;

/// Registry settings: `<root>/registries.json` (`default-registry`, `insecure-registries`,
/// as in Docker's daemon.json), then the command-line flags.
pub(crate) fn options(
    root: &Path,
    insecure: &[String],
    default_registry: Option<&str>,
) -> anyhow::Result<RegistryOptions> {
    let mut o = RegistryOptions::default();
    let path = root.join("registries.json");
    match std::fs::read(&path) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            if let Some(d) = v.get("default-registry").and_then(|d| d.as_str()) {
                o.default_registry = Some(d.to_string());
            }
            if let Some(list) = v.get("insecure-registries").and_then(|l| l.as_array()) {
                o.insecure
                    .extend(list.iter().filter_map(|h| h.as_str()).map(str::to_string));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    o.insecure.extend(insecure.iter().cloned());
    if let Some(d) = default_registry.filter(|d| !d.is_empty()) {
        o.default_registry = Some(d.to_string());
    }
    Ok(o)
}

fn parse_ref(o: &RegistryOptions, name: &str) -> anyhow::Result<Reference> {
    Ok(o.qualify(name)?)
}

/// Pulls `reference` into the store, printing progress unless `quiet`.
pub(crate) fn pull_into(
    store: &FsStore,
    o: &RegistryOptions,
    reference: &Reference,
    platform: &Platform,
    max_concurrent: usize,
    quiet: bool,
) -> anyhow::Result<builder::registry::Pulled> {
    let registry = HttpRegistry::new(reference.registry(), o)?;
    let progress = Progress::new(quiet);
    let what = reference.tag().map_or_else(
        || {
            reference
                .digest()
                .map(|d| d.to_string())
                .unwrap_or_default()
        },
        str::to_string,
    );
    progress.line(&format!("{what}: pulling from {}", reference.name()));
    let options = PullOptions {
        platform: platform.clone(),
        max_concurrent: max_concurrent.max(1),
        ..Default::default()
    };
    let pulled = pull(&registry, store, reference, &options, &progress)?;
    progress.line(&format!("Digest: {}", pulled.repo_digest));
    Ok(pulled)
}

pub(crate) fn pull_cmd(root: &Path, o: &RegistryOptions, a: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = parse_ref(o, &a.image)?;
    let platform: Platform = match &a.platform {
        Some(p) => p.parse().map_err(|e| anyhow::anyhow!("--platform: {e}"))?,
        None => Platform::host(),
    };
    let store = super::open_store(root)?;
    let _gc = GcLock::shared(root)?;
    let before = store.resolve(&reference)?;
    let pulled = pull_into(&store, o, &reference, &platform, a.max_concurrent, a.quiet)?;
    if !a.quiet {
        let same = before.is_some_and(|b| b.digest() == pulled.image.descriptor.digest());
        let status = if same {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        eprintln!(
            "Status: {status} {}",
            reference.familiar_name() + &tag_suffix(&reference)
        );
    }
    println!("{reference}");
    Ok(ExitCode::SUCCESS)
}

fn tag_suffix(r: &Reference) -> String {
    match (r.tag(), r.digest()) {
        (Some(t), _) => format!(":{t}"),
        (None, Some(d)) => format!("@{d}"),
        _ => String::new(),
    }
}

/// Repositories on `host` that images in the store came from or went to, for blob mounts.
fn known_repositories(store: &FsStore, host: &str) -> anyhow::Result<Vec<String>> {
    let mut repos: Vec<String> = Vec::new();
    for (name, desc) in store.images()? {
        let from_digest = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(builder::registry::REPO_DIGEST_ANNOTATION))
            .and_then(|r| r.split_once('@'))
            .and_then(|(n, _)| n.parse::<Reference>().ok());
        for r in [Some(name), from_digest].into_iter().flatten() {
            if r.registry() == host && !repos.contains(&r.repository().to_string()) {
                repos.push(r.repository().to_string());
            }
        }
    }
    Ok(repos)
}

/// Pushes the local image `source` to `dest`; records the repo digest on the local name.
pub(crate) fn push_image(
    store: &FsStore,
    o: &RegistryOptions,
    source: &str,
    dest: &Reference,
    max_concurrent: usize,
    quiet: bool,
) -> anyhow::Result<snapshotter::Digest> {
    let (img, names) = super::image::find_image(store, source)?;
    let registry = HttpRegistry::new(dest.registry(), o)?;
    let progress = Progress::new(quiet);
    progress.line(&format!("pushing to {dest}"));
    let options = PushOptions {
        max_concurrent: max_concurrent.max(1),
        mount_from: known_repositories(store, dest.registry())?,
        ..Default::default()
    };
    let pushed = push(&registry, store, &img, dest, &options, &progress)?;
    let repo_digest = format!("{}@{}", dest.name(), pushed.digest);
    for n in names
        .iter()
        .filter(|n| n.name() == dest.name() || names.len() == 1)
    {
        if let Some(d) = store.resolve(n)? {
            store.tag(n, &builder::registry::with_repo_digest(d, &repo_digest))?;
        }
    }
    if !quiet {
        eprintln!(
            "{}: digest: {} size: {}",
            dest.tag().unwrap_or("latest"),
            pushed.digest,
            img.descriptor.size()
        );
    }
    Ok(pushed.digest)
}

pub(crate) fn push_cmd(root: &Path, o: &RegistryOptions, a: PushArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let _gc = GcLock::shared(root)?;
    let dest = parse_ref(o, a.dest.as_deref().unwrap_or(&a.image))?;
    let source = match o.qualify(&a.image) {
        Ok(r) if store.resolve(&r)?.is_some() => r.to_string(),
        _ => a.image.clone(),
    };
    let digest = push_image(&store, o, &source, &dest, a.max_concurrent, a.quiet)?;
    if let Some(f) = &a.digestfile {
        std::fs::write(f, digest.to_string()).with_context(|| format!("write {}", f.display()))?;
    }
    if a.quiet {
        println!("{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

fn login_host(o: &RegistryOptions, server: Option<&str>) -> String {
    let s = server
        .map(|s| {
            s.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
        })
        .map(|s| {
            s.strip_suffix("/v1")
                .or(s.strip_suffix("/v2"))
                .unwrap_or(s)
                .to_string()
        });
    s.or_else(|| o.default_registry.clone())
        .unwrap_or_else(|| snapshotter::reference::DEFAULT_REGISTRY.to_string())
}

pub(crate) fn login(o: &RegistryOptions, a: LoginArgs) -> anyhow::Result<ExitCode> {
    let host = login_host(o, a.server.as_deref());
    let tty = std::io::stdin().is_terminal();
    let username = match a.username {
        Some(u) => u,
        None if tty && !a.password_stdin => prompt("Username: ", false)?,
        None => bail!("login to {host}: a username is needed (-u)"),
    };
    let password = if a.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if tty {
        prompt("Password: ", true)?
    } else {
        bail!("login to {host}: a password is needed (--password-stdin or a terminal)");
    };
    if password.is_empty() {
        bail!("login to {host}: the password is empty");
    }
    let creds = Credentials {
        username,
        secret: password,
    };
    HttpRegistry::with_credentials(&host, o, Some(creds.clone()))
        .ping()
        .with_context(|| format!("login to {host}"))?;
    let dir = o.docker_config.clone().unwrap_or_else(default_dir);
    DockerConfig::load(&dir)?.store(&host, &creds)?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn logout(o: &RegistryOptions, a: LogoutArgs) -> anyhow::Result<ExitCode> {
    let host = login_host(o, a.server.as_deref());
    let dir = o.docker_config.clone().unwrap_or_else(default_dir);
    if DockerConfig::load(&dir)?.erase(&host)? {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a line from the terminal, without echo for secrets.
fn prompt(label: &str, secret: bool) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let saved = if secret { tcgetattr(&stdin).ok() } else { None };
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
        eprintln!();
    }
    read.context("read from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub(crate) fn search(o: &RegistryOptions, a: SearchArgs) -> anyhow::Result<ExitCode> {
    let (host, term) = match a.term.split_once('/') {
        Some((h, t)) if builder::registry::has_registry_host(&a.term) => {
            (h.to_string(), t.to_string())
        }
        _ => (login_host(o, None), a.term.clone()),
    };
    let registry = HttpRegistry::new(&host, o)?;
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let how = match registry
        .search_v1(&term, a.limit)
        .with_context(|| format!("search {host}"))?
    {
        Some(hits) => {
            for h in hits.into_iter().take(a.limit) {
                rows.push(serde_json::json!({"name": h.name, "description": h.description, "stars": h.star_count, "official": h.is_official}));
            }
            "/v1/search"
        }
        None => {
            let all = registry
                .catalog(100_000)
                .with_context(|| format!("search {host}"))?;
            let needle = term.to_lowercase();
            for repo in all
                .into_iter()
                .filter(|r| r.contains(&needle))
                .take(a.limit)
            {
                let mut row = serde_json::json!({"name": format!("{host}/{repo}"), "description": "", "stars": 0, "official": false});
                if a.list_tags {
                    row["tags"] = serde_json::json!(registry.tags(&repo).unwrap_or_default());
                }
                rows.push(row);
            }
            "/v2/_catalog (the OCI distribution spec defines no search; repositories whose name contains the term)"
        }
    };
    eprintln!("searched {host} via {how}");
    if a.format.as_deref() == Some("json") {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec![
        "NAME".to_string(),
        "DESCRIPTION".to_string(),
        "STARS".to_string(),
        "OFFICIAL".to_string(),
    ];
    if a.list_tags {
        header.push("TAGS".into());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            let mut row = vec![
                s("name"),
                s("description"),
                r["stars"].to_string(),
                if r["official"] == true {
                    "[OK]".into()
                } else {
                    String::new()
                },
            ];
            if a.list_tags {
                let tags: Vec<&str> = r["tags"]
                    .as_array()
                    .map(|t| t.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                row.push(tags.join(","));
            }
            row
        })
        .collect();
    super::images::print_table(&header, &table);
    Ok(ExitCode::SUCCESS)
}
