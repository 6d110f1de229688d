//! Human output: the summary table, stderr tails, sizes.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::run::JobReport;

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

pub fn millis(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.2} s", ms as f64 / 1000.0) }
}

pub fn print_summary(reports: &[JobReport]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["job", "status", "cached", "time", "outputs"]);
    for r in reports {
        let outputs: Vec<String> =
            r.outputs.iter().map(|(name, d)| format!("{name}={} ({})", d.hash.short(), bytes(d.size))).collect();
        table.add_row(vec![
            r.job.clone(),
            r.status.to_string(),
            if r.cached { "yes".into() } else { "no".into() },
            r.wall_ms.map(millis).unwrap_or_else(|| "-".into()),
            outputs.join("\n"),
        ]);
    }
    println!("{table}");
}

pub fn print_images(images: &[shoal_blobs::image::ImageEntry]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["tag", "image", "oci digest"]);
    for i in images {
        table.add_row(vec![i.tag.clone(), i.id.to_string(), i.oci_digest.clone().unwrap_or_default()]);
    }
    println!("{table}");
}

/// The last `lines` lines of a job's stderr, for the failure report.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
