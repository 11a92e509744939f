//! The uncompressed kernel inside a bzImage, for a faster boot: qemu boots an ELF `vmlinux`
//! through its PVH entry point, which skips the kernel's self-decompression (about half a
//! second under software emulation). Debian's cloud kernel is LZ4-compressed (the legacy
//! LZ4 format); other compressions keep the bzImage as it is.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// The legacy LZ4 format's magic number.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// A legacy LZ4 block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage, from its setup header (boot protocol 2.08+).
fn payload(image: &[u8]) -> Option<&[u8]> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let protected = (setup_sects + 1) * 512;
    let offset = usize::try_from(u32_at(image, 0x248)?).ok()?;
    let len = usize::try_from(u32_at(image, 0x24c)?).ok()?;
    image.get(protected + offset..protected + offset + len)
}

/// Decompresses a legacy-format LZ4 stream (the kernel build appends the uncompressed size,
/// which ends the walk).
fn lz4_legacy(mut data: &[u8]) -> Option<Vec<u8>> {
    if u32_at(data, 0)? != LZ4_LEGACY_MAGIC {
        return None;
    }
    let mut out = Vec::new();
    data = &data[4..];
    while data.len() >= 4 {
        let n = u32_at(data, 0)?;
        if n == LZ4_LEGACY_MAGIC {
            data = &data[4..];
            continue;
        }
        let n = usize::try_from(n).ok()?;
        if n == 0 || n > data.len() - 4 {
            break;
        }
        let start = out.len();
        out.resize(start + LZ4_LEGACY_BLOCK, 0);
        let got = lz4_flex::block::decompress_into(&data[4..4 + n], &mut out[start..]).ok()?;
        out.truncate(start + got);
        data = &data[4 + n..];
    }
    (out.get(..4) == Some(b"\x7fELF")).then_some(out)
}

/// The kernel to boot: an ELF kernel as it is; the `vmlinux` of an LZ4 bzImage, extracted
/// once into `cache` (keyed by the image's path, size and mtime); else the bzImage.
pub(crate) fn bootable(image: &Path, cache: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(md) = fs::metadata(image) else {
        return image.to_path_buf();
    };
    let key = format!("{}-{}-{}", image.display(), md.len(), md.mtime());
    let digest: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let cached = cache.join(format!("vmlinux-{digest}"));
    if cached.is_file() {
        return cached;
    }
    let extracted = fs::read(image).ok().and_then(|data| {
        if data.starts_with(b"\x7fELF") {
            return None;
        }
        lz4_legacy(payload(&data)?)
    });
    let Some(elf) = extracted else {
        return image.to_path_buf();
    };
    let written = fs::create_dir_all(cache)
        .and_then(|()| tempfile::NamedTempFile::new_in(cache))
        .and_then(|mut tmp| {
            std::io::Write::write_all(&mut tmp, &elf)?;
            tmp.persist(&cached).map_err(|e| e.error)
        });
    match written {
        Ok(_) => cached,
        Err(e) => {
            tracing::debug!("keep the bzImage: cannot write {}: {e}", cached.display());
            image.to_path_buf()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_lz4_blocks_decompress_and_the_size_trailer_ends_them() {
        let body: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..20_000u32).flat_map(|i| (i % 251).to_le_bytes()))
            .collect();
        let block = lz4_flex::block::compress(&body);
        let mut stream = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
        stream.extend_from_slice(&block);
        stream.extend_from_slice(&(body.len() as u32).to_le_bytes());
        assert_eq!(lz4_legacy(&stream), Some(body));
        assert_eq!(lz4_legacy(b"not lz4 at all"), None);
    }
}
