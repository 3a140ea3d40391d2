//! Filters of `pgmesh conflicts`: parsed from what the operator typed (pure, with errors
//! that say what to write), then turned into a WHERE clause with parameters.

use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::known_kinds;
use crate::config::{names, parse_duration};

/// A point in time: relative to now (`1h` = an hour ago) or absolute (RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeBound {
    Ago(Duration),
    /// Microseconds since the Unix epoch.
    At(i64),
}

impl TimeBound {
    /// `"1h"`, `"30m"`, `"7d"` (ago), or `"2026-11-25T20:00:00Z"` / `"2026-11-25"`.
    pub fn parse(s: &str) -> Result<TimeBound, String> {
        let t = s.trim();
        let relative = t.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && !t.contains('-')
            && !t.contains(':');
        if relative {
            parse_duration(t).map(TimeBound::Ago)
        } else {
            crate::pgtime::parse_rfc3339(t)
                .map(TimeBound::At)
                .map_err(|e| format!("{e}, or a duration ago such as \"1h\""))
        }
    }

    /// SQL for the instant, with its one parameter at `$n` (microseconds as int8).
    fn sql(&self, n: usize) -> Result<(String, i64), String> {
        match self {
            TimeBound::Ago(d) => {
                let micros =
                    i64::try_from(d.as_micros()).map_err(|_| "duration too large".to_string())?;
                Ok((
                    format!("now() - ${n}::int8 * interval '1 microsecond'"),
                    micros,
                ))
            }
            TimeBound::At(micros) => Ok((
                format!("'epoch'::timestamptz + ${n}::int8 * interval '1 microsecond'"),
                *micros,
            )),
        }
    }
}

/// Which table(s): a name as it is written in the ledger, or a pattern with `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableMatch {
    /// `schema.table` as `pgmesh.conflicts.table_name` holds it (quote_ident rules).
    Exact(String),
    /// A LIKE pattern (from `*`).
    Like(String),
}

impl TableMatch {
    /// `orders` (schema public), `sales.orders`, `Sales.Orders` (folded to lower case, as
    /// SQL does), `sales."Orders"` (quoted: taken as written), `sales.*`.
    pub fn parse(s: &str) -> Result<TableMatch, String> {
        let t = s.trim();
        if t.is_empty() || t.starts_with('.') || t.ends_with('.') {
            return Err(format!(
                "{s:?} is not a table; write schema.table (e.g. public.orders), a table of schema public, or a pattern such as sales.*"
            ));
        }
        if t.contains('*') {
            let mut like = String::new();
            for c in t.to_lowercase().chars() {
                match c {
                    '*' => like.push('%'),
                    '%' | '_' | '\\' => {
                        like.push('\\');
                        like.push(c);
                    }
                    c => like.push(c),
                }
            }
            if !t.contains('.') {
                like = format!("public.{like}");
            }
            return Ok(TableMatch::Like(like));
        }
        if t.contains('"') {
            return Ok(TableMatch::Exact(t.to_string()));
        }
        let lower = t.to_lowercase();
        let (schema, table) = lower.split_once('.').unwrap_or(("public", &lower));
        Ok(TableMatch::Exact(names::qualified_table(schema, table)))
    }
}

/// Checks a kind name against the ledger's kinds.
pub fn parse_kind(s: &str) -> Result<String, String> {
    let k = s.trim().to_lowercase();
    if known_kinds().contains(&k.as_str()) {
        Ok(k)
    } else {
        Err(format!(
            "unknown conflict kind {s:?}; known kinds: {}",
            known_kinds().join(", ")
        ))
    }
}

/// The rows `pgmesh conflicts` shows: every condition given must hold (several tables or
/// kinds: any of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConflictFilter {
    pub tables: Vec<TableMatch>,
    pub kinds: Vec<String>,
    /// Detected at or after.
    pub since: Option<TimeBound>,
    /// Detected before.
    pub until: Option<TimeBound>,
}

/// Query parameters, owned.
pub type Params = Vec<Box<dyn ToSql + Sync + Send>>;

impl ConflictFilter {
    /// Parses the command-line values; the error names the flag and what to write.
    pub fn parse(
        tables: &[String],
        kinds: &[String],
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<ConflictFilter, String> {
        let tables = tables
            .iter()
            .map(|t| TableMatch::parse(t).map_err(|e| format!("--table: {e}")))
            .collect::<Result<_, _>>()?;
        let kinds = kinds
            .iter()
            .map(|k| parse_kind(k).map_err(|e| format!("--kind: {e}")))
            .collect::<Result<_, _>>()?;
        let bound = |flag: &str, v: Option<&str>| {
            v.map(|s| TimeBound::parse(s).map_err(|e| format!("{flag}: {e}")))
                .transpose()
        };
        let since = bound("--since", since)?;
        let until = bound("--until", until)?;
        let empty = match (&since, &until) {
            (Some(TimeBound::At(s)), Some(TimeBound::At(u))) => s >= u,
            (Some(TimeBound::Ago(s)), Some(TimeBound::Ago(u))) => s <= u,
            _ => false,
        };
        if empty {
            return Err("--since must be before --until (no time is both)".into());
        }
        Ok(ConflictFilter {
            tables,
            kinds,
            since,
            until,
        })
    }

    /// ` WHERE …` (or nothing) and its parameters, numbered from `$1`.
    pub fn where_sql(&self) -> Result<(String, Params), String> {
        let mut conds: Vec<String> = Vec::new();
        let mut params: Params = Vec::new();
        let next = |params: &mut Params, p: Box<dyn ToSql + Sync + Send>| {
            params.push(p);
            params.len()
        };
        let exact: Vec<String> = self
            .tables
            .iter()
            .filter_map(|t| match t {
                TableMatch::Exact(s) => Some(s.clone()),
                TableMatch::Like(_) => None,
            })
            .collect();
        let like: Vec<String> = self
            .tables
            .iter()
            .filter_map(|t| match t {
                TableMatch::Like(s) => Some(s.clone()),
                TableMatch::Exact(_) => None,
            })
            .collect();
        let mut table_conds = Vec::new();
        if !exact.is_empty() {
            let n = next(&mut params, Box::new(exact));
            table_conds.push(format!("table_name = ANY(${n}::text[])"));
        }
        if !like.is_empty() {
            let n = next(&mut params, Box::new(like));
            table_conds.push(format!("table_name LIKE ANY(${n}::text[])"));
        }
        if !table_conds.is_empty() {
            conds.push(format!("({})", table_conds.join(" OR ")));
        }
        if !self.kinds.is_empty() {
            let n = next(&mut params, Box::new(self.kinds.clone()));
            conds.push(format!("kind = ANY(${n}::text[])"));
        }
        for (bound, op) in [(&self.since, ">="), (&self.until, "<")] {
            if let Some(b) = bound {
                let (sql, v) = b.sql(params.len() + 1)?;
                next(&mut params, Box::new(v));
                conds.push(format!("detected_at {op} {sql}"));
            }
        }
        let clause = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        Ok((clause, params))
    }
}

/// `&[&(dyn ToSql + Sync)]` for tokio-postgres.
#[must_use]
pub fn param_refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds() {
        assert_eq!(
            TimeBound::parse("1h"),
            Ok(TimeBound::Ago(Duration::from_secs(3_600)))
        );
        assert_eq!(
            TimeBound::parse("1970-01-01T00:00:01Z"),
            Ok(TimeBound::At(1_000_000))
        );
        assert_eq!(
            TimeBound::parse("1970-01-02"),
            Ok(TimeBound::At(86_400_000_000))
        );
        let e = TimeBound::parse("yesterday").unwrap_err();
        assert!(e.contains("RFC 3339") && e.contains("\"1h\""), "{e}");
        assert!(TimeBound::parse("5").unwrap_err().contains("no unit"));
    }

    #[test]
    fn tables_are_normalized_like_the_ledger_writes_them() {
        let p = |s| TableMatch::parse(s).unwrap();
        assert_eq!(p("items"), TableMatch::Exact("public.items".into()));
        assert_eq!(p("Sales.Orders"), TableMatch::Exact("sales.orders".into()));
        assert_eq!(
            p("public.user"),
            TableMatch::Exact("public.\"user\"".into())
        );
        assert_eq!(
            p("public.\"Mixed\""),
            TableMatch::Exact("public.\"Mixed\"".into())
        );
        assert_eq!(p("sales.*"), TableMatch::Like("sales.%".into()));
        assert_eq!(p("tmp_*"), TableMatch::Like("public.tmp\\_%".into()));
        assert!(TableMatch::parse("").is_err());
        assert!(TableMatch::parse("sales.").is_err());
    }

    #[test]
    fn kinds_are_checked() {
        assert_eq!(parse_kind("Insert_Exists"), Ok("insert_exists".into()));
        let e = parse_kind("insert_exist").unwrap_err();
        assert!(e.contains("known kinds: insert_exists"), "{e}");
    }

    #[test]
    fn where_clause_numbers_its_parameters() {
        let f = ConflictFilter::parse(
            &["items".into(), "sales.*".into()],
            &["truncate".into()],
            Some("1h"),
            Some("2100-01-01"),
        )
        .unwrap();
        let (sql, params) = f.where_sql().unwrap();
        assert_eq!(
            sql,
            " WHERE (table_name = ANY($1::text[]) OR table_name LIKE ANY($2::text[])) \
             AND kind = ANY($3::text[]) \
             AND detected_at >= now() - $4::int8 * interval '1 microsecond' \
             AND detected_at < 'epoch'::timestamptz + $5::int8 * interval '1 microsecond'"
        );
        assert_eq!(params.len(), 5);
        let (sql, params) = ConflictFilter::default().where_sql().unwrap();
        assert_eq!((sql.as_str(), params.len()), ("", 0));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let e = |t: &[&str], k: &[&str], s: Option<&str>, u: Option<&str>| {
            let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            let k: Vec<String> = k.iter().map(|s| s.to_string()).collect();
            ConflictFilter::parse(&t, &k, s, u).unwrap_err()
        };
        assert!(e(&[], &["nope"], None, None).starts_with("--kind: "));
        assert!(e(&["."], &[], None, None).starts_with("--table: "));
        assert!(e(&[], &[], Some("soon"), None).starts_with("--since: "));
        assert!(e(&[], &[], None, Some("2024-02-30")).starts_with("--until: "));
        assert!(e(&[], &[], Some("1h"), Some("2h")).contains("before --until"));
        assert!(e(&[], &[], Some("2025-01-02"), Some("2025-01-01")).contains("before --until"));
    }
}
