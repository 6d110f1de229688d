//! A JSON parser that remembers where everything is.
//!
//! serde_json reports one error and no positions for valid-but-wrong values; shoal reports every
//! problem of a DAG with its `line:col`, so it parses into this located tree first (strict RFC 8259:
//! no comments, no trailing commas). Duplicate object keys are kept, so the converter can report them.

/// A position in the text: 1-based line, 1-based column counted in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number as written, so integers are never rounded through f64.
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<Member>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// A syntax error: where, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Nesting deeper than this is refused (a DAG needs four levels), so hostile input cannot
/// exhaust the stack.
const DEPTH_MAX: usize = 64;

#[cfg(test)]
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    Parser::new(text, None).document()
}

/// Like [`parse`], but each element of the array under `key` in the top-level object (its first
/// occurrence) is handed to `take` as soon as it is parsed, and left in the tree as a `Null` at
/// its position. A DAG's jobs are converted one at a time this way: the located tree of a whole
/// big DAG took more memory than the DAG it describes.
pub fn parse_taking(text: &str, key: &str, take: &mut dyn FnMut(Node)) -> Result<Node, SyntaxError> {
    Parser::new(text, Some((key, take))).document()
}

struct Parser<'a> {
    /// The text, read in place (a copy as `char`s took four bytes per byte of the file).
    text: &'a str,
    /// Byte offset of the next character.
    i: usize,
    line: u32,
    col: u32,
    /// The top-level key whose array elements are handed out, and to what; taken when used.
    take: Option<(&'a str, &'a mut dyn FnMut(Node))>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, take: Option<(&'a str, &'a mut dyn FnMut(Node))>) -> Self {
        Parser { text, i: 0, line: 1, col: 1, take }
    }

    fn document(mut self) -> Result<Node, SyntaxError> {
        self.skip_ws();
        let node = self.value(0)?;
        self.skip_ws();
        if self.i < self.text.len() {
            return Err(self.err("unexpected text after the end of the JSON document"));
        }
        Ok(node)
    }

    fn pos(&self) -> Pos {
        Pos { line: self.line, col: self.col }
    }

    fn err(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError { pos: self.pos(), message: message.into() }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.i..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.bump();
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), SyntaxError> {
        if self.peek() == Some(c) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(format!("expected {what}, found {}", self.found())))
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the file".into(),
            Some(c) => format!("`{c}`"),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > DEPTH_MAX {
            return Err(self.err(format!("nesting deeper than {DEPTH_MAX} levels")));
        }
        let pos = self.pos();
        let value = match self.peek() {
            Some('{') => self.object(depth)?,
            Some('[') => self.array(depth, None)?,
            Some('"') => Value::String(self.string()?),
            Some('t') => self.word("true", Value::Bool(true))?,
            Some('f') => self.word("false", Value::Bool(false))?,
            Some('n') => self.word("null", Value::Null)?,
            Some(c) if c == '-' || c.is_ascii_digit() => self.number()?,
            Some(c) if c == '\'' || c.is_alphabetic() => {
                return Err(self.err(format!("expected a value (strings need double quotes), found {}", self.found())));
            }
            _ => return Err(self.err(format!("expected a value, found {}", self.found()))),
        };
        Ok(Node { pos, value })
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, SyntaxError> {
        let start = self.pos();
        for expected in word.chars() {
            if self.peek() != Some(expected) {
                return Err(SyntaxError {
                    pos: start,
                    message: format!("expected a value (strings need double quotes), found {}", self.found()),
                });
            }
            self.bump();
        }
        Ok(value)
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos();
        let mut s = String::new();
        if self.peek() == Some('-') {
            s.push('-');
            self.bump();
        }
        let digits = |p: &mut Parser, s: &mut String| {
            let mut n = 0;
            while let Some(c) = p.peek().filter(char::is_ascii_digit) {
                s.push(c);
                p.bump();
                n += 1;
            }
            n
        };
        let first = self.peek();
        if digits(self, &mut s) == 0 {
            return Err(self.err("expected a digit"));
        }
        if first == Some('0') && s.trim_start_matches('-').len() > 1 {
            return Err(SyntaxError { pos: start, message: "numbers may not have leading zeros".into() });
        }
        if self.peek() == Some('.') {
            s.push('.');
            self.bump();
            if digits(self, &mut s) == 0 {
                return Err(self.err("expected a digit after the decimal point"));
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            s.push('e');
            self.bump();
            if let Some(c @ ('+' | '-')) = self.peek() {
                s.push(c);
                self.bump();
            }
            if digits(self, &mut s) == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
        }
        Ok(Value::Number(s))
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.expect('"', "`\"`")?;
        let mut s = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string: add the closing `\"`"));
            };
            match c {
                '"' => {
                    self.bump();
                    return Ok(s);
                }
                '\\' => {
                    self.bump();
                    let esc = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    let decoded = match esc {
                        '"' => '"',
                        '\\' => '\\',
                        '/' => '/',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'u' => {
                            self.bump();
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.peek() != Some('\\') {
                                    return Err(self.err("a high surrogate must be followed by `\\u` and a low one"));
                                }
                                self.bump();
                                if self.peek() != Some('u') {
                                    return Err(self.err("a high surrogate must be followed by `\\u` and a low one"));
                                }
                                self.bump();
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid low surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            s.push(char::from_u32(code).ok_or_else(|| self.err("invalid unicode escape"))?);
                            continue;
                        }
                        other => return Err(self.err(format!("invalid escape `\\{other}`"))),
                    };
                    self.bump();
                    s.push(decoded);
                }
                c if (c as u32) < 0x20 => {
                    return Err(self.err("control characters must be escaped in strings (e.g. `\\n`)"));
                }
                c => {
                    self.bump();
                    s.push(c);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = self.peek().and_then(|c| c.to_digit(16)).ok_or_else(|| self.err("expected 4 hex digits"))?;
            self.bump();
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn array(&mut self, depth: usize, mut take: Option<&mut dyn FnMut(Node)>) -> Result<Value, SyntaxError> {
        self.expect('[', "`[`")?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(']') {
            self.bump();
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            let item = self.value(depth + 1)?;
            match take.as_mut() {
                Some(take) => {
                    let pos = item.pos;
                    take(item);
                    items.push(Node { pos, value: Value::Null });
                }
                None => items.push(item),
            }
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                    self.skip_ws();
                    if self.peek() == Some(']') {
                        return Err(self.err("trailing comma: remove the `,` before `]`"));
                    }
                }
                Some(']') => {
                    self.bump();
                    return Ok(Value::Array(items));
                }
                _ => {
                    return Err(self.err(format!("expected `,` or `]` in an array, found {}", self.found())));
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.expect('{', "`{`")?;
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some('"') {
                return Err(self.err(format!("expected a key in double quotes, found {}", self.found())));
            }
            let key_pos = self.pos();
            let key = self.string()?;
            self.skip_ws();
            self.expect(':', "`:` after the key")?;
            self.skip_ws();
            let value = match self.take.take() {
                Some((k, take)) if depth == 0 && k == key && self.peek() == Some('[') => {
                    Node { pos: self.pos(), value: self.array(depth + 1, Some(take))? }
                }
                other => {
                    self.take = other;
                    self.value(depth + 1)?
                }
            };
            members.push(Member { key, key_pos, value });
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                    self.skip_ws();
                    if self.peek() == Some('}') {
                        return Err(self.err("trailing comma: remove the `,` before `}`"));
                    }
                }
                Some('}') => {
                    self.bump();
                    return Ok(Value::Object(members));
                }
                _ => {
                    return Err(self.err(format!("expected `,` or `}}` in an object, found {}", self.found())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let node = parse("{\n  \"a\": [1, \"x\"],\n  \"b\": null\n}").unwrap();
        let Value::Object(members) = node.value else { panic!() };
        assert_eq!(members[0].key_pos, Pos { line: 2, col: 3 });
        let Value::Array(items) = &members[0].value.value else { panic!() };
        assert_eq!(items[1].pos, Pos { line: 2, col: 12 });
        assert_eq!(members[1].value.pos, Pos { line: 3, col: 8 });
    }

    #[test]
    fn strings_and_numbers() {
        let node = parse(r#"["a\"b\\c\u00e9\ud83d\ude00", -12.5e3, 0]"#).unwrap();
        let Value::Array(items) = node.value else { panic!() };
        assert_eq!(items[0].value, Value::String("a\"b\\cé😀".into()));
        assert_eq!(items[1].value, Value::Number("-12.5e3".into()));
    }

    #[test]
    fn syntax_errors() {
        for (text, line, col) in [
            ("{\"a\": 1,}", 1, 9),
            ("[1 2]", 1, 4),
            ("{a: 1}", 1, 2),
            ("\"abc", 1, 5),
            ("{\"a\" 1}", 1, 6),
            ("[01]", 1, 2),
            ("{}\n x", 2, 2),
            ("[tru]", 1, 2),
            // Columns count characters, not bytes.
            ("[\"é😀\" x]", 1, 7),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.pos.line, e.pos.col), (line, col), "{text}: {}", e.message);
        }
    }

    #[test]
    fn taking_hands_out_the_top_level_arrays_elements_once() {
        let mut taken = Vec::new();
        let text = "{\"jobs\": [{\"a\": 1},\n 2], \"x\": {\"jobs\": [3]}, \"jobs\": [4]}";
        let node = parse_taking(text, "jobs", &mut |n| taken.push(n)).unwrap();
        assert_eq!(
            taken.iter().map(|n| n.pos).collect::<Vec<_>>(),
            [Pos { line: 1, col: 11 }, Pos { line: 2, col: 2 }]
        );
        assert_eq!(taken[1].value, Value::Number("2".into()));
        let Value::Object(members) = node.value else { panic!() };
        // Left as nulls at their places; a nested or second `jobs` is kept whole.
        let Value::Array(items) = &members[0].value.value else { panic!() };
        assert_eq!(
            items.iter().map(|n| (n.pos, &n.value)).collect::<Vec<_>>(),
            [(Pos { line: 1, col: 11 }, &Value::Null), (Pos { line: 2, col: 2 }, &Value::Null)]
        );
        let Value::Array(items) = &members[2].value.value else { panic!() };
        assert_eq!(items[0].value, Value::Number("4".into()));
        assert_eq!(parse(text).unwrap().pos, Pos { line: 1, col: 1 });
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(1000) + &"]".repeat(1000);
        assert!(parse(&text).unwrap_err().message.contains("nesting"));
    }
}
