//! Quoting for SQL text pgmesh builds, in one place. Two grammars read it: ordinary SQL
//! (sessions where `standard_conforming_strings` may be on or off) and the walsender's
//! replication commands (`START_REPLICATION … (options)`), whose lexer knows `'…'` with
//! doubled quotes and `"…"` identifiers, and no `E'…'` strings.

/// PostgreSQL's `quote_ident`: leaves `[a-z_][a-z0-9_]*` that is not a reserved-ish
/// keyword as is, otherwise wraps in double quotes and doubles embedded quotes. The same
/// text names a table on every node (ledger rows, tombstones), so it is computed here
/// rather than by the server, whose keyword list varies slightly between majors; this
/// list is the union of 15–18.
#[must_use]
pub fn ident(ident: &str) -> String {
    let safe = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && RESERVED_KEYWORDS.binary_search(&ident).is_err();
    if safe {
        ident.to_string()
    } else {
        quoted_ident(ident)
    }
}

/// Always `"…"` with embedded quotes doubled: for option names of replication commands
/// and lists the server splits itself (`publication_names`).
#[must_use]
pub fn quoted_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal for ordinary SQL, read the same whatever `standard_conforming_strings`
/// says: `'…'` with quotes doubled, or `E'…'` with backslashes doubled too when there is
/// one. (PostgreSQL text cannot hold NUL; callers taking it from users reject it.)
#[must_use]
pub fn literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// A string literal for a replication command: `'…'` with quotes doubled; backslashes
/// are literal there and `E'…'` is a syntax error.
#[must_use]
pub fn repl_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Keywords whose category is not UNRESERVED in PostgreSQL 15–18 (kwlist.h), sorted.
const RESERVED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        let mut sorted = RESERVED_KEYWORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, RESERVED_KEYWORDS);
    }

    #[test]
    fn identifiers_follow_quote_ident() {
        assert_eq!(ident("orders"), "orders");
        assert_eq!(ident("Orders"), "\"Orders\"");
        assert_eq!(ident("user"), "\"user\"", "reserved keyword");
        assert_eq!(ident("comment"), "comment", "unreserved keyword stays bare");
        assert_eq!(ident("1t"), "\"1t\"");
        assert_eq!(ident("é"), "\"é\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quoted_ident("pub"), "\"pub\"");
    }

    #[test]
    fn literals_read_the_same_under_either_string_setting() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
        assert_eq!(literal("o'\\"), "E'o''\\\\'");
        assert_eq!(repl_literal("a\\b'c"), "'a\\b''c'");
    }
}
