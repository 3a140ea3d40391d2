//! Aligned text tables for the read commands (`status`, `conflicts`): a header row, then
//! rows; every column as wide as its widest cell, trailing spaces trimmed.

/// Renders `rows` under `headers`; rows shorter than the header get empty cells.
#[must_use]
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, w) in widths.iter().enumerate() {
            let c = cells.next().unwrap_or("");
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(c);
            out.push_str(&" ".repeat(w.saturating_sub(c.chars().count())));
        }
        let mut out = out.trim_end().to_string();
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// `s` cut to `max` characters, with `…` when cut.
#[must_use]
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["A", "LONGER"],
            &[vec!["xyz".into(), "1".into()], vec!["é".into()]],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\né\n");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
