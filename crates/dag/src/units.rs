//! Sizes and durations as people write them in DAG files.

/// Parses a size: an integer or decimal with an optional unit: B, K/KB/M/MB/G/GB/T/TB (powers of
/// 1000) or KiB/MiB/GiB/TiB (powers of 1024). `256MiB`, `1.5GiB`, `1000`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let factor: u64 = match unit {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. `256MiB`)"
            ));
        }
    };
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.') {
        return Err(format!("`{text}` is not a size; write a number and a unit, e.g. `512MiB`"));
    }
    let bytes = if let Some((whole, frac)) = num.split_once('.') {
        let value: f64 = format!("{whole}.{frac}").parse().map_err(|_| format!("`{text}` is not a size"))?;
        let bytes = value * factor as f64;
        if bytes.fract() != 0.0 {
            return Err(format!("`{text}` is not a whole number of bytes"));
        }
        if bytes > u64::MAX as f64 {
            return Err(format!("`{text}` is too large"));
        }
        bytes as u64
    } else {
        let value: u64 = num.parse().map_err(|_| format!("`{text}` is too large"))?;
        value.checked_mul(factor).ok_or_else(|| format!("`{text}` is too large"))?
    };
    Ok(bytes)
}

/// Parses a duration into milliseconds: one or more `<integer><unit>` with units ms, s, m, h, d,
/// largest first: `250ms`, `10s`, `5m`, `1h30m`, `2d`.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. `30s`, `5m` or `1h30m`".into());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    let mut last_unit_ms = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}` is not a duration; write e.g. `30s`, `5m` or `1h30m`"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| format!("`{text}` is too long"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!("`{text}` needs a unit: ms, s, m, h or d (e.g. `30s`)"));
            }
            other => {
                return Err(format!("unknown duration unit `{other}` in `{text}`; use ms, s, m, h or d"));
            }
        };
        if unit_ms >= last_unit_ms {
            return Err(format!("`{text}`: write units from largest to smallest, each once (e.g. `1h30m`)"));
        }
        last_unit_ms = unit_ms;
        rest = &rest[unit_len..];
        total = value
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{text}` is too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, want) in [
            ("0", 0),
            ("1000", 1000),
            ("1B", 1),
            ("1K", 1000),
            ("2KB", 2000),
            ("1KiB", 1024),
            ("256MiB", 256 << 20),
            ("1.5GiB", 3 << 29),
            ("1GB", 1_000_000_000),
            ("1TiB", 1 << 40),
            (" 16MiB ", 16 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "MiB", "12 parsecs", "1..2MiB", "1.2.3", "1mib", "0.3B", "99999999999999999999", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1m30s500ms", 90_500),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(want), "{text}");
        }
        for bad in ["", "10", "s", "10x", "1m1h", "1s1s", "ten s", "1.5s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad} should be refused");
        }
    }
}
