//! OCI documents: any bytes decoded as an image manifest, index and config must give a value
//! or an error, never a panic; a manifest and config that decode are read back as an image
//! from a store, and a config survives a round trip through its own serializer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshotter::{ImageConfig, MemStore, Store};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<oci_spec::image::ImageIndex>(data);
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let again = serde_json::to_vec(&config).expect("a config serializes");
        let back: ImageConfig = serde_json::from_slice(&again).expect("and reads back");
        assert_eq!(serde_json::to_vec(&back).unwrap(), again);
    }
    // As a manifest, in a store beside a config blob that is the same bytes.
    let store = MemStore::new();
    let Ok((digest, size)) = store.put_bytes(data) else {
        return;
    };
    let Ok(d) = oci_spec::image::DescriptorBuilder::default()
        .media_type(oci_spec::image::MediaType::ImageManifest)
        .digest(
            digest
                .to_string()
                .parse::<oci_spec::image::Digest>()
                .unwrap(),
        )
        .size(size)
        .build()
    else {
        return;
    };
    let _ = snapshotter::image::read_image(&store, &d);
});
