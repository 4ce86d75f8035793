//! A SQL lexer just deep enough to find statement boundaries and keywords:
//! it understands `--` and nested `/* */` comments, string literals
//! (standard, `E''` with backslash escapes, and backslash escapes everywhere
//! when standard_conforming_strings is off), dollar quoting, quoted
//! identifiers, and punctuation. It never allocates.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An unquoted identifier or keyword.
    Word,
    /// A `"quoted"` identifier.
    QuotedIdent,
    /// Any string literal, including dollar-quoted ones.
    String,
    /// A number.
    Number,
    /// `$1` and friends.
    Param,
    /// One punctuation byte: `( ) , ; [ ] .` and the like.
    Punct(u8),
    /// An operator such as `=`, `::`, `<>`.
    Operator,
}

/// One token: its kind and byte range in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// The token's text in `src`.
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start..self.end]
    }

    /// True when this is the unquoted word `kw` (ASCII case-insensitive).
    pub fn is_word(&self, src: &str, kw: &str) -> bool {
        self.kind == Kind::Word && self.text(src).eq_ignore_ascii_case(kw)
    }
}

/// Iterates over the tokens of `src`, skipping whitespace and comments.
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    backslash_escapes: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer for `src`; `standard_conforming_strings` as the session has it.
    pub fn new(src: &'a str, standard_conforming_strings: bool) -> Lexer<'a> {
        Lexer {
            src: src.as_bytes(),
            pos: 0,
            backslash_escapes: !standard_conforming_strings,
        }
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.src.get(self.pos + ahead).copied().unwrap_or(0)
    }

    /// Advances past every byte of class `class` (a [`BYTE_CLASS`] bit).
    fn skip_class(&mut self, class: u8) {
        self.pos = skip_class(self.src, self.pos, class);
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        loop {
            match (self.peek(0), self.peek(1)) {
                (c, _) if class_of(c) & SPACE != 0 => self.skip_class(SPACE),
                (b'-', b'-') => {
                    while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                (b'/', b'*') => {
                    self.pos += 2;
                    let mut depth = 1;
                    while self.pos < self.src.len() && depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            (b'/', b'*') => {
                                depth += 1;
                                self.pos += 2;
                            }
                            (b'*', b'/') => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Skips a `'...'` literal whose opening quote is at `self.pos`.
    fn skip_quoted(&mut self, backslashes: bool) {
        self.pos += 1;
        while self.pos < self.src.len() {
            match self.src[self.pos] {
                b'\\' if backslashes => self.pos += 2,
                b'\'' if self.peek(1) == b'\'' => self.pos += 2,
                b'\'' => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
        self.pos = self.pos.min(self.src.len());
    }

    /// Skips `"..."` with `""` as an escaped quote.
    fn skip_quoted_ident(&mut self) {
        self.pos += 1;
        while self.pos < self.src.len() {
            if self.src[self.pos] == b'"' {
                if self.peek(1) == b'"' {
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return;
            }
            self.pos += 1;
        }
    }

    /// At a `$`: a dollar-quoted string if a valid tag follows; returns
    /// whether one was consumed.
    fn try_dollar_quote(&mut self) -> bool {
        let start = self.pos;
        let mut end = start + 1;
        while end < self.src.len()
            && (self.src[end].is_ascii_alphanumeric()
                || self.src[end] == b'_'
                || self.src[end] >= 0x80)
        {
            end += 1;
        }
        if end >= self.src.len()
            || self.src[end] != b'$'
            || self.src.get(start + 1).is_some_and(u8::is_ascii_digit)
        {
            return false;
        }
        let tag = &self.src[start..=end];
        let mut i = end + 1;
        while i + tag.len() <= self.src.len() {
            if &self.src[i..i + tag.len()] == tag {
                self.pos = i + tag.len();
                return true;
            }
            i += 1;
        }
        self.pos = self.src.len();
        true
    }
}

/// [`BYTE_CLASS`] bit: starts an identifier (letter, `_`, non-ASCII).
pub(super) const IDENT_START: u8 = 1;
/// [`BYTE_CLASS`] bit: continues an identifier (also digits and `$`).
pub(super) const IDENT_CHAR: u8 = 2;
/// [`BYTE_CLASS`] bit: whitespace.
pub(super) const SPACE: u8 = 4;
/// [`BYTE_CLASS`] bit: continues a number (letters, digits, `.`).
pub(super) const NUMBER_CHAR: u8 = 8;
/// [`BYTE_CLASS`] bit: an operator character.
pub(super) const OPERATOR: u8 = 16;

const OPERATOR_CHARS: &[u8] = b"+-*/<>=~!@#%^&|`?:";

/// What each byte can be, as bits: one table lookup per byte instead of a
/// chain of comparisons (the lexer runs on every routed statement).
/// A `static`, not a `const`: a const array indexed at run time is copied
/// onto the stack wherever it is used.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut bits = 0;
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            bits |= IDENT_START | IDENT_CHAR;
        }
        if c.is_ascii_digit() || c == b'$' {
            bits |= IDENT_CHAR;
        }
        if c.is_ascii_alphanumeric() || c == b'.' {
            bits |= NUMBER_CHAR;
        }
        if c.is_ascii_whitespace() {
            bits |= SPACE;
        }
        let mut j = 0;
        while j < OPERATOR_CHARS.len() {
            if OPERATOR_CHARS[j] == c {
                bits |= OPERATOR;
            }
            j += 1;
        }
        table[i] = bits;
        i += 1;
    }
    table
};

/// The [`BYTE_CLASS`] bits of `c`.
pub(super) fn class_of(c: u8) -> u8 {
    BYTE_CLASS[c as usize]
}

/// The first position at or after `pos` whose byte is not of class
/// `class` (a [`BYTE_CLASS`] bit); `src.len()` when there is none.
pub(super) fn skip_class(src: &[u8], pos: usize, class: u8) -> usize {
    let mut at = pos;
    while let Some(&c) = src.get(at) {
        if class_of(c) & class == 0 {
            return at;
        }
        at += 1;
    }
    at.min(src.len())
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.skip_trivia();
        let start = self.pos;
        let c = self.peek(0);
        if start >= self.src.len() {
            return None;
        }
        let kind = match c {
            b'\'' => {
                self.skip_quoted(self.backslash_escapes);
                Kind::String
            }
            b'e' | b'E' if self.peek(1) == b'\'' => {
                self.pos += 1;
                self.skip_quoted(true);
                Kind::String
            }
            b'"' => {
                self.skip_quoted_ident();
                Kind::QuotedIdent
            }
            b'$' if self.peek(1).is_ascii_digit() => {
                self.pos += 1;
                while self.peek(0).is_ascii_digit() {
                    self.pos += 1;
                }
                Kind::Param
            }
            b'$' if self.try_dollar_quote() => Kind::String,
            c if class_of(c) & IDENT_START != 0 => {
                self.skip_class(IDENT_CHAR);
                Kind::Word
            }
            c if c.is_ascii_digit() || (c == b'.' && self.peek(1).is_ascii_digit()) => {
                self.skip_class(NUMBER_CHAR);
                Kind::Number
            }
            c if class_of(c) & OPERATOR != 0 => {
                while self.pos < self.src.len()
                    && class_of(self.src[self.pos]) & OPERATOR != 0
                    && !matches!((self.peek(0), self.peek(1)), (b'-', b'-') | (b'/', b'*'))
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    self.pos += 1;
                }
                Kind::Operator
            }
            c => {
                self.pos += 1;
                Kind::Punct(c)
            }
        };
        Some(Token {
            kind,
            start,
            end: self.pos.min(self.src.len()),
        })
    }
}

/// Splits `src` into statements at top-level semicolons (semicolons inside
/// literals, comments and parentheses do not count). Empty statements are
/// left out.
pub fn statements(src: &str, standard_conforming_strings: bool) -> Vec<Vec<Token>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0usize;
    for token in Lexer::new(src, standard_conforming_strings) {
        match token.kind {
            Kind::Punct(b'(') | Kind::Punct(b'[') => depth += 1,
            Kind::Punct(b')') | Kind::Punct(b']') => depth = depth.saturating_sub(1),
            Kind::Punct(b';') if depth == 0 => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                continue;
            }
            _ => {}
        }
        current.push(token);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<&str> {
        Lexer::new(src, true).map(|t| t.text(src)).collect()
    }

    #[test]
    fn words_literals_and_comments() {
        assert_eq!(
            texts("SELECT /* a /* nested */ comment */ 'it''s', E'a\\'b', x -- tail\n FROM \"T\"\"x\""),
            vec!["SELECT", "'it''s'", ",", "E'a\\'b'", ",", "x", "FROM", "\"T\"\"x\""]
        );
    }

    #[test]
    fn dollar_quotes_and_params() {
        let src = "SELECT $1, $tag$ ; 'x' $tag$, $$a;b$$, 1.5e3";
        assert_eq!(
            texts(src),
            vec![
                "SELECT",
                "$1",
                ",",
                "$tag$ ; 'x' $tag$",
                ",",
                "$$a;b$$",
                ",",
                "1.5e3"
            ]
        );
    }

    #[test]
    fn backslashes_when_strings_are_not_standard() {
        let src = "SELECT 'a\\';b'";
        assert_eq!(Lexer::new(src, false).count(), 2);
        assert_eq!(statements(src, true).len(), 2);
        assert_eq!(statements(src, false).len(), 1);
    }

    #[test]
    fn statement_split() {
        let src = "BEGIN; SET x = ';'; SELECT f(';'); ; COMMIT";
        let stmts = statements(src, true);
        assert_eq!(stmts.len(), 4);
        assert!(stmts[1][0].is_word(src, "set"));
        assert!(stmts[3][0].is_word(src, "COMMIT"));
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for src in [
            "'abc",
            "\"abc",
            "/* abc",
            "$tag$ abc",
            "E'\\",
            "$",
            "-",
            "$$",
        ] {
            let _ = statements(src, true);
            let _ = statements(src, false);
        }
    }

    #[test]
    fn operators() {
        assert_eq!(texts("a::int<>b"), vec!["a", "::", "int", "<>", "b"]);
        assert_eq!(texts("a=-1"), vec!["a", "=-", "1"]);
    }
}
