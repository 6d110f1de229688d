//! Sizes as people read them, shared by the CLI's output and the explorer's messages.

/// `1536` -> `1.5 KiB`; below 1 KiB, exact bytes.
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

/// Everything but RFC 3986's unreserved characters, percent-encoded: a path or a name made safe
/// for one segment or query value of a URL.
pub fn percent_encode(s: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

#[cfg(test)]
mod percent_tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(super::percent_encode("a b/c:d~e-f_g.h"), "a%20b%2Fc%3Ad~e-f_g.h");
        assert_eq!(super::percent_encode("é?&="), "%C3%A9%3F%26%3D");
    }
}
