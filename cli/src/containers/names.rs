//! Container names: Docker's rule for chosen ones, `adjective_name` for generated ones.

use std::path::Path;

use anyhow::bail;

const ADJECTIVES: [&str; 24] = [
    "amber", "brave", "calm", "clever", "eager", "fond", "gentle", "happy", "jolly", "keen",
    "kind", "lucid", "merry", "nifty", "noble", "quiet", "rapid", "sharp", "steady", "sunny",
    "swift", "tidy", "vivid", "witty",
];

const NOUNS: [&str; 24] = [
    "anvil", "bellows", "brick", "chimney", "clay", "coal", "crucible", "ember", "flame", "flue",
    "forge", "furnace", "glaze", "hearth", "ingot", "kettle", "oven", "potter", "sagger", "slag",
    "smelter", "spark", "tongs", "vessel",
];

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(super) fn validate(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    Ok(())
}

/// A free `adjective_noun` name (with a number appended after many collisions).
pub(super) fn generate(names_dir: &Path) -> anyhow::Result<String> {
    let mut seed = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| anyhow::anyhow!("read /dev/urandom: {e}"))?;
    let mut n = u64::from_le_bytes(seed);
    for attempt in 0..64u64 {
        let a = ADJECTIVES[(n % 24) as usize];
        let b = NOUNS[((n / 24) % 24) as usize];
        let name = if attempt < 32 {
            format!("{a}_{b}")
        } else {
            format!("{a}_{b}{attempt}")
        };
        if std::fs::symlink_metadata(names_dir.join(&name)).is_err() {
            return Ok(name);
        }
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    bail!("could not find a free container name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["web", "a", "web-1", "x_y.z", "9lives"] {
            validate(ok).unwrap();
        }
        for bad in ["", "-web", "_x", "a b", "a/b", "ü"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let name = generate(dir.path()).unwrap();
        validate(&name).unwrap();
        assert!(name.contains('_'));
    }
}
