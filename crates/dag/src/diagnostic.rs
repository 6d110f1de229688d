//! Problems found in a DAG file, each located (file, line, column) with a fix.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a problem is: file, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub col: u32,
}

/// One problem in a DAG file, with where it is, which job, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub location: Location,
    pub job: Option<String>,
    pub message: String,
    pub help: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location { file, line, col } = &self.location;
        write!(f, "{}:{line}:{col}: ", escape_for_terminal(file))?;
        if let Some(job) = &self.job {
            write!(f, "job `{}`: ", escape_for_terminal(job))?;
        }
        write!(f, "{}\n  help: {}", escape_for_terminal(&self.message), escape_for_terminal(&self.help))
    }
}

/// `text` with control characters (NUL, ESC, ...) and bidirectional overrides written as
/// `\u{..}` escapes: text quoted from a DAG file must not drive the terminal it is printed on
/// (an escape sequence, a right-to-left override that makes `evil` read as `live`).
pub fn escape_for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Every problem found in one DAG file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let file = self.0.first().map(|d| d.location.file.as_str()).unwrap_or("the DAG");
        let n = self.0.len();
        write!(f, "{n} problem{} in {file}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}
