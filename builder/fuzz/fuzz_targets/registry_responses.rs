//! Registry responses: what a registry (or something posing as one) sends back is parsed
//! without panicking: `WWW-Authenticate` challenges, token answers, and indexes a platform is
//! picked from (a picked digest is one the index names).
#![no_main]

use builder::registry::auth::{TokenResponse, parse_challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(c) = parse_challenge(text) {
            let _ = format!("{c:?}");
        }
    }
    if let Ok(t) = serde_json::from_slice::<TokenResponse>(data) {
        let _ = (t.value(), t.keep_for());
    }
    if let Ok((digest, media)) =
        builder::registry::select_platform(data, &builder::Platform::host())
    {
        let index: serde_json::Value = serde_json::from_slice(data).expect("it parsed before");
        let named = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["digest"].as_str() == Some(&digest.to_string()));
        assert!(named, "picked {digest}, which the index does not name");
        let _ = media;
    }
});
