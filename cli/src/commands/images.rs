//! `kiln images`: the named images in the store, like `docker images`.

use std::path::Path;
use std::process::ExitCode;

use snapshotter::Store;
use snapshotter::image::read_image;

use crate::args::ImagesArgs;

pub(crate) fn run(root: &Path, a: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (name, desc) in store.images()? {
        let img = read_image(&store, &desc)?;
        let size: u64 = img.manifest.layers().iter().map(|l| l.size()).sum();
        let id = img.id();
        let shown_id = if a.no_trunc {
            id.to_string()
        } else {
            id.short().to_string()
        };
        let created = img
            .config
            .created
            .clone()
            .map(|c| ago(&c))
            .unwrap_or_default();
        let tag = name.tag().unwrap_or("<none>").to_string();
        json_rows.push(serde_json::json!({
            "Repository": name.familiar_name(),
            "Tag": tag,
            "ID": shown_id,
            "Digest": repo_digest(&desc).unwrap_or_else(|| "<none>".into()),
            "CreatedAt": img.config.created,
            "CreatedSince": created,
            "Size": human_size(size),
        }));
        let mut row = vec![name.familiar_name(), tag];
        if a.digests {
            row.push(repo_digest(&desc).unwrap_or_else(|| "<none>".into()));
        }
        row.extend([shown_id, created, human_size(size)]);
        rows.push(row);
    }
    if a.format.as_deref() == Some("json") {
        for r in json_rows {
            println!("{r}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.quiet {
        let id_col = if a.digests { 3 } else { 2 };
        for r in rows {
            println!("{}", r[id_col]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec!["REPOSITORY", "TAG"];
    if a.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    print_table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

/// The digest the registry knows this name by (after a pull or push), as Docker's DIGEST
/// column shows it.
pub(crate) fn repo_digest(desc: &oci_spec::image::Descriptor) -> Option<String> {
    let ann = desc.annotations().as_ref()?;
    let (_, digest) = ann
        .get(builder::registry::REPO_DIGEST_ANNOTATION)?
        .split_once('@')?;
    Some(digest.to_string())
}

/// Prints rows in columns separated by three spaces, as Docker does.
pub(crate) fn print_table<R: AsRef<[String]>>(header: &[String], rows: &[R]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(header);
    for r in rows {
        line(r.as_ref());
    }
}

/// `2 hours ago`, as Docker prints ages.
pub(crate) fn ago(rfc3339: &str) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return rfc3339.to_string();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds();
    match secs {
        s if s < 60 => "Less than a minute ago".into(),
        s if s < 3600 => plural(s / 60, "minute"),
        s if s < 86400 => plural(s / 3600, "hour"),
        s if s < 86400 * 30 => plural(s / 86400, "day"),
        s if s < 86400 * 365 => plural(s / (86400 * 30), "month"),
        s => plural(s / (86400 * 365), "year"),
    }
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Decimal units, as Docker prints sizes.
pub(crate) fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    // Four significant digits, trailing zeros dropped (Go's %.4g, as Docker prints).
    let int_digits = if v < 1.0 {
        1
    } else {
        v.log10().floor() as usize + 1
    };
    let decimals = 4usize.saturating_sub(int_digits);
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", units[i])
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_like_docker() {
        assert_eq!(super::human_size(512), "512B");
        assert_eq!(super::human_size(4_261_000), "4.261MB");
        assert_eq!(super::human_size(12_300_000), "12.3MB");
        assert_eq!(super::human_size(2_000_000_000), "2GB");
    }
}
