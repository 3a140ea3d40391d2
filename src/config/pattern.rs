//! Table patterns of `[replication]`: `schema.table`, `*` matching any run of characters
//! in either part (`public.*`, `sales.order_*`). Names are matched as stored in the
//! catalog (case-sensitive, unquoted).

use std::fmt;

/// One `schema.table` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    schema: String,
    table: String,
}

impl TablePattern {
    /// Parses `schema.table`; the first `.` separates the parts.
    pub fn parse(s: &str) -> Result<TablePattern, String> {
        match s.split_once('.') {
            Some((schema, table)) if !schema.is_empty() && !table.is_empty() => Ok(TablePattern {
                schema: schema.to_string(),
                table: table.to_string(),
            }),
            _ => Err(format!(
                "{s:?} is not a table pattern; write schema.table, e.g. \"public.*\" or \"public.orders\""
            )),
        }
    }

    /// True when the pattern has no wildcard, i.e. names one table that must exist.
    #[must_use]
    pub fn is_exact(&self) -> bool {
        !self.schema.contains('*') && !self.table.contains('*')
    }

    #[must_use]
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(&self.schema, schema) && glob(&self.table, table)
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// `*`-only glob, iterative with backtracking to the last star (linear-ish, no recursion).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = TablePattern::parse("public.*").unwrap();
        assert!(p.matches("public", "orders"));
        assert!(!p.matches("sales", "orders"));
        assert!(!p.is_exact());
        let p = TablePattern::parse("s*.order_*_x").unwrap();
        assert!(p.matches("sales", "order_2024_x"));
        assert!(!p.matches("sales", "order_2024_y"));
        let p = TablePattern::parse("public.orders").unwrap();
        assert!(p.is_exact());
        assert!(p.matches("public", "orders"));
        assert!(!p.matches("public", "orders2"));
        assert!(TablePattern::parse("orders").is_err());
        assert!(TablePattern::parse(".x").is_err());
        assert_eq!(p.to_string(), "public.orders");
    }
}
