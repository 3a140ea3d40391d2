//! Cutting SQL text into statements and statements into tokens, enough to recognise what
//! a statement changes (pure). The statements themselves are run as written; this only
//! has to find their kind, their table and their ALTER TABLE actions.

/// One token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A keyword or unquoted identifier, lowercased.
    Word(String),
    /// A double-quoted identifier, as written between the quotes (quotes undoubled).
    Quoted(String),
    /// A string literal, a number, or an operator: its text.
    Other(String),
    Comma,
    Dot,
    Open,
    Close,
}

impl Token {
    /// Whether this is the keyword `kw` (lowercase).
    #[must_use]
    pub fn is(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w) if w == kw)
    }

    /// The identifier it names, if it is one.
    #[must_use]
    pub fn ident(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

/// Why text could not be cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SplitError(pub String);

/// The statements of `sql` (separated by `;` outside quotes, comments and dollar quotes),
/// trimmed, empty ones left out.
pub fn statements(sql: &str) -> Result<Vec<String>, SplitError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    let b = sql.as_bytes();
    while pos < b.len() {
        pos = match b[pos] {
            b';' => {
                push(&mut out, &sql[start..pos]);
                start = pos + 1;
                pos + 1
            }
            _ => skip_one(sql, pos)?,
        };
    }
    push(&mut out, &sql[start..]);
    Ok(out)
}

fn push(out: &mut Vec<String>, s: &str) {
    let t = s.trim();
    if !strip_comments_only(t) {
        out.push(t.to_string());
    }
}

/// True when `s` holds nothing but whitespace and comments.
fn strip_comments_only(s: &str) -> bool {
    tokens(s).map(|t| t.is_empty()).unwrap_or(false)
}

/// Position after the lexical element starting at `pos` (a quoted string, identifier,
/// comment or dollar quote as a whole; any other character alone).
fn skip_one(sql: &str, pos: usize) -> Result<usize, SplitError> {
    let b = sql.as_bytes();
    let rest = &sql[pos..];
    match b[pos] {
        b'\'' => {
            // E'…' strings allow backslash escapes.
            let escapes =
                pos > 0 && matches!(b[pos - 1], b'e' | b'E') && !is_ident_byte_before(b, pos - 1);
            let mut i = pos + 1;
            while i < b.len() {
                match b[i] {
                    b'\\' if escapes => i += 2,
                    b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                    b'\'' => return Ok(i + 1),
                    _ => i += 1,
                }
            }
            Err(SplitError("unterminated string literal".into()))
        }
        b'"' => {
            let mut i = pos + 1;
            while i < b.len() {
                match b[i] {
                    b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
                    b'"' => return Ok(i + 1),
                    _ => i += 1,
                }
            }
            Err(SplitError("unterminated quoted identifier".into()))
        }
        b'-' if rest.starts_with("--") => Ok(rest.find('\n').map_or(sql.len(), |n| pos + n + 1)),
        b'/' if rest.starts_with("/*") => {
            let mut depth = 0;
            let mut i = pos;
            while i < b.len() {
                if sql[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if sql[i..].starts_with("*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        return Ok(i);
                    }
                } else {
                    i += 1;
                }
            }
            Err(SplitError("unterminated /* comment".into()))
        }
        b'$' if !is_ident_byte_before(b, pos) => match dollar_tag(rest) {
            Some(tag) => match rest[tag.len()..].find(tag) {
                Some(end) => Ok(pos + tag.len() + end + tag.len()),
                None => Err(SplitError(format!("unterminated dollar quote {tag}"))),
            },
            None => Ok(pos + 1),
        },
        _ => Ok(pos + rest.chars().next().map_or(1, char::len_utf8)),
    }
}

fn is_ident_byte_before(b: &[u8], pos: usize) -> bool {
    pos > 0 && (b[pos - 1].is_ascii_alphanumeric() || b[pos - 1] == b'_' || b[pos - 1] >= 0x80)
}

/// `$tag$` (or `$$`) at the start of `s`.
fn dollar_tag(s: &str) -> Option<&str> {
    let end = s[1..].find('$')? + 1;
    let tag = &s[1..end];
    let ok = tag
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_alphabetic() || (i > 0 && c.is_ascii_digit()));
    ok.then(|| &s[..=end])
}

/// The tokens of one statement; comments are dropped.
pub fn tokens(stmt: &str) -> Result<Vec<Token>, SplitError> {
    let b = stmt.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let c = b[pos];
        let next = skip_one(stmt, pos)?;
        let text = &stmt[pos..next];
        match c {
            _ if c.is_ascii_whitespace() => {}
            b'-' if text.starts_with("--") => {}
            b'/' if text.starts_with("/*") => {}
            b'"' => out.push(Token::Quoted(text[1..text.len() - 1].replace("\"\"", "\""))),
            b',' => out.push(Token::Comma),
            b'.' => out.push(Token::Dot),
            b'(' => out.push(Token::Open),
            b')' => out.push(Token::Close),
            _ if c.is_ascii_digit() => {
                let mut end = pos;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'.') {
                    end += 1;
                }
                out.push(Token::Other(stmt[pos..end].to_string()));
                pos = end;
                continue;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let mut end = pos;
                while end < b.len()
                    && (b[end].is_ascii_alphanumeric()
                        || b[end] == b'_'
                        || b[end] == b'$'
                        || b[end] >= 0x80)
                {
                    end += 1;
                }
                // E'…' / U&'…' / B'…' literals: the prefix belongs to the string.
                if b.get(end) == Some(&b'\'') && end - pos == 1 {
                    let close = skip_one(stmt, end)?;
                    out.push(Token::Other(stmt[pos..close].to_string()));
                    pos = close;
                    continue;
                }
                out.push(Token::Word(stmt[pos..end].to_lowercase()));
                pos = end;
                continue;
            }
            _ => out.push(Token::Other(text.to_string())),
        }
        pos = next;
    }
    Ok(out)
}

/// The first line of a statement, shortened, for messages.
pub fn short(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or("").trim();
    if line.chars().count() > 80 || sql.lines().count() > 1 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_comments_and_dollar_quotes() {
        let sql = "ALTER TABLE t ADD COLUMN a text DEFAULT 'x;y'; -- c;\n\
                   /* one; /* nested; */ */ CREATE TABLE \"we;ird\" (id int);\
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\
                   SELECT E'it\\'s;', $$a;b$$ ;  ;";
        let s = statements(sql).unwrap();
        assert_eq!(s.len(), 4, "{s:#?}");
        assert_eq!(s[0], "ALTER TABLE t ADD COLUMN a text DEFAULT 'x;y'");
        assert!(s[1].starts_with("-- c;"));
        assert!(s[1].ends_with("CREATE TABLE \"we;ird\" (id int)"));
        assert!(s[2].contains("$body$ SELECT 1; $body$"));
        assert_eq!(s[3], "SELECT E'it\\'s;', $$a;b$$");
        assert_eq!(
            statements(" -- nothing\n ; /* */").unwrap(),
            Vec::<String>::new()
        );
        assert!(statements("SELECT 'open").is_err());
    }

    #[test]
    fn tokens_lowercase_words_and_keep_quoted_identifiers() {
        let t = tokens(
            "ALTER TABLE public.\"Order\" ADD COLUMN \"a\"\"b\" numeric(10, 2) DEFAULT E'x'",
        )
        .unwrap();
        assert_eq!(
            t,
            vec![
                Token::Word("alter".into()),
                Token::Word("table".into()),
                Token::Word("public".into()),
                Token::Dot,
                Token::Quoted("Order".into()),
                Token::Word("add".into()),
                Token::Word("column".into()),
                Token::Quoted("a\"b".into()),
                Token::Word("numeric".into()),
                Token::Open,
                Token::Other("10".into()),
                Token::Comma,
                Token::Other("2".into()),
                Token::Close,
                Token::Word("default".into()),
                Token::Other("E'x'".into()),
            ]
        );
    }
}
