//! `kiln images`: the named images in the store, like `docker images`.

use std::path::Path;
use std::process::ExitCode;

use snapshotter::Store;
use snapshotter::image::read_image;

use crate::args::ImagesArgs;

pub(crate) fn run(root: &Path, a: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let mut rows = Vec::new();
    for (name, desc) in store.images()? {
        let img = read_image(&store, &desc)?;
        let size: u64 = img.manifest.layers().iter().map(|l| l.size()).sum();
        let id = img.id();
        let id = if a.no_trunc {
            id.to_string()
        } else {
            id.short().to_string()
        };
        rows.push([
            name.familiar_name(),
            name.tag().unwrap_or("<none>").to_string(),
            id,
            img.config
                .created
                .clone()
                .map(|c| ago(&c))
                .unwrap_or_default(),
            human_size(size),
        ]);
    }
    if a.quiet {
        for r in rows {
            println!("{}", r[2]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// `2 hours ago`, as Docker prints ages.
fn ago(rfc3339: &str) -> String {
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
fn human_size(n: u64) -> String {
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
