//! Large objects, carried as pg_dump carries them: every object keeps its
//! OID, owner, grants and comment, and its bytes travel in one section of
//! their own (`largeobjects`, see `docs/FORMAT.md`), streamed in bounded
//! memory both ways.
//!
//! The metadata (OID, owner and grants as role statements, comment) is
//! small and goes in the schema section; the bytes never are all in memory
//! at once: the backup reads each object with `lo_get(oid, offset, len)` in
//! [`CHUNK_BYTES`] pieces inside the export's snapshot, and the restore
//! writes each piece with `lo_put` as soon as it is decoded.
//!
//! The section's plaintext is, for every object in the schema's order:
//! `oid (4, big-endian) ‖ { length (4, 1 … CHUNK_BYTES) ‖ bytes }* ‖ 0 (4)`.
//! Chunk lengths let the writer stream an object without knowing its size
//! in advance (reading its size would need `pg_largeobject`, which only a
//! superuser may read), and the zero length ends the object.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tokio_postgres::{GenericClient, Transaction};

use super::PostgresError;
use super::schema::{DatabaseSchema, RoleStatement};
use crate::container::{BackupReader, ContainerWriter, ObjectSource, SectionEntry, SectionKind};

/// Bytes read from or written to an object per statement: large enough
/// that round trips do not dominate, small enough to bound memory.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Name of the section holding the objects' bytes.
pub const SECTION_NAME: &str = "large objects";

/// One large object's metadata, as the schema section records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LargeObject {
    pub oid: u32,
    /// `ALTER LARGE OBJECT … OWNER TO` then one `GRANT … ON LARGE OBJECT`
    /// per grantee, each with the role it needs (a missing role is a
    /// warning, as for every other object's owner and grants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileges: Vec<RoleStatement>,
    /// `COMMENT ON LARGE OBJECT … IS …`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Every large object of the database, by OID. Runs in the snapshot.
pub async fn capture(client: &Transaction<'_>) -> Result<Vec<LargeObject>, PostgresError> {
    let target = "format('LARGE OBJECT %s', m.oid)";
    let sql = format!(
        "SELECT m.oid, {privileges} AS privileges, \
                (SELECT format('COMMENT ON LARGE OBJECT %s IS %L', m.oid, d.description) FROM pg_description d \
                  WHERE d.classoid = 'pg_largeobject'::regclass AND d.objoid = m.oid AND d.objsubid = 0) AS comment \
         FROM pg_largeobject_metadata m ORDER BY m.oid",
        privileges = super::kinds::owner_and_grants_sql(
            "m.lomowner",
            target,
            "COALESCE(m.lomacl, acldefault('L', m.lomowner))",
            target
        )
    );
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(|source| PostgresError::Query {
            what: "reading the large objects",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| LargeObject {
            oid: row.get("oid"),
            privileges: super::kinds::role_statements(row.get("privileges")),
            comment: row.get("comment"),
        })
        .collect())
}

/// What the large-object section held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    pub objects: u64,
    pub bytes: u64,
}

/// Writes the bytes of `objects` as one `largeobjects` section (none when
/// there are no objects), reading each in [`CHUNK_BYTES`] pieces.
pub async fn export<W: AsyncWrite + Unpin>(
    client: &Transaction<'_>,
    objects: &[LargeObject],
    writer: &mut ContainerWriter<W>,
) -> Result<Carried, PostgresError> {
    if objects.is_empty() {
        return Ok(Carried::default());
    }
    let mut section = writer.begin_section(SectionKind::LargeObjects, None, SECTION_NAME)?;
    let carried = frame(client, objects, Out::Section(&mut section)).await?;
    section.finish(carried.objects).await?;
    tracing::info!(
        objects = carried.objects,
        bytes = carried.bytes,
        "large objects exported"
    );
    Ok(carried)
}

/// The SHA-256 (lowercase hex) of the section a backup of `objects` taken
/// now would hold: deep verification compares the restored objects with
/// the backup's section through it, without holding any object whole.
pub async fn digest(
    client: &Transaction<'_>,
    objects: &[LargeObject],
) -> Result<(Carried, String), PostgresError> {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    let carried = frame(client, objects, Out::<tokio::io::Sink>::Hash(&mut hash)).await?;
    Ok((carried, hex::encode(hash.finalize())))
}

/// Reads `objects` one [`CHUNK_BYTES`] piece at a time and hands `out`
/// the section's plaintext (see the module's framing) as it goes.
/// Where [`frame`] puts the plaintext (an enum, not a closure: an async
/// closure's future is not `Send` for every lifetime, and deep
/// verification runs on spawned tasks).
enum Out<'s, 'c, W> {
    Section(&'s mut crate::container::SectionWriter<'c, W>),
    Hash(&'s mut sha2::Sha256),
}

impl<W: AsyncWrite + Unpin> Out<'_, '_, W> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), PostgresError> {
        use sha2::Digest as _;
        match self {
            Self::Section(section) => section.write(bytes).await.map_err(PostgresError::from),
            Self::Hash(hash) => {
                hash.update(bytes);
                Ok(())
            }
        }
    }
}

async fn frame<W: AsyncWrite + Unpin>(
    client: &Transaction<'_>,
    objects: &[LargeObject],
    mut out: Out<'_, '_, W>,
) -> Result<Carried, PostgresError> {
    let mut carried = Carried::default();
    let read = client
        .prepare("SELECT pg_catalog.lo_get($1, $2, $3)")
        .await
        .map_err(|source| PostgresError::Query {
            what: "preparing to read large objects",
            source,
        })?;
    let chunk = i32::try_from(CHUNK_BYTES).unwrap_or(i32::MAX);
    for object in objects {
        out.put(&object.oid.to_be_bytes()).await?;
        let mut offset: i64 = 0;
        loop {
            let bytes: Vec<u8> = client
                .query_one(&read, &[&object.oid, &offset, &chunk])
                .await
                .map_err(|source| PostgresError::LargeObjectQuery {
                    what: "reading",
                    oid: object.oid,
                    source,
                })?
                .get(0);
            if !bytes.is_empty() {
                let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                out.put(&length.to_be_bytes()).await?;
                out.put(&bytes).await?;
                offset += i64::from(length);
            }
            if bytes.len() < CHUNK_BYTES {
                break;
            }
        }
        out.put(&0u32.to_be_bytes()).await?;
        carried.objects += 1;
        carried.bytes += u64::try_from(offset).unwrap_or(0);
    }
    Ok(carried)
}

/// The section holding the objects' bytes, if the backup has one.
pub fn section<S: ObjectSource>(backup: &BackupReader<'_, S>) -> Option<SectionEntry> {
    backup
        .sections()
        .iter()
        .find(|s| s.kind == SectionKind::LargeObjects)
        .cloned()
}

/// The OIDs of the backup's large objects that already exist in the
/// target: a restore must not write into someone else's object.
pub async fn existing<C: GenericClient>(
    client: &C,
    schema: &DatabaseSchema,
) -> Result<Vec<u32>, PostgresError> {
    if schema.large_objects.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<u32> = schema.large_objects.iter().map(|o| o.oid).collect();
    let rows = client
        .query(
            "SELECT m.oid FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid = ANY($1::oid[]) ORDER BY 1",
            &[&oids],
        )
        .await
        .map_err(|source| PostgresError::Query {
            what: "looking for the backup's large objects in the target",
            source,
        })?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// One step of decoding the section.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Begin(u32),
    Data(Vec<u8>),
    End,
}

/// Decodes the section's framing from blocks of any size, keeping at most
/// one block plus one chunk (never a whole object).
#[derive(Debug, Default)]
struct Decoder {
    pending: Vec<u8>,
    /// The object being read, if any.
    open: bool,
}

impl Decoder {
    fn feed(&mut self, block: &[u8]) -> Result<Vec<Event>, PostgresError> {
        self.pending.extend_from_slice(block);
        let mut events = Vec::new();
        let mut at = 0;
        while let Some(word) = self.pending.get(at..at + 4) {
            let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            if !self.open {
                events.push(Event::Begin(word));
                self.open = true;
                at += 4;
                continue;
            }
            if word == 0 {
                events.push(Event::End);
                self.open = false;
                at += 4;
                continue;
            }
            let length = usize::try_from(word).unwrap_or(usize::MAX);
            if length > CHUNK_BYTES {
                return Err(PostgresError::MalformedLargeObjects(format!(
                    "a chunk of {length} bytes, more than {CHUNK_BYTES}"
                )));
            }
            let Some(bytes) = self.pending.get(at + 4..at + 4 + length) else {
                break;
            };
            events.push(Event::Data(bytes.to_vec()));
            at += 4 + length;
        }
        self.pending.drain(..at);
        Ok(events)
    }

    fn finish(&self) -> Result<(), PostgresError> {
        if self.open || !self.pending.is_empty() {
            return Err(PostgresError::MalformedLargeObjects(
                "the section ends in the middle of an object".into(),
            ));
        }
        Ok(())
    }
}

/// Creates the backup's large objects in the target with their OIDs and
/// bytes (owners, grants and comments are applied by the caller, as role
/// statements). The section's objects must be the schema's, in its order.
pub async fn restore<S: ObjectSource>(
    backup: &BackupReader<'_, S>,
    schema: &DatabaseSchema,
    client: &Transaction<'_>,
) -> Result<Carried, PostgresError> {
    let mut carried = Carried::default();
    if schema.large_objects.is_empty() {
        return Ok(carried);
    }
    let entry = section(backup).ok_or_else(|| {
        PostgresError::MalformedLargeObjects(
            "the schema lists large objects but the backup has no section for them".into(),
        )
    })?;
    let prepare = |sql: &'static str| async move {
        client.prepare(sql).await.map_err(|source| PostgresError::Query {
            what: "preparing to write large objects",
            source,
        })
    };
    let create = prepare("SELECT pg_catalog.lo_create($1)").await?;
    let put = prepare("SELECT pg_catalog.lo_put($1, $2, $3)").await?;
    let mut expected = schema.large_objects.iter().map(|o| o.oid);
    let mut reader = backup.open_section(&entry).await?;
    let mut decoder = Decoder::default();
    let (mut oid, mut offset) = (0u32, 0i64);
    while let Some(block) = reader.next_block().await? {
        for event in decoder.feed(&block)? {
            match event {
                Event::Begin(next) => {
                    if expected.next() != Some(next) {
                        return Err(PostgresError::MalformedLargeObjects(format!(
                            "large object {next} is not the next one the schema lists"
                        )));
                    }
                    (oid, offset) = (next, 0);
                    client.query_one(&create, &[&oid]).await.map_err(|source| {
                        PostgresError::LargeObjectQuery {
                            what: "creating",
                            oid,
                            source,
                        }
                    })?;
                }
                Event::Data(bytes) => {
                    client
                        .query_one(&put, &[&oid, &offset, &bytes])
                        .await
                        .map_err(|source| PostgresError::LargeObjectQuery {
                            what: "writing",
                            oid,
                            source,
                        })?;
                    offset += i64::try_from(bytes.len()).unwrap_or(i64::MAX);
                }
                Event::End => {
                    carried.objects += 1;
                    carried.bytes += u64::try_from(offset).unwrap_or(0);
                }
            }
        }
    }
    decoder.finish()?;
    if let Some(missing) = expected.next() {
        return Err(PostgresError::MalformedLargeObjects(format!(
            "large object {missing} is listed in the schema but its bytes are not in the backup"
        )));
    }
    if carried.objects != entry.rows {
        return Err(PostgresError::MalformedLargeObjects(format!(
            "{} objects read, the section records {}",
            carried.objects, entry.rows
        )));
    }
    tracing::info!(
        objects = carried.objects,
        bytes = carried.bytes,
        "large objects restored"
    );
    Ok(carried)
}

/// The large objects' owners and grants, for the restore's role statements.
pub fn privileges(schema: &DatabaseSchema) -> impl Iterator<Item = &RoleStatement> {
    schema.large_objects.iter().flat_map(|o| o.privileges.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(objects: &[(u32, &[&[u8]])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (oid, chunks) in objects {
            out.extend_from_slice(&oid.to_be_bytes());
            for chunk in *chunks {
                out.extend_from_slice(&u32::try_from(chunk.len()).unwrap().to_be_bytes());
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        out
    }

    #[test]
    fn the_framing_decodes_the_same_whatever_the_block_boundaries() {
        // Given an empty object and one of two chunks
        let bytes = framed(&[(7, &[]), (9, &[b"abc", b"defgh"])]);
        let expected = vec![
            Event::Begin(7),
            Event::End,
            Event::Begin(9),
            Event::Data(b"abc".to_vec()),
            Event::Data(b"defgh".to_vec()),
            Event::End,
        ];
        // When it arrives in blocks of every size from 1 byte to all of it
        for size in 1..=bytes.len() {
            let mut decoder = Decoder::default();
            let mut events = Vec::new();
            for block in bytes.chunks(size) {
                events.extend(decoder.feed(block).unwrap());
            }
            // Then the same events come out and nothing is left over
            assert_eq!(events, expected, "blocks of {size}");
            decoder.finish().unwrap();
        }
    }

    #[test]
    fn a_section_cut_inside_an_object_or_with_an_oversized_chunk_is_refused() {
        let bytes = framed(&[(7, &[b"abc"])]);
        let mut decoder = Decoder::default();
        decoder.feed(&bytes[..bytes.len() - 2]).unwrap();
        assert!(decoder.finish().is_err());
        let mut decoder = Decoder::default();
        let mut huge = 7u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&(u32::try_from(CHUNK_BYTES).unwrap() + 1).to_be_bytes());
        assert!(decoder.feed(&huge).is_err());
    }
}
