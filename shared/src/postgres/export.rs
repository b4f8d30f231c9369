//! Consistent streaming export: one snapshot, shared by every connection.
//!
//! The snapshot's own connection captures the schema and locks the tables;
//! helper connections (as `pg_dump -j` does) import the same snapshot with
//! `SET TRANSACTION SNAPSHOT`, so every connection sees the same rows. The
//! data is cut into pieces: a whole table, or on PostgreSQL 14 and later a
//! range of a large table's pages (a TID range scan, as pgcopydb splits
//! tables). Each connection takes the next piece, reads its COPY text and
//! hands it to a blocking thread that compresses and hashes it, while the
//! container seals and writes one piece after another as a table part.
//! A connection may run at most a few encoded frames ahead of the container,
//! so memory stays bounded whatever the database's size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_postgres::{Client, IsolationLevel, Transaction};

use super::catalog::{TableFilter, capture_schema};
use super::copy_rows::RowCounter;
use super::schema::{DatabaseSchema, QualifiedName, Table, TableKind, quote_column_list, quote_literal};
use super::{PostgresError, major_version};
use crate::container::{
    Compression, ContainerError, ContainerWriter, CopyFormat, PlainDigest, SectionEncoder, SectionEntry,
    SectionKind,
};
use crate::metadata::SourceDatabase;
use crate::progress::Progress;

/// COPY hands out one message per row; batches of this size go to the
/// encoder thread, keeping per-call overhead off the hot path. A whole
/// segment, so each batch is compressed as its own frame straight from
/// the batch, without copying it into the encoder's segment first.
const COPY_BATCH_BYTES: usize = crate::container::SEGMENT_LEN;

/// Pages of a large table per piece (16 MiB of heap with 8 KiB pages).
const PIECE_PAGES: u64 = 2048;
/// PostgreSQL's default block size, for the progress estimate only.
const PAGE_BYTES: u64 = 8192;

/// TID range scans, which make a page range cheap to read, came in 14.
const TID_RANGE_SCAN_VERSION: i32 = 140_000;

/// Encoded frames a connection may hold while another's piece is written.
const FRAMES_AHEAD: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedTable {
    pub name: QualifiedName,
    pub rows: u64,
    pub plain_bytes: u64,
    /// Sections the table's rows are stored in.
    pub parts: u32,
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub schema: DatabaseSchema,
    pub source: SourceDatabase,
    pub tables: Vec<ExportedTable>,
    /// Connections that read table data (the snapshot's own and helpers).
    pub connections: usize,
    pub duration_ms: u64,
    /// Where replay of the change stream starts for this export's snapshot,
    /// when the database has the change-capture slot.
    pub stream_position: Option<crate::changes::StreamPosition>,
}

impl ExportReport {
    pub fn record_count(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Exports the selected tables into `writer` from one consistent snapshot
/// (`REPEATABLE READ, READ ONLY`): first the schema section, then the
/// tables' rows in COPY text format, as one or more parts per table.
/// `helpers` are extra connections to the same database that share the
/// snapshot; one that cannot join it is left out with a warning. Rows
/// committed after the snapshot never appear, so foreign keys hold in what
/// is captured. The caller finishes the container and publishes metadata
/// only on `Ok`.
pub async fn export_database<W: AsyncWrite + Unpin>(
    client: &mut Client,
    mut helpers: Vec<Client>,
    writer: &mut ContainerWriter<W>,
    filter: &TableFilter,
    progress: &dyn Progress,
) -> Result<ExportReport, PostgresError> {
    let started = Instant::now();
    let stream_start = match &filter.stream_slot {
        Some(slot) => stream_position(client, slot).await?,
        None => None,
    };
    // Read-only: it is rolled back when dropped, whether the export
    // finished, failed or was cancelled, and that changes nothing.
    let snapshot = begin_snapshot(client)
        .await
        .map_err(|source| PostgresError::Query {
            what: "starting the snapshot transaction",
            source,
        })?;
    // row_security = off, as pg_dump sets it: a table whose policies would
    // hide rows from this role makes COPY fail loudly instead of exporting
    // only the rows the policies let through.
    snapshot
        .batch_execute(&format!(
            "SET LOCAL row_security = off; {}",
            super::DETERMINISTIC_OUTPUT
        ))
        .await
        .map_err(|source| PostgresError::Query {
            what: "fixing output settings for the export",
            source,
        })?;
    // The transaction's first query takes its snapshot, so the clock it
    // reads is no earlier than the snapshot: an upper bound on the commit
    // time of every row exported.
    // The same query reads the snapshot itself (which transactions the
    // backup holds) and, in it, the published tables' catalog fingerprint.
    let stream_position = match stream_start {
        Some((slot, start_lsn)) => {
            let row = snapshot
                .query_one(
                    "SELECT (extract(epoch FROM pg_catalog.clock_timestamp()) * 1000000)::int8, \
                            pg_catalog.pg_current_snapshot()::text",
                    &[],
                )
                .await
                .map_err(|source| PostgresError::Query {
                    what: "reading the snapshot's time",
                    source,
                })?;
            let micros: i64 = row.get(0);
            let snapshot_at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| {
                PostgresError::SlotPosition(format!("the server's clock reads {micros} µs"))
            })?;
            let catalog_fingerprint = match &filter.stream_publication {
                Some(publication) => crate::changes::capture::catalog_fingerprint(&snapshot, publication)
                    .await
                    .map_err(|source| PostgresError::Query {
                        what: "reading the published tables' catalog fingerprint",
                        source,
                    })?
                    .map(|(_, fingerprint)| fingerprint),
                None => None,
            };
            // The partitions' files as the snapshot sees them: the first
            // segment after this backup compares its own with them.
            let partition_files = match (&filter.stream_publication, &catalog_fingerprint) {
                (Some(publication), Some(_)) => Some(
                    crate::changes::capture::partition_readings(&snapshot, publication)
                        .await
                        .map_err(|source| PostgresError::Query {
                            what: "reading the published partitions' files",
                            source,
                        })?
                        .into_iter()
                        .map(|reading| reading.file)
                        .collect(),
                ),
                _ => None,
            };
            Some(crate::changes::StreamPosition {
                slot,
                start_lsn,
                snapshot_at,
                snapshot: Some(row.get(1)),
                catalog_fingerprint,
                partition_files,
            })
        }
        None => None,
    };
    let schema = capture_schema(&snapshot, filter).await?;
    lock_tables(&snapshot, &schema).await?;

    let schema_json = serde_json::to_vec(&schema).map_err(PostgresError::MalformedSchemaSection)?;
    let mut section = writer.begin_section(SectionKind::Schema, None, "schema")?;
    section.write(&schema_json).await?;
    section.finish(0).await?;

    let mut connections = vec![&snapshot];
    let mut helper_snapshots = Vec::new();
    if !helpers.is_empty() && schema.data_tables().next().is_some() {
        let snapshot_id: String = snapshot
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|source| PostgresError::Query {
                what: "exporting the snapshot for the other connections",
                source,
            })?
            .get(0);
        for helper in &mut helpers {
            match join_snapshot(helper, &snapshot_id, &schema).await {
                Ok(joined) => helper_snapshots.push(joined),
                Err(error) => {
                    tracing::warn!(%error, "a helper connection could not join the export's snapshot; exporting with fewer connections");
                }
            }
        }
    }
    connections.extend(helper_snapshots.iter());

    let plan = ExportPlan::new(&snapshot, &schema, connections.len(), writer.table_copy_format()).await?;
    let compression = writer.header().compression;
    let next_piece = AtomicUsize::new(0);
    let mut receivers = Vec::new();
    let mut workers = Vec::new();
    for connection in &connections {
        let (sender, receiver) = mpsc::channel(FRAMES_AHEAD);
        receivers.push(receiver);
        workers.push(export_pieces(connection, &plan, &next_piece, sender, compression));
    }
    let (written, exported) = futures_util::join!(
        write_pieces(writer, receivers, &plan, progress),
        futures_util::future::join_all(workers)
    );
    // A connection's own failure is the cause; the container's complaint
    // that a piece stopped short is only its consequence.
    exported.into_iter().collect::<Result<Vec<()>, _>>()?;
    let entries = written?;
    // After the tables, as pg_dump writes them, on the snapshot's own
    // connection so they are as of the same instant as the rows.
    super::large_objects::export(&snapshot, &schema.large_objects, writer).await?;

    let mut tables: Vec<ExportedTable> = Vec::new();
    for table in schema.data_tables() {
        let parts: Vec<&SectionEntry> = entries
            .iter()
            .filter(|e| e.schema.as_deref() == Some(table.name.schema.as_str()) && e.name == table.name.name)
            .collect();
        tracing::info!(table = %table.name, rows = parts.iter().map(|p| p.rows).sum::<u64>(), parts = parts.len(), "table exported");
        tables.push(ExportedTable {
            name: table.name.clone(),
            rows: parts.iter().map(|p| p.rows).sum(),
            plain_bytes: parts.iter().map(|p| p.plain_bytes).sum(),
            parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
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
        connections: connections.len(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        stream_position,
    })
}

/// The slot's confirmed position, read just *before* the snapshot is taken
/// (the snapshot is the transaction's first statement's): every transaction
/// the snapshot does not see commits after this read, so its commit record
/// lies at or past the position, and it is either still in the slot or in
/// a segment stored before the slot was advanced past it. Read inside the
/// snapshot instead, a capture could advance the slot past a transaction
/// that committed just after the snapshot was taken, and replay would skip
/// it. Transactions the snapshot already holds that commit past the
/// position are replayed again, which converges (replay is idempotent).
/// A slot the server invalidated (`wal_status = lost`; read through
/// `to_jsonb`, as PostgreSQL 12 has no such column) gives no position: its
/// changes from there on are lost, so the backup cannot start a chain.
async fn stream_position(
    client: &Client,
    slot: &str,
) -> Result<Option<(String, crate::changes::Lsn)>, PostgresError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots s \
             WHERE slot_name = $1 AND database = current_database() AND plugin = 'pgoutput' \
             AND (to_jsonb(s) ->> 'wal_status') IS DISTINCT FROM 'lost'",
            &[&slot],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the change-capture slot's position",
            source,
        })?;
    let Some(text) = row.and_then(|row| row.get::<_, Option<String>>(0)) else {
        return Ok(None);
    };
    let start_lsn = text
        .parse()
        .map_err(|reason: String| PostgresError::SlotPosition(reason))?;
    Ok(Some((slot.to_owned(), start_lsn)))
}

async fn begin_snapshot(client: &mut Client) -> Result<Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// A helper connection in the export's snapshot, holding the same locks.
/// NOWAIT, as pg_dump's workers do: if a conflicting lock request (a
/// migration) queued up behind the first connection's locks, waiting here
/// would deadlock the export, so the helper is left out instead.
async fn join_snapshot<'c>(
    helper: &'c mut Client,
    snapshot_id: &str,
    schema: &DatabaseSchema,
) -> Result<Transaction<'c>, tokio_postgres::Error> {
    let transaction = begin_snapshot(helper).await?;
    let names: Vec<String> = schema.tables.iter().map(|t| t.name.quoted()).collect();
    transaction
        .batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT {}; SET LOCAL row_security = off; {}; LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT",
            quote_literal(snapshot_id),
            super::DETERMINISTIC_OUTPUT,
            names.join(", ")
        ))
        .await?;
    Ok(transaction)
}

/// One piece of table data: a whole table, or a range of its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    table: usize,
    part: u32,
    /// Pages `from..to` (`to` open at the table's end); `None`: all of it.
    pages: Option<(u64, Option<u64>)>,
}

/// The pieces, largest tables first so the connections finish together.
struct ExportPlan<'s> {
    tables: Vec<&'s Table>,
    pieces: Vec<Piece>,
    /// The tables' size on disk: an estimate of the rows' plaintext for
    /// the progress bar's total (COPY text is close to the heap's size).
    estimated_bytes: u64,
    /// Per partitioned table with foreign partitions: its other leaf
    /// partitions (quoted), which its rows are read from. Reading through
    /// the partitioned table would read the foreign ones' remote rows,
    /// which pg_dump leaves out too (they are not this database's).
    local_leaves: HashMap<usize, Vec<String>>,
    /// Each table's COPY format, by the index of `tables`.
    formats: Vec<CopyFormat>,
}

impl<'s> ExportPlan<'s> {
    async fn new(
        snapshot: &Transaction<'_>,
        schema: &'s DatabaseSchema,
        connections: usize,
        wanted: CopyFormat,
    ) -> Result<Self, PostgresError> {
        let tables: Vec<&Table> = schema.data_tables().collect();
        let mut formats = Vec::with_capacity(tables.len());
        for table in &tables {
            formats.push(match wanted {
                CopyFormat::Binary if binary_portable(snapshot, table).await? => CopyFormat::Binary,
                _ => CopyFormat::Text,
            });
        }
        let mut sized = Vec::new();
        let mut local_leaves = HashMap::new();
        for (index, table) in tables.iter().enumerate() {
            if table.kind == TableKind::Partitioned {
                let (leaves, pages) = partition_leaves(snapshot, table).await?;
                if let Some(leaves) = leaves {
                    local_leaves.insert(index, leaves);
                }
                sized.push((index, pages));
                continue;
            }
            let pages: i64 = snapshot
                .query_one(
                    "SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint",
                    &[&table.name.quoted()],
                )
                .await
                .map_err(|source| PostgresError::TableQuery {
                    what: "measuring the table",
                    table: table.name.display(),
                    source,
                })?
                .get(0);
            sized.push((index, u64::try_from(pages).unwrap_or(0)));
        }
        sized.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let estimated_bytes = sized
            .iter()
            .map(|(_, pages)| pages.saturating_mul(PAGE_BYTES))
            .sum();
        let split = connections > 1 && schema.server_version_num >= TID_RANGE_SCAN_VERSION;
        let mut pieces = Vec::new();
        for (index, pages) in sized {
            let splittable = split && tables[index].kind == TableKind::Table && pages > 2 * PIECE_PAGES;
            if !splittable {
                pieces.push(Piece {
                    table: index,
                    part: 0,
                    pages: None,
                });
                continue;
            }
            let count = pages.div_ceil(PIECE_PAGES);
            for part in 0..count {
                let from = part * PIECE_PAGES;
                let to = (part + 1 < count).then(|| from + PIECE_PAGES);
                pieces.push(Piece {
                    table: index,
                    part: u32::try_from(part).unwrap_or(u32::MAX),
                    pages: Some((from, to)),
                });
            }
        }
        Ok(Self {
            tables,
            pieces,
            estimated_bytes,
            local_leaves,
            formats,
        })
    }

    fn statement(&self, piece: &Piece) -> String {
        let options = self.formats[piece.table].copy_options(false);
        format!("{}{options}", self.text_statement(piece))
    }

    fn text_statement(&self, piece: &Piece) -> String {
        let table = self.tables[piece.table];
        if let Some(leaves) = self.local_leaves.get(&piece.table) {
            return copy_out_of_leaves(table, leaves);
        }
        let Some((from, to)) = piece.pages else {
            return copy_out_statement(&table.name, table.kind, &table.copy_columns);
        };
        let columns = quote_column_list(&table.copy_columns);
        let mut range = format!("ctid >= '({from},0)'::tid");
        if let Some(to) = to {
            range.push_str(&format!(" AND ctid < '({to},0)'::tid"));
        }
        // ONLY: an inheritance parent's own rows; its children have their own pieces.
        format!(
            "COPY (SELECT {columns} FROM ONLY {} WHERE {range}) TO STDOUT",
            table.name.quoted()
        )
    }
}

/// What a connection hands the container for one piece.
enum Produced {
    Begin {
        piece: usize,
    },
    /// Encoded frames, with the rows and plaintext bytes they hold, so
    /// progress moves per batch rather than per piece.
    Encoded {
        bytes: Vec<u8>,
        rows: u64,
        plain: u64,
    },
    End {
        rows: u64,
        digest: PlainDigest,
    },
}

/// One connection's share of the export: takes pieces until none is left.
async fn export_pieces(
    connection: &Transaction<'_>,
    plan: &ExportPlan<'_>,
    next_piece: &AtomicUsize,
    produced: mpsc::Sender<Produced>,
    compression: Compression,
) -> Result<(), PostgresError> {
    loop {
        let index = next_piece.fetch_add(1, Ordering::Relaxed);
        let Some(piece) = plan.pieces.get(index) else {
            return Ok(());
        };
        let table = &plan.tables[piece.table].name;
        let table_error = |what: &'static str| {
            let table = table.display();
            move |source| PostgresError::TableQuery { what, table, source }
        };
        let stream = connection
            .copy_out(plan.statement(piece).as_str())
            .await
            .map_err(table_error("starting COPY TO STDOUT"))?;
        let mut stream = std::pin::pin!(stream);
        // A send fails only when the container stopped; its error is reported.
        if produced.send(Produced::Begin { piece: index }).await.is_err() {
            return Ok(());
        }
        let mut encoding = EncodingThread::new(compression, plan.formats[piece.table])?;
        let mut batch = Vec::with_capacity(COPY_BATCH_BYTES + 64 * 1024);
        while let Some(message) = stream.next().await {
            batch.extend_from_slice(&message.map_err(table_error("reading COPY data"))?);
            if batch.len() >= COPY_BATCH_BYTES {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(COPY_BATCH_BYTES + 64 * 1024));
                let ready = encoding.encode(full).await?;
                if !ready.bytes.is_empty()
                    && produced
                        .send(Produced::Encoded {
                            bytes: ready.bytes,
                            rows: ready.rows,
                            plain: ready.plain,
                        })
                        .await
                        .is_err()
                {
                    return Ok(());
                }
            }
        }
        let (encoded, rows, digest) = encoding.finish(batch).await?;
        // The last frames' rows and bytes are counted from the piece's end.
        if produced
            .send(Produced::Encoded {
                bytes: encoded,
                rows: 0,
                plain: 0,
            })
            .await
            .is_err()
            || produced.send(Produced::End { rows, digest }).await.is_err()
        {
            return Ok(());
        }
    }
}

/// Compression, hashing and row counting of one piece on a blocking thread,
/// one batch behind the COPY reading so the two overlap.
struct EncodingThread {
    encoder: Option<(SectionEncoder, RowCounter)>,
    rows: u64,
    in_flight: Option<tokio::task::JoinHandle<Result<Encoded, ContainerError>>>,
}

struct Encoded {
    encoder: (SectionEncoder, RowCounter),
    bytes: Vec<u8>,
    rows: u64,
    plain: u64,
}

/// What a batch became: its frames, and the rows and plaintext bytes in it.
#[derive(Default)]
struct Ready {
    bytes: Vec<u8>,
    rows: u64,
    plain: u64,
}

impl EncodingThread {
    fn new(compression: Compression, format: CopyFormat) -> Result<Self, ContainerError> {
        Ok(Self {
            encoder: Some((SectionEncoder::new(compression)?, RowCounter::new(format))),
            rows: 0,
            in_flight: None,
        })
    }

    /// Starts encoding `batch`; returns what the batch before it became.
    async fn encode(&mut self, batch: Vec<u8>) -> Result<Ready, PostgresError> {
        let ready = self.collect().await?;
        let (mut encoder, mut counter) = self.encoder.take().ok_or(ContainerError::UnfinishedSection)?;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            encoder.encode(&batch, &mut bytes)?;
            // Room was made for incompressible data; queued frames keep only their size.
            bytes.shrink_to_fit();
            let rows = counter.count(&batch);
            Ok(Encoded {
                encoder: (encoder, counter),
                bytes,
                rows,
                plain: u64::try_from(batch.len()).unwrap_or(u64::MAX),
            })
        }));
        Ok(ready)
    }

    /// Encodes the last batch and ends the piece.
    async fn finish(mut self, last: Vec<u8>) -> Result<(Vec<u8>, u64, PlainDigest), PostgresError> {
        let mut bytes = self.collect().await?.bytes;
        let (mut encoder, mut counter) = self.encoder.take().ok_or(ContainerError::UnfinishedSection)?;
        let (tail, digest, last_rows) = tokio::task::spawn_blocking(move || {
            let mut tail = Vec::new();
            encoder.encode(&last, &mut tail)?;
            let digest = encoder.finish(&mut tail)?;
            Ok::<_, ContainerError>((tail, digest, counter.count(&last)))
        })
        .await
        .map_err(PostgresError::PipelineTaskFailed)??;
        bytes.extend_from_slice(&tail);
        let rows = self.rows + last_rows;
        Ok((bytes, rows, digest))
    }

    async fn collect(&mut self) -> Result<Ready, PostgresError> {
        let Some(job) = self.in_flight.take() else {
            return Ok(Ready::default());
        };
        let encoded = job.await.map_err(PostgresError::PipelineTaskFailed)??;
        self.encoder = Some(encoded.encoder);
        self.rows += encoded.rows;
        Ok(Ready {
            bytes: encoded.bytes,
            rows: encoded.rows,
            plain: encoded.plain,
        })
    }
}

/// Writes the pieces into the container as they come, one whole piece at a
/// time (a section is contiguous): the next is whichever connection has one
/// ready first, while the others wait at most [`FRAMES_AHEAD`] frames ahead.
async fn write_pieces<W: AsyncWrite + Unpin>(
    writer: &mut ContainerWriter<W>,
    mut receivers: Vec<mpsc::Receiver<Produced>>,
    plan: &ExportPlan<'_>,
    progress: &dyn Progress,
) -> Result<Vec<SectionEntry>, PostgresError> {
    let mut entries = Vec::new();
    progress.begin_export(plan.tables.len(), plan.estimated_bytes);
    // Tables are numbered in the order they start (a split table's pieces count once).
    let mut started: Vec<usize> = Vec::new();
    while !receivers.is_empty() {
        let (message, ready, waiting) =
            futures_util::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.recv()))).await;
        drop(waiting);
        let piece = match message {
            None => {
                receivers.swap_remove(ready);
                continue;
            }
            Some(Produced::Begin { piece }) => &plan.pieces[piece],
            Some(_) => return Err(PostgresError::ExportPieceInterrupted),
        };
        let table = &plan.tables[piece.table].name;
        let mut section =
            writer.begin_encoded_section(SectionKind::Table, Some(&table.schema), &table.name, piece.part)?;
        section.store_as(plan.formats[piece.table])?;
        let number = match started.iter().position(|&t| t == piece.table) {
            Some(position) => position + 1,
            None => {
                started.push(piece.table);
                started.len()
            }
        };
        progress.begin_table_of(&table.display(), number, plan.tables.len());
        let receiver = &mut receivers[ready];
        let (mut seen_rows, mut seen_plain) = (0u64, 0u64);
        loop {
            match receiver.recv().await {
                Some(Produced::Encoded { bytes, rows, plain }) => {
                    section.write_encoded(&bytes).await?;
                    seen_rows += rows;
                    seen_plain += plain;
                    progress.advance(rows, plain);
                }
                Some(Produced::End { rows, digest }) => {
                    let entry = section.finish_encoded(rows, digest).await?;
                    progress.advance(
                        rows.saturating_sub(seen_rows),
                        entry.plain_bytes.saturating_sub(seen_plain),
                    );
                    progress.finish_table();
                    entries.push(entry);
                    break;
                }
                Some(Produced::Begin { .. }) | None => return Err(PostgresError::ExportPieceInterrupted),
            }
        }
    }
    Ok(entries)
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

/// The leaf partitions of partitioned `table` that are not foreign tables
/// (`None` when none is foreign: the table is read as a whole), and their
/// pages: a partitioned table has no storage of its own.
async fn partition_leaves(
    snapshot: &Transaction<'_>,
    table: &Table,
) -> Result<(Option<Vec<String>>, u64), PostgresError> {
    let leaves = super::leaf_partitions(snapshot, &table.name).await?;
    let pages = leaves.iter().map(|leaf| leaf.pages).sum();
    if !leaves.iter().any(|leaf| leaf.foreign) {
        return Ok((None, pages));
    }
    let local = leaves
        .into_iter()
        .filter(|leaf| !leaf.foreign)
        .map(|leaf| leaf.name)
        .collect();
    Ok((Some(local), pages))
}

/// COPY of partitioned `table`'s rows from the partitions `leaves` only.
fn copy_out_of_leaves(table: &Table, leaves: &[String]) -> String {
    let columns = quote_column_list(&table.copy_columns);
    let columns = if columns.is_empty() {
        "*".to_owned()
    } else {
        columns
    };
    // ONLY the partitioned table itself: no rows, the right columns, for a
    // table whose every partition is foreign.
    let mut sources = vec![format!("SELECT {columns} FROM ONLY {}", table.name.quoted())];
    sources.extend(leaves.iter().map(|leaf| format!("SELECT {columns} FROM {leaf}")));
    format!("COPY ({}) TO STDOUT", sources.join(" UNION ALL "))
}

/// Whether every column `table` exports has a binary COPY form that any
/// database loads back as the same value: built-in base types (and arrays
/// of them) with a binary form, and enums (sent as their labels). Not the
/// `reg*` types (sent as OIDs, which differ between databases), nor arrays
/// or composites of a type of this database (their binary form names its
/// OID), nor domains, ranges or extensions' types: those tables stay text.
async fn binary_portable(snapshot: &Transaction<'_>, table: &Table) -> Result<bool, PostgresError> {
    const PORTABLE_BASE: &str = "{t}.oid < 16384 AND {t}.typtype = 'b' AND {t}.typcategory NOT IN ('A', 'Z') \
         AND {t}.typname::text NOT LIKE 'reg%' AND {t}.typname::text NOT IN ('xml', 'aclitem', 'unknown') \
         AND {t}.typsend::oid <> 0 AND {t}.typreceive::oid <> 0";
    let query = format!(
        "SELECT coalesce(bool_and(t.typtype = 'e' OR ({}) \
             OR (t.oid < 16384 AND t.typtype = 'b' AND t.typcategory = 'A' AND ({}))), true) \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem \
         WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
           AND (cardinality($2::text[]) = 0 OR a.attname::text = ANY($2::text[]))",
        PORTABLE_BASE.replace("{t}", "t"),
        PORTABLE_BASE.replace("{t}", "e"),
    );
    snapshot
        .query_one(query.as_str(), &[&table.name.quoted(), &table.copy_columns])
        .await
        .map(|row| row.get(0))
        .map_err(|source| PostgresError::TableQuery {
            what: "reading the column types (for binary COPY)",
            table: table.name.display(),
            source,
        })
}

pub fn copy_out_statement(name: &QualifiedName, kind: TableKind, columns: &[String]) -> String {
    let column_list = quote_column_list(columns);
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
    }
}
