//! Differential tests: every case under `testdata/compat/` is built by kiln and by
//! docker/BuildKit (Debian's docker.io 20.10, a private dockerd, `--network none`) from the
//! same context; the root filesystems (path, type, mode, owner, content, link target) and
//! the runtime configs must be equal.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use tests::docker::Dockerd;
use tests::{TestContext, have_program, require, workspace_dir};

/// One entry of a root filesystem, without times.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    content: String,
}

fn rootfs_of(tar_path: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            _ => 'f',
        };
        let content = match kind {
            'f' => {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).unwrap();
                snapshotter::Digest::of(&buf).short().to_string()
            }
            'l' => e
                .link_name()
                .unwrap()
                .map(|l| l.display().to_string())
                .unwrap_or_default(),
            // A hard link's target is another path with the same content; compare content.
            'h' => format!(
                "link->{}",
                e.link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default()
                    .trim_start_matches("./")
            ),
            _ => String::new(),
        };
        out.insert(
            path,
            Entry {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                content,
            },
        );
    }
    out
}

/// Hard links are written in either direction depending on walk order; compare them as
/// the files they are.
fn resolve_hardlinks(fs: &mut BTreeMap<String, Entry>) {
    let links: Vec<(String, String)> = fs
        .iter()
        .filter(|(_, e)| e.kind == 'h')
        .map(|(p, e)| {
            (
                p.clone(),
                e.content.trim_start_matches("link->").to_string(),
            )
        })
        .collect();
    for (p, target) in links {
        if let Some(t) = fs.get(&target).map(|t| t.content.clone()) {
            let e = fs.get_mut(&p).unwrap();
            e.kind = 'f';
            e.content = t;
        }
    }
}

const CONFIG_KEYS: [&str; 12] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

fn config_of(inspect: &str) -> BTreeMap<&'static str, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(inspect).unwrap();
    let c = &v[0]["Config"];
    CONFIG_KEYS
        .iter()
        .filter_map(|k| {
            let x = &c[*k];
            let empty = x.is_null()
                || x.as_str() == Some("")
                || x.as_array().is_some_and(Vec::is_empty)
                || x.as_object().is_some_and(|o| o.is_empty());
            (!empty).then(|| (*k, x.clone()))
        })
        .collect()
}

fn cases() -> Vec<PathBuf> {
    let dir = workspace_dir().join("testdata/compat");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn kiln_builds_what_buildkit_builds() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !require("container sandbox", root, "these tests build as root")
        || !require(
            "docker",
            have_program("dockerd") && Path::new("/usr/bin/docker").exists(),
            "apt-get install docker.io",
        )
    {
        return;
    }
    let ctx = TestContext::new();
    let base = ctx.base_image();
    let dockerd = Dockerd::start(&ctx.work().join("dk")).unwrap_or_else(|e| panic!("{e}"));
    let archive = ctx.work().join("base.tar");
    ctx.kiln()
        .args(["save", "-o"])
        .arg(&archive)
        .arg(base)
        .run()
        .ok();
    let out = dockerd.docker(&["load", "-q", "-i", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "docker load: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cases = cases();
    assert!(
        cases.len() >= 15,
        "testdata/compat has {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let tag = format!("compat-{name}:1");
        let k_tar = ctx.work().join(format!("{name}.kiln.tar"));
        let d_tar = ctx.work().join(format!("{name}.docker.tar"));
        let k = ctx
            .kiln()
            .args(["build", "-q", "-t", &tag, "--output"])
            .arg(format!("type=tar,dest={}", k_tar.display()))
            .arg(case)
            .run();
        if k.code != Some(0) {
            failures.push(format!("{name}: kiln build failed: {}", k.stderr.trim()));
            continue;
        }
        for args in [
            vec!["build", "-q", "--network", "none", "-t", &tag],
            vec!["build", "-q", "--network", "none", "-o"],
        ] {
            let mut cmd = dockerd.command();
            cmd.args(&args);
            if args.last() == Some(&"-o") {
                cmd.arg(format!("type=tar,dest={}", d_tar.display()));
            }
            let out = cmd.arg(case).output().unwrap();
            assert!(
                out.status.success(),
                "{name}: docker build: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (mut kfs, mut dfs) = (rootfs_of(&k_tar), rootfs_of(&d_tar));
        resolve_hardlinks(&mut kfs);
        resolve_hardlinks(&mut dfs);
        let mut diffs = Vec::new();
        for (p, d) in &dfs {
            match kfs.get(p) {
                None => diffs.push(format!("  only docker has /{p} {d:?}")),
                Some(k) if k != d => diffs.push(format!("  /{p}: kiln {k:?} docker {d:?}")),
                _ => {}
            }
        }
        for (p, k) in &kfs {
            if !dfs.contains_key(p) {
                diffs.push(format!("  only kiln has /{p} {k:?}"));
            }
        }
        // History: what each entry says and whether it has a layer.
        let kh = kiln_history(&ctx, &tag);
        let dh = docker_history(&dockerd, &tag, &ctx.work().join(format!("{name}.save.tar")));
        if kh != dh {
            let first = kh
                .iter()
                .zip(&dh)
                .position(|(k, d)| k != d)
                .unwrap_or(kh.len().min(dh.len()));
            diffs.push(format!(
                "  history differs at entry {first}: kiln {:?} docker {:?}",
                kh.get(first),
                dh.get(first)
            ));
        }
        let kc = config_of(ctx.kiln().args(["inspect", &tag]).run().ok());
        let dc_out = dockerd.docker(&["image", "inspect", &tag]);
        let dc = config_of(&String::from_utf8_lossy(&dc_out.stdout));
        for key in CONFIG_KEYS {
            if kc.get(key) != dc.get(key) {
                diffs.push(format!(
                    "  config {key}: kiln {:?} docker {:?}",
                    kc.get(key),
                    dc.get(key)
                ));
            }
        }
        // Differences a case documents as intended (with the reason) in known-differences.txt.
        let known: Vec<String> = std::fs::read_to_string(case.join("known-differences.txt"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("  {} ", l.trim()))
            .collect();
        diffs.retain(|d| !known.iter().any(|k| d.starts_with(k.as_str())));
        if !diffs.is_empty() {
            diffs.truncate(12);
            failures.push(format!("{name}:\n{}", diffs.join("\n")));
        }
    }
    // buildah as a second opinion (it departs from BuildKit in places): reported, not judged.
    if have_program("buildah") {
        second_opinion_from_buildah(&ctx, &archive, &cases);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from BuildKit:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Builds every case with buildah (`bud --format docker`, chroot isolation: the host's network,
/// which reaches nothing here) and
/// prints where its root filesystem differs from kiln's.
fn second_opinion_from_buildah(ctx: &TestContext, base_archive: &Path, cases: &[PathBuf]) {
    let store = ctx.work().join("buildah");
    let buildah = |args: &[&str]| {
        std::process::Command::new("buildah")
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap()
    };
    let pulled = buildah(&[
        "pull",
        "-q",
        &format!("docker-archive:{}", base_archive.display()),
    ]);
    let tagged = buildah(&[
        "tag",
        String::from_utf8_lossy(&pulled.stdout).trim(),
        "docker.io/library/busybox:latest",
    ]);
    if !pulled.status.success() || !tagged.status.success() {
        eprintln!(
            "buildah second opinion skipped: {}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        return;
    }
    let mut agree = 0;
    let mut notes = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let b_tar = ctx.work().join(format!("{name}.buildah.tar"));
        let out = buildah(&[
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            "--pull-never",
            "--output",
            &format!("type=tar,dest={}", b_tar.display()),
            case.to_str().unwrap(),
        ]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            notes.push(format!(
                "{name}: buildah failed: {}",
                err.lines().last().unwrap_or_default()
            ));
            continue;
        }
        let (mut kfs, mut bfs) = (
            rootfs_of(&ctx.work().join(format!("{name}.kiln.tar"))),
            rootfs_of(&b_tar),
        );
        resolve_hardlinks(&mut kfs);
        resolve_hardlinks(&mut bfs);
        let mut diffs: Vec<String> = Vec::new();
        for (p, b) in &bfs {
            match kfs.get(p) {
                None => diffs.push(format!("only buildah has /{p}")),
                Some(k) if k != b => diffs.push(format!("/{p}: kiln {k:?} buildah {b:?}")),
                _ => {}
            }
        }
        diffs.extend(
            kfs.keys()
                .filter(|p| !bfs.contains_key(*p))
                .map(|p| format!("only kiln has /{p}")),
        );
        if diffs.is_empty() {
            agree += 1;
        } else {
            notes.push(format!(
                "{name}: {}{}",
                diffs[..diffs.len().min(3)].join("; "),
                if diffs.len() > 3 { "; ..." } else { "" }
            ));
        }
    }
    eprintln!(
        "buildah (second opinion) builds the same root filesystem as kiln in {agree} of {} cases",
        cases.len()
    );
    for n in notes {
        eprintln!("  {n}");
    }
}

/// `(created_by, empty_layer)` of each history entry of a kiln image.
fn kiln_history(ctx: &TestContext, tag: &str) -> Vec<(String, bool)> {
    use snapshotter::Store as _;
    let store = ctx.store();
    let desc = store.resolve(&tag.parse().unwrap()).unwrap().unwrap();
    let img = snapshotter::image::read_image(&store, &desc).unwrap();
    let v = serde_json::to_value(&img.config).unwrap();
    history_of(&v)
}

fn history_of(config: &serde_json::Value) -> Vec<(String, bool)> {
    config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    (
                        e["created_by"].as_str().unwrap_or_default().to_string(),
                        e["empty_layer"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The same for a docker image, from the config in `docker save`.
fn docker_history(dockerd: &Dockerd, tag: &str, save: &Path) -> Vec<(String, bool)> {
    let out = dockerd.docker(&["save", "-o", save.to_str().unwrap(), tag]);
    assert!(
        out.status.success(),
        "docker save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(save).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().to_string();
        if path.ends_with(".json") {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap();
            files.insert(path, buf);
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    history_of(&serde_json::from_slice(&files[config_name]).unwrap())
}
