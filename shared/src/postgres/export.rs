//! Consistent streaming export: one snapshot, one data section per table.

use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::AsyncWrite;
use tokio_postgres::{Client, IsolationLevel, Transaction};

use super::catalog::{TableFilter, capture_schema};
use super::schema::{DatabaseSchema, QualifiedName, TableKind, quote_ident};
use super::{PostgresError, major_version};
use crate::container::{ContainerWriter, SectionEntry, SectionKind};
use crate::metadata::SourceDatabase;
use crate::progress::Progress;

/// COPY hands out one message per row; batching them keeps per-call overhead
/// off the hot path while memory stays bounded.
const COPY_BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedTable {
    pub name: QualifiedName,
    pub section: SectionEntry,
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub schema: DatabaseSchema,
    pub source: SourceDatabase,
    pub tables: Vec<ExportedTable>,
    pub duration_ms: u64,
}

impl ExportReport {
    pub fn record_count(&self) -> u64 {
        self.tables.iter().map(|t| t.section.rows).sum()
    }
}

/// Exports the selected tables into `writer` from one consistent snapshot
/// (`REPEATABLE READ, READ ONLY`): first the schema section, then one
/// section per table in COPY text format. Rows committed after the snapshot
/// never appear, so foreign keys hold in what is captured. The caller
/// finishes the container and publishes metadata only on `Ok`.
pub async fn export_database<W: AsyncWrite + Unpin>(
    client: &mut Client,
    writer: &mut ContainerWriter<W>,
    filter: &TableFilter,
    progress: &dyn Progress,
) -> Result<ExportReport, PostgresError> {
    let started = Instant::now();
    // Read-only: it is rolled back when dropped, whether the export
    // finished, failed or was cancelled, and that changes nothing.
    let snapshot = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|source| PostgresError::Query {
            what: "starting the snapshot transaction",
            source,
        })?;
    export_in_snapshot(&snapshot, writer, filter, progress, started).await
}

async fn export_in_snapshot<W: AsyncWrite + Unpin>(
    client: &Transaction<'_>,
    writer: &mut ContainerWriter<W>,
    filter: &TableFilter,
    progress: &dyn Progress,
    started: Instant,
) -> Result<ExportReport, PostgresError> {
    // row_security = off, as pg_dump sets it: a table whose policies would
    // hide rows from this role makes COPY fail loudly instead of exporting
    // only the rows the policies let through.
    client
        .batch_execute(&format!(
            "SET LOCAL row_security = off; {}",
            super::DETERMINISTIC_OUTPUT
        ))
        .await
        .map_err(|source| PostgresError::Query {
            what: "fixing output settings for the export",
            source,
        })?;
    let schema = capture_schema(client, filter).await?;
    lock_tables(client, &schema).await?;

    let schema_json = serde_json::to_vec(&schema).map_err(PostgresError::MalformedSchemaSection)?;
    let mut section = writer.begin_section(SectionKind::Schema, None, "schema")?;
    section.write(&schema_json).await?;
    section.finish(0).await?;

    let mut tables = Vec::new();
    for table in schema.data_tables() {
        let statement = copy_out_statement(&table.name, table.kind, &table.copy_columns);
        let stream =
            client
                .copy_out(statement.as_str())
                .await
                .map_err(|source| PostgresError::TableQuery {
                    what: "starting COPY TO STDOUT",
                    table: table.name.display(),
                    source,
                })?;
        let mut stream = std::pin::pin!(stream);
        let mut section =
            writer.begin_section(SectionKind::Table, Some(&table.name.schema), &table.name.name)?;
        progress.begin_table(&table.name.display(), None);
        let mut batch: Vec<u8> = Vec::with_capacity(COPY_BATCH_BYTES + 64 * 1024);
        let mut rows = 0u64;
        while let Some(message) = stream.next().await {
            let bytes = message.map_err(|source| PostgresError::TableQuery {
                what: "reading COPY data",
                table: table.name.display(),
                source,
            })?;
            batch.extend_from_slice(&bytes);
            if batch.len() >= COPY_BATCH_BYTES {
                let batch_rows = count_rows(&batch);
                rows += batch_rows;
                section.write(&batch).await?;
                progress.advance(batch_rows, batch.len() as u64);
                batch.clear();
            }
        }
        let batch_rows = count_rows(&batch);
        rows += batch_rows;
        section.write(&batch).await?;
        progress.advance(batch_rows, batch.len() as u64);
        let entry = section.finish(rows).await?;
        progress.finish_table();
        tracing::info!(table = %table.name, rows, bytes = entry.plain_bytes, "table exported");
        tables.push(ExportedTable {
            name: table.name.clone(),
            section: entry,
        });
    }

    let source = SourceDatabase {
        database: schema.database.clone(),
        server_version: format!(
            "{} ({})",
            major_version(schema.server_version_num),
            schema.server_version_num
        ),
        host: None,
    };
    Ok(ExportReport {
        schema,
        source,
        tables,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Holds ACCESS SHARE locks for the backup's duration so no table is
/// dropped or altered under it; gives up after 30 s rather than hang behind
/// a long migration.
async fn lock_tables(client: &Transaction<'_>, schema: &DatabaseSchema) -> Result<(), PostgresError> {
    if schema.tables.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = schema.tables.iter().map(|t| t.name.quoted()).collect();
    client
        .batch_execute(&format!(
            "SET LOCAL lock_timeout = '30s'; LOCK TABLE {} IN ACCESS SHARE MODE; SET LOCAL lock_timeout = 0",
            names.join(", ")
        ))
        .await
        .map_err(|source| PostgresError::Query {
            what: "locking the tables to back up (is a migration holding them?)",
            source,
        })
}

/// COPY text format ends every row with `\n` and escapes newlines inside
/// values, so rows are newline bytes.
pub fn count_rows(copy_text: &[u8]) -> u64 {
    copy_text.iter().filter(|&&b| b == b'\n').count() as u64
}

pub fn copy_out_statement(name: &QualifiedName, kind: TableKind, columns: &[String]) -> String {
    let column_list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    match (kind, columns.is_empty()) {
        // A partitioned table's rows live in its partitions; a query reads them all.
        (TableKind::Partitioned, false) => {
            format!("COPY (SELECT {column_list} FROM {}) TO STDOUT", name.quoted())
        }
        (_, true) => format!("COPY {} TO STDOUT", name.quoted()),
        (_, false) => format!("COPY {} ({column_list}) TO STDOUT", name.quoted()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_quote_names_and_skip_generated_columns() {
        let name = QualifiedName::new("public", "Booking");
        assert_eq!(
            copy_out_statement(&name, TableKind::Table, &["id".into(), "userId".into()]),
            "COPY \"public\".\"Booking\" (\"id\", \"userId\") TO STDOUT"
        );
        assert_eq!(
            copy_out_statement(&name, TableKind::Partitioned, &["id".into()]),
            "COPY (SELECT \"id\" FROM \"public\".\"Booking\") TO STDOUT"
        );
        assert_eq!(count_rows(b"1\ta\\nb\n2\tc\n"), 2);
    }
}
