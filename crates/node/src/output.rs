//! Human output: the summary table, stderr tails, sizes.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::run::JobReport;

pub use crate::human::bytes;

pub fn millis(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.2} s", ms as f64 / 1000.0) }
}

/// The summary table of a run's jobs, as `shoal run` prints it.
pub fn summary(reports: &[JobReport]) -> String {
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
    table.to_string()
}

/// Prints a DAG's warnings (spellings read another way than written) to stderr.
pub fn print_warnings(warnings: &[shoal_dag::Diagnostic]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
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

/// The last `lines` lines of a job's stderr, for the failure report, with control characters
/// escaped (a job's output must not drive the terminal it is shown on).
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    shoal_dag::escape_for_terminal(&all[all.len().saturating_sub(lines)..].join("\n")).into_owned()
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM UTC` (`never` past year 9999).
pub fn unix_ms_utc(ms: u64) -> String {
    let secs = ms / 1000;
    if secs / 86_400 > 2_932_896 {
        return "never".into();
    }
    let (y, m, d, hh, mm, _) = civil(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
}

/// Unix seconds as (year, month, day, hour, minute, second), UTC.
pub fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = secs % 86_400;
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn dates() {
        assert_eq!(super::unix_ms_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::unix_ms_utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(super::unix_ms_utc(1_796_543_718_949), "2026-12-06 07:55 UTC");
        assert_eq!(super::unix_ms_utc(u64::MAX), "never");
    }
}
