//! The malicious layer corpus (`testdata/malicious-layers`, see its make.py): every crafted
//! tar is refused or contained, and nothing appears or changes outside the target.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/malicious-layers")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(listing(&p));
        }
    }
    out.sort();
    out
}

#[test]
fn every_crafted_layer_is_refused_or_contained() {
    let cases = fs::read_to_string(corpus().join("cases.txt")).unwrap();
    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();
    let mut n = 0;
    let mut wrong = Vec::new();
    for line in cases
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let (name, expect) = (f[0], f[1]);
        n += 1;
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&target).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "secret\n").unwrap();
        let before = listing(&outside);
        let tar = fs::File::open(corpus().join(format!("{name}.tar"))).unwrap();
        let result = snapshotter::snapshot::unpack_layer(tar, &target);
        match (expect, &result) {
            ("refuse", Ok(())) => wrong.push(format!("{name}: was accepted")),
            ("contain", Err(e)) => wrong.push(format!("{name}: was refused: {e}")),
            _ => {}
        }
        if let Err(e) = &result {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.is_empty(), "{name}: {msg:?}");
        }
        assert_eq!(
            listing(&outside),
            before,
            "{name}: something appeared outside"
        );
        assert_eq!(
            fs::read_to_string(outside.join("secret")).unwrap(),
            "secret\n",
            "{name}"
        );
        let top: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(top.len() == 2, "{name}: files next to the target: {top:?}");
        assert!(
            !Path::new("/tmp/kiln-malicious-layer-pwned").exists(),
            "{name}: wrote through to /tmp"
        );
        assert_eq!(
            fs::metadata("/etc/passwd").unwrap().nlink(),
            passwd_links,
            "{name}: linked /etc/passwd"
        );
        match name {
            "duplicate-entries" => {
                assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "second\n")
            }
            "absolute" => assert!(target.join("abs-escape.txt").is_file()),
            "overlay-xattr" => assert_eq!(
                xattr::get(target.join("f"), "trusted.overlay.redirect")
                    .ok()
                    .flatten(),
                None
            ),
            _ => {}
        }
    }
    assert!(n >= 15, "the corpus has {n} cases");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// An image whose config names another diffID than its layer's content must not get that
/// content unpacked under the chain ID the config implies (another image naming the
/// diffID would then share it): the unpack is refused and leaves nothing behind.
#[test]
fn a_layer_whose_content_is_not_the_configs_diff_id_is_refused() {
    use snapshotter::digest::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshotter::store::FsStore::open(tmp.path().join("store")).unwrap();
    let snaps = snapshotter::snapshot::Snapshots::open(tmp.path()).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
    let layer = snapshotter::layer::import_tar(&store, &tar.into_inner().unwrap()[..]).unwrap();

    let claimed = Digest::of(b"some other layer");
    let err = snaps
        .ensure_layer(&store, &claimed, &layer.descriptor, &claimed)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("its content has diffID {}", layer.diff_id)) && !err.contains('\n'),
        "{err}"
    );
    assert!(!snaps.layer_dir(&claimed).exists());
    assert_eq!(
        fs::read_dir(tmp.path().join("snapshots/tmp"))
            .unwrap()
            .count(),
        0,
        "the half-made unpack is gone"
    );

    let dir = snaps
        .ensure_layer(&store, &layer.diff_id, &layer.descriptor, &layer.diff_id)
        .unwrap();
    assert_eq!(fs::read(dir.join("hello")).unwrap(), b"hi\n");
}
