//! Reading a node's sequences (I/O): every sequence that fills a column, as its owner
//! (serial, identity) or through the column's default (`DEFAULT nextval('s')`), with its
//! settings, its state and, on request, the largest values its columns hold.

use tokio_postgres::Client;

use crate::config::{names, ReplicationConfig};

/// One sequence on one node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SequenceFacts {
    /// `schema.sequence`, quoted as in SQL.
    pub name: String,
    /// `smallint`, `integer` or `bigint` (the sequence's own type).
    pub data_type: String,
    pub increment: i64,
    pub min_value: i64,
    pub max_value: i64,
    pub cycle: bool,
    pub last_value: i64,
    /// Whether `last_value` was handed out (false right after creation or RESTART: then
    /// `last_value` is the next value).
    pub is_called: bool,
    /// The columns it fills (on tables of any kind; the plan keeps the replicated ones).
    pub columns: Vec<SequenceColumn>,
}

impl SequenceFacts {
    /// The value `nextval` hands out next.
    #[must_use]
    pub fn next_value(&self) -> i64 {
        if self.is_called {
            self.last_value.saturating_add(self.increment)
        } else {
            self.last_value
        }
    }

    /// The highest value it may have handed out (ascending sequences).
    #[must_use]
    pub fn highest_used(&self) -> i64 {
        if self.is_called {
            self.last_value
        } else {
            self.last_value.saturating_sub(1)
        }
    }
}

/// A column a sequence fills.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SequenceColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// An identity column (`GENERATED … AS IDENTITY`).
    pub identity: bool,
    /// `format_type` of the column.
    pub type_name: String,
    /// Largest value the column type holds; `None` for a non-integer column.
    pub type_max: Option<i64>,
    /// Largest values in the column now, when read.
    pub max: Option<ColumnMax>,
}

impl SequenceColumn {
    /// `schema.table.column`, for messages.
    #[must_use]
    pub fn display(&self) -> String {
        format!(
            "{}.{}",
            names::qualified_table(&self.schema, &self.table),
            crate::sqlquote::ident(&self.column)
        )
    }
}

/// The largest values of a column on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ColumnMax {
    /// `max(column)`; `None` for an empty table.
    pub all: Option<i64>,
    /// For node count N: `by_residue[r]` is the largest value ≡ r (mod N).
    pub by_residue: Vec<Option<i64>>,
}

const SEQUENCES_SQL: &str = "
WITH cols AS (
  SELECT d.objid AS seq, d.refobjid AS rel, d.refobjsubid AS attnum
    FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid
   WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
     AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
  UNION
  SELECT d.refobjid, ad.adrelid, ad.adnum
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
    JOIN pg_sequence s ON s.seqrelid = d.refobjid
   WHERE d.refclassid = 'pg_class'::regclass)
SELECT sn.nspname::text, sc.relname::text, format_type(s.seqtypid, NULL), s.seqincrement,
       s.seqmin, s.seqmax, s.seqcycle,
       tn.nspname::text, tc.relname::text, a.attname::text, a.attidentity <> '',
       format_type(a.atttypid, a.atttypmod), a.atttypid::int8
  FROM cols JOIN pg_sequence s ON s.seqrelid = cols.seq
  JOIN pg_class sc ON sc.oid = s.seqrelid JOIN pg_namespace sn ON sn.oid = sc.relnamespace
  JOIN pg_class tc ON tc.oid = cols.rel JOIN pg_namespace tn ON tn.oid = tc.relnamespace
  JOIN pg_attribute a ON a.attrelid = cols.rel AND a.attnum = cols.attnum
 WHERE tc.relkind IN ('r', 'p') AND NOT a.attisdropped
   AND tn.nspname NOT IN ('pg_catalog', 'information_schema', 'pgmesh')
 ORDER BY 1, 2, 8, 9, 10";

/// Largest value an integer column type holds.
fn type_max(type_oid: i64) -> Option<i64> {
    match type_oid {
        21 => Some(i64::from(i16::MAX)),
        23 => Some(i64::from(i32::MAX)),
        20 => Some(i64::MAX),
        _ => None,
    }
}

/// Every sequence that fills a column on the node of `client`. With `maxima = Some(n)`,
/// also reads the largest values of the replicated integer columns, overall and per
/// residue mod `n` (each a backward index scan when the column is indexed).
pub async fn gather(
    client: &Client,
    repl: &ReplicationConfig,
    maxima: Option<usize>,
) -> Result<Vec<SequenceFacts>, tokio_postgres::Error> {
    let mut out: Vec<SequenceFacts> = Vec::new();
    for r in client.query(SEQUENCES_SQL, &[]).await? {
        let name = names::qualified_table(r.get(0), r.get(1));
        let col = SequenceColumn {
            schema: r.get(7),
            table: r.get(8),
            column: r.get(9),
            identity: r.get(10),
            type_name: r.get(11),
            type_max: type_max(r.get(12)),
            max: None,
        };
        if let Some(s) = out.iter_mut().find(|s| s.name == name) {
            s.columns.push(col);
            continue;
        }
        out.push(SequenceFacts {
            name,
            data_type: r.get(2),
            increment: r.get(3),
            min_value: r.get(4),
            max_value: r.get(5),
            cycle: r.get(6),
            last_value: 0,
            is_called: false,
            columns: vec![col],
        });
    }
    for s in &mut out {
        // The sequence itself: pg_sequences.last_value is NULL after RESTART.
        let row = client
            .query_one(
                &format!("SELECT last_value, is_called FROM {}", s.name),
                &[],
            )
            .await?;
        s.last_value = row.get(0);
        s.is_called = row.get(1);
        let Some(n) = maxima else { continue };
        for c in &mut s.columns {
            if c.type_max.is_none() || !repl.selects(&c.schema, &c.table) {
                continue;
            }
            c.max = Some(read_max(client, c, n).await?);
        }
    }
    Ok(out)
}

async fn read_max(
    client: &Client,
    c: &SequenceColumn,
    n: usize,
) -> Result<ColumnMax, tokio_postgres::Error> {
    let table = names::qualified_table(&c.schema, &c.table);
    let col = crate::sqlquote::ident(&c.column);
    let mut parts = vec![format!("(SELECT max({col})::int8 FROM {table})")];
    for r in 0..n {
        parts.push(format!(
            "(SELECT max({col})::int8 FROM {table} WHERE (({col}::int8 % {n}) + {n}) % {n} = {r})"
        ));
    }
    let row = client
        .query_one(&format!("SELECT {}", parts.join(", ")), &[])
        .await?;
    Ok(ColumnMax {
        all: row.get(0),
        by_residue: (1..=n).map(|i| row.get(i)).collect(),
    })
}
