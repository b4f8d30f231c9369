//! Deterministic rows for schemas that ship none: a few hundred per table,
//! parents before children so every foreign key points at a row that
//! exists, and rows a CHECK, a unique key or a partition bound rejects
//! skipped one by one instead of failing the table.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

/// One column as the filler needs it.
struct Column {
    name: String,
    /// `format_type` of the column's type, to cast each value to it.
    type_name: String,
    /// The base type's name (through domains) and its category.
    base_type: String,
    category: String,
    /// Length limit of `varchar(n)` / `char(n)`, if any.
    max_length: Option<usize>,
    not_null: bool,
    /// Filled by the server: serial and identity columns.
    server_fills: bool,
    /// Enum labels, in order, when the base type is an enum.
    labels: Vec<String>,
}

/// A foreign key, by column names (partitions' own keys are gathered onto
/// the partitioned table the filler inserts into).
#[derive(Clone)]
struct ForeignKey {
    columns: Vec<String>,
    parent: String,
    parent_columns: Vec<String>,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Fills every ordinary and partitioned table of the database behind
/// `client` (outside extensions) with up to `rows` rows; returns the rows
/// it inserted per table (`schema.table`).
pub async fn fill(client: &Client, rows: usize) -> BTreeMap<String, usize> {
    let tables: Vec<(u32, String)> = client
        .query(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 2",
            &[],
        )
        .await
        .expect("listing tables to fill")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut keys: BTreeMap<String, Vec<ForeignKey>> = BTreeMap::new();
    for (oid, name) in &tables {
        keys.insert(name.clone(), foreign_keys(client, *oid).await);
    }
    let mut filled: BTreeMap<String, usize> = BTreeMap::new();
    for name in parents_first(&tables, &keys) {
        let oid = tables
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(o, _)| *o)
            .expect("listed");
        let columns = columns(client, oid).await;
        let count = fill_table(client, &name, &columns, &keys[&name], &filled, rows).await;
        filled.insert(name, count);
    }
    filled
}

/// Tables ordered so each comes after the tables its foreign keys point
/// to; in a cycle (or a self-reference) the keys to tables not filled yet
/// get NULL where they may.
fn parents_first(tables: &[(u32, String)], keys: &BTreeMap<String, Vec<ForeignKey>>) -> Vec<String> {
    let mut left: BTreeSet<String> = tables.iter().map(|(_, n)| n.clone()).collect();
    let mut order = Vec::new();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|t| {
                keys[*t]
                    .iter()
                    .all(|k| k.parent == **t || !left.contains(&k.parent))
            })
            .cloned()
            .collect();
        // A cycle: break it at the first table by name, deterministically.
        let next = if ready.is_empty() {
            vec![left.iter().next().cloned().expect("not empty")]
        } else {
            ready
        };
        for t in next {
            left.remove(&t);
            order.push(t);
        }
    }
    order
}

async fn foreign_keys(client: &Client, table: u32) -> Vec<ForeignKey> {
    let rows = client
        .query(
            "SELECT (SELECT array_agg(a.attname::text ORDER BY k.i) FROM unnest(con.conkey) WITH ORDINALITY k(n, i) \
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), \
                    (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.oid = con.confrelid), \
                    (SELECT array_agg(a.attname::text ORDER BY k.i) FROM unnest(con.confkey) WITH ORDINALITY k(n, i) \
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n) \
             FROM pg_constraint con \
             WHERE con.contype = 'f' AND con.conparentid = 0 AND con.conrelid IN ( \
                 WITH RECURSIVE tree(oid) AS (SELECT $1::oid UNION ALL \
                     SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
                 SELECT oid FROM tree) \
             ORDER BY con.conname",
            &[&table],
        )
        .await
        .expect("foreign keys");
    let mut keys: Vec<ForeignKey> = Vec::new();
    for row in rows {
        let key = ForeignKey {
            columns: row.get(0),
            parent: row.get(1),
            parent_columns: row.get(2),
        };
        // A key on the partitioned table is inherited by each partition.
        if !keys
            .iter()
            .any(|k| k.columns == key.columns && k.parent == key.parent)
        {
            keys.push(key);
        }
    }
    keys
}

async fn columns(client: &Client, table: u32) -> Vec<Column> {
    let rows = client
        .query(
            "WITH RECURSIVE base(col, typ, depth) AS ( \
                 SELECT a.attnum, a.atttypid, 0 FROM pg_attribute a WHERE a.attrelid = $1::oid AND a.attnum > 0 \
                 UNION ALL SELECT base.col, t.typbasetype, base.depth + 1 FROM base JOIN pg_type t ON t.oid = base.typ \
                 WHERE t.typtype = 'd') \
             SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), bt.typname::text, bt.typcategory::text, \
                    CASE WHEN a.atttypmod > 4 AND bt.typname IN ('varchar', 'bpchar') THEN a.atttypmod - 4 END, \
                    a.attnotnull, \
                    a.attidentity <> '' OR coalesce(pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%', false), \
                    coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e \
                              WHERE e.enumtypid = bt.oid), '{}') \
             FROM pg_attribute a \
             JOIN LATERAL (SELECT typ FROM base WHERE base.col = a.attnum ORDER BY depth DESC LIMIT 1) b ON true \
             JOIN pg_type bt ON bt.oid = b.typ \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .expect("columns");
    rows.iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            base_type: r.get(2),
            category: r.get(3),
            max_length: r.get::<_, Option<i32>>(4).and_then(|n| usize::try_from(n).ok()),
            not_null: r.get(5),
            server_fills: r.get(6),
            labels: r.get(7),
        })
        .collect()
}

/// A value for row `i` of `column` as an SQL expression, or None to leave
/// it to its default.
fn value(table: &str, column: &Column, i: usize) -> Option<String> {
    if column.server_fills {
        return None;
    }
    let n = i + 1;
    let expression = match (column.category.as_str(), column.base_type.as_str()) {
        (_, "bool") => (if i.is_multiple_of(2) { "true" } else { "false" }).to_owned(),
        (_, "int2") => format!("{}", n % 30000),
        ("N", "float4" | "float8" | "numeric") => format!("{n}.25"),
        ("N", _) => format!("{n}"),
        (_, "bytea") => format!("decode(md5('{n}'), 'hex')"),
        (_, "uuid") => format!("md5({})::uuid", quote_literal(&format!("{table}{n}"))),
        (_, "json" | "jsonb") => format!("'{{\"n\": {n}}}'"),
        (_, "timestamptz") => format!("timestamptz '2024-01-01 00:00:00+00' + interval '1 minute' * {n}"),
        (_, "timestamp") => format!("timestamp '2024-01-01 00:00:00' + interval '1 minute' * {n}"),
        (_, "date") => format!("date '2024-01-01' + {n}"),
        (_, "time" | "timetz") => format!("time '00:00' + interval '1 second' * {n}"),
        (_, "tstzrange") => format!(
            "tstzrange(timestamptz '2024-01-01 00:00:00+00' + interval '1 minute' * {n}, \
             timestamptz '2024-01-01 00:00:00+00' + interval '1 minute' * {})",
            n + 1
        ),
        (_, "tsrange") => format!(
            "tsrange(timestamp '2024-01-01 00:00:00' + interval '1 minute' * {n}, \
             timestamp '2024-01-01 00:00:00' + interval '1 minute' * {})",
            n + 1
        ),
        (_, "daterange") => format!(
            "daterange(date '2024-01-01' + {n}, date '2024-01-01' + {})",
            n + 1
        ),
        (_, "int4range" | "int8range" | "numrange") => format!("{}({n}, {})", column.base_type, n + 1),
        (_, "interval") => format!("interval '1 second' * {n}"),
        (_, "inet" | "cidr") => format!("'10.0.0.0'::inet + {n}"),
        (_, "char") => "'x'".to_owned(),
        ("E", _) if !column.labels.is_empty() => quote_literal(&column.labels[i % column.labels.len()]),
        ("A", _) => "'{}'".to_owned(),
        ("S", _) => {
            let mut text = format!("{}_{n}", column.name);
            if let Some(limit) = column.max_length {
                // Keep the row number, the part that makes values differ.
                let tail = format!("{n}");
                text = if tail.len() >= limit {
                    tail[tail.len() - limit..].to_owned()
                } else {
                    format!(
                        "{}{tail}",
                        &column.name.chars().take(limit - tail.len()).collect::<String>()
                    )
                };
            }
            quote_literal(&text)
        }
        _ if column.not_null => return None,
        _ => "NULL".to_owned(),
    };
    Some(format!("({expression})::{}", column.type_name))
}

async fn parent_keys(client: &Client, key: &ForeignKey) -> Vec<Vec<Option<String>>> {
    let columns: Vec<String> = key
        .parent_columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {cols} FROM {parent} ORDER BY {cols}",
        cols = columns.join(", "),
        parent = key.parent
    );
    client
        .query(&sql, &[])
        .await
        .expect("parent keys")
        .iter()
        .map(|r| (0..columns.len()).map(|i| r.get(i)).collect())
        .collect()
}

async fn fill_table(
    client: &Client,
    table: &str,
    columns: &[Column],
    keys: &[ForeignKey],
    filled: &BTreeMap<String, usize>,
    rows: usize,
) -> usize {
    // Key values of each parent already filled; keys to parents not filled
    // (cycles, self-references) are left NULL.
    let mut choices: Vec<(ForeignKey, Vec<Vec<Option<String>>>)> = Vec::new();
    for key in keys {
        let values = if filled.contains_key(&key.parent) && key.parent != table {
            parent_keys(client, key).await
        } else {
            Vec::new()
        };
        choices.push((key.clone(), values));
    }
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let row = |i: usize| -> String {
        let mut values: Vec<String> = columns
            .iter()
            .map(|c| value(table, c, i).unwrap_or_else(|| "DEFAULT".to_owned()))
            .collect();
        for (k, (key, parents)) in choices.iter().enumerate() {
            let chosen = if parents.is_empty() {
                None
            } else {
                // Spread children over parents, differently per key.
                Some(&parents[(i * 7 + k * 13) % parents.len()])
            };
            for (j, name) in key.columns.iter().enumerate() {
                if let Some(at) = columns.iter().position(|c| &c.name == name) {
                    values[at] = match chosen.and_then(|p| p[j].as_ref()) {
                        Some(v) => format!("{}::{}", quote_literal(v), columns[at].type_name),
                        None => "NULL".to_owned(),
                    };
                }
            }
        }
        format!("({})", values.join(", "))
    };
    let insert = |body: String| {
        if columns.is_empty() {
            format!("INSERT INTO {table} DEFAULT VALUES")
        } else {
            format!("INSERT INTO {table} ({}) VALUES {body}", names.join(", "))
        }
    };
    let all: Vec<String> = (0..rows).map(row).collect();
    if !columns.is_empty() && client.batch_execute(&insert(all.join(",\n"))).await.is_ok() {
        return rows;
    }
    // Some row breaks a constraint: insert one at a time, skipping those.
    let mut count = 0;
    for (i, values) in all.into_iter().enumerate() {
        let statement = if columns.is_empty() {
            insert(String::new())
        } else {
            insert(values)
        };
        if client.batch_execute(&statement).await.is_ok() {
            count += 1;
        } else if i >= 20 && count == 0 {
            // Twenty refusals and no row: this table takes none of ours.
            break;
        }
    }
    count
}
