use super::*;

fn table(schema: Option<&str>, name: &str) -> TableName {
    TableName {
        schema: schema.map(str::to_string),
        name: name.into(),
    }
}

#[test]
fn alter_table_actions() {
    let s = classify(
        "ALTER TABLE IF EXISTS ONLY public.\"Items\" ADD COLUMN IF NOT EXISTS note text DEFAULT 'a,b', \
         DROP COLUMN old CASCADE, ALTER COLUMN qty TYPE bigint USING qty::bigint, \
         ALTER n SET NOT NULL, ADD PRIMARY KEY (id, region), add extra numeric(10,2), \
         ALTER COLUMN v SET DEFAULT now(), OWNER TO app",
    )
    .unwrap();
    assert_eq!(
        s,
        Statement::AlterTable {
            table: table(Some("public"), "Items"),
            actions: vec![
                Action::AddColumn("note".into()),
                Action::DropColumn("old".into()),
                Action::AlterType("qty".into()),
                Action::ColumnSetting("n".into()),
                Action::Constraint,
                Action::AddColumn("extra".into()),
                Action::ColumnSetting("v".into()),
                Action::Other,
            ]
        }
    );
    if let Statement::AlterTable { table, .. } = s {
        assert_eq!(table.sql(), "public.\"Items\"");
    }
}

#[test]
fn creates_and_plain_statements() {
    assert_eq!(
        classify("create table if not exists app.t (id int primary key)").unwrap(),
        Statement::CreateTable {
            table: table(Some("app"), "t")
        }
    );
    assert_eq!(
        classify("CREATE UNIQUE INDEX IF NOT EXISTS t_v ON ONLY t USING btree (v)").unwrap(),
        Statement::CreateIndex {
            table: table(None, "t")
        }
    );
    assert_eq!(classify("DROP INDEX t_v").unwrap(), Statement::DropIndex);
    for plain in [
        "CREATE TYPE mood AS ENUM ('a', 'b')",
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        "COMMENT ON TABLE t IS 'x'",
        "GRANT SELECT ON t TO app",
    ] {
        assert_eq!(classify(plain).unwrap(), Statement::Plain, "{plain}");
    }
}

#[test]
fn refusals_say_what_to_do() {
    for (sql, want) in [
        ("ALTER TABLE t RENAME COLUMN a TO b", "Add a new column"),
        ("ALTER TABLE t RENAME TO u", "not supported"),
        ("ALTER TABLE t REPLICA IDENTITY FULL", "full_identity"),
        ("ALTER TABLE t DISABLE TRIGGER ALL", "tombstone"),
        ("ALTER TABLE t SET SCHEMA app", "SET: not run"),
        (
            "ALTER TABLE t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY",
            "pgmesh sequences",
        ),
        (
            "CREATE INDEX CONCURRENTLY i ON t (v)",
            "inside a transaction",
        ),
        ("DROP INDEX CONCURRENTLY i", "inside a transaction"),
        ("CREATE TABLE t2 AS SELECT * FROM t", "fill it on one node"),
        ("CREATE UNLOGGED TABLE t3 (id int)", "never replicated"),
        ("DROP TABLE t", "[replication].tables"),
        ("TRUNCATE t", "\"TRUNCATE t\" is none of them"),
        ("UPDATE t SET v = 1", "none of them"),
        ("ALTER TABLE t", "without an action"),
    ] {
        let e = classify(sql).unwrap_err().to_string();
        assert!(e.contains(want), "{sql}: {e}");
    }
}
