//! Layer apply: any bytes (a tar, or a compressed one) unpacked into a fresh directory must
//! fail cleanly or succeed, and never write beside the directory: a sibling canary stays as
//! it was.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let top = tempfile::tempdir().expect("temp dir");
    let dest = top.path().join("layer");
    let canary = top.path().join("canary");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), b"keep").unwrap();
    let input = snapshotter::layer::decompressed(data);
    if let Ok(reader) = input {
        let _ = snapshotter::snapshot::unpack_layer(reader, &dest);
    }
    let beside: Vec<_> = std::fs::read_dir(top.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside.len(),
        2,
        "something was written beside the layer: {beside:?}"
    );
    let kept: Vec<_> = std::fs::read_dir(&canary).unwrap().collect();
    assert_eq!(kept.len(), 1, "the canary directory changed");
    assert_eq!(std::fs::read(canary.join("keep")).unwrap(), b"keep");
});
