//! Change segments: one encrypted, authenticated object per capture run,
//! `changes/{id}.segment`, described by a MAC'd document
//! `changes/{id}.json` (byte layout in `docs/PITR.md`).
//!
//! The object is a backup container (`docs/FORMAT.md`: sealed chunks,
//! key id, SHA-256) with one section of kind `changes`, whose plaintext
//! is the *payload*:
//!
//! ```text
//! "PGCHANGE" ‖ payload version (u8 = 1) ‖ pgoutput protocol version (u8 = 1)
//! then per message, in the order the slot gave them:
//!   LSN (u64 BE) ‖ length (u32 BE) ‖ the pgoutput message, byte for byte
//! ```
//!
//! The messages are kept as the server wrote them rather than re-encoded:
//! nothing is lost or reinterpreted (values stay in the server's text
//! format), each segment carries the `Relation` messages its changes refer
//! to (every peek starts a fresh decoding session, which sends them again),
//! and the decoder that checked every message at capture is the one that
//! reads them back.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::pgoutput::{self, Message, Relation};
use super::{ChangesError, Lsn, PartitionFile};
use crate::container::{BackupReader, Compression, SectionKind, SectionReader};
use crate::envelope::MetadataKey;
use crate::keyring::Keyring;
use crate::metadata::{canonical_document, rfc3339_millis};
use crate::storage::{BackupStore, ObjectReader, StoredObject, get_bytes};

/// Where segments and their documents are kept in the store.
pub const CHANGES_PREFIX: &str = "changes/";
/// The name of the one section a segment's container holds.
pub const SECTION_NAME: &str = "changes";
pub const PAYLOAD_MAGIC: &[u8; 8] = b"PGCHANGE";
pub const PAYLOAD_VERSION: u8 = 1;
/// The pgoutput `proto_version` the messages were requested in.
pub const PGOUTPUT_PROTO_VERSION: u8 = 1;
const PAYLOAD_HEADER_LEN: usize = 10;
const RECORD_HEADER_LEN: usize = 12;
/// HKDF `info` prefix of the key that MACs segment documents; the
/// repository id follows. Distinct from the backups' so neither kind of
/// document can be passed off as the other.
pub const SEGMENT_MAC_INFO: &[u8] = b"pgbackup/v2 changes mac ";
/// A segment document is small (a line per table and sequence).
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
/// A record longer than this is a damaged length, not a message
/// (PostgreSQL's own limit for one value is 1 GiB).
const MAX_RECORD_LEN: usize = 1 << 30;

/// A segment's id: the first commit's LSN (16 hex digits, so ids sort in
/// LSN order) and the capture's start in Unix milliseconds (a capture that
/// repeats changes after a failed run gets an id of its own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SegmentId(String);

impl SegmentId {
    pub fn new(first_commit: Lsn, captured_at: DateTime<Utc>) -> Self {
        let millis = captured_at.timestamp_millis().max(0);
        Self(format!("{:016X}-{millis}", first_commit.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn object_key(&self) -> String {
        format!("{CHANGES_PREFIX}{}.segment", self.0)
    }

    pub fn metadata_key(&self) -> String {
        format!("{CHANGES_PREFIX}{}.json", self.0)
    }
}

impl TryFrom<String> for SegmentId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let valid = text.split_once('-').is_some_and(|(lsn, millis)| {
            lsn.len() == 16
                && lsn.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
                && !millis.is_empty()
                && millis.len() <= 16
                && millis.bytes().all(|b| b.is_ascii_digit())
        });
        if valid {
            Ok(Self(text))
        } else {
            Err(format!("{text:?} is not a change segment id"))
        }
    }
}

impl From<SegmentId> for String {
    fn from(id: SegmentId) -> Self {
        id.0
    }
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rows one segment changed in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableChanges {
    /// `schema.name`, as the slot's relation message names it.
    pub table: String,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub truncates: u64,
}

/// A sequence's state when the segment was captured (logical decoding does
/// not carry sequences, so replay sets them from here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequenceValue {
    /// `schema.name`.
    pub sequence: String,
    /// `None` before the sequence's first `nextval`.
    pub last_value: Option<i64>,
}

/// The document beside a segment, sealed with a MAC under the segment's
/// master key bound to the repository ([`SEGMENT_MAC_INFO`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentMetadata {
    pub id: SegmentId,
    /// backupctl's version that captured it.
    pub version: String,
    #[serde(with = "rfc3339_millis")]
    pub captured_at: DateTime<Utc>,
    pub slot: String,
    pub publication: String,
    /// Where the slot stood before this capture (its confirmed position).
    pub start_lsn: Lsn,
    pub first_commit_lsn: Lsn,
    pub last_commit_lsn: Lsn,
    /// Just past the last commit record: the slot was advanced to here.
    pub end_lsn: Lsn,
    #[serde(with = "rfc3339_millis")]
    pub first_commit_time: DateTime<Utc>,
    #[serde(with = "rfc3339_millis")]
    pub last_commit_time: DateTime<Utc>,
    pub transactions: u64,
    /// Row changes: inserts, updates and deletes (a truncate counts once
    /// per table in `tables`, not here).
    pub changes: u64,
    /// Every message the payload holds, `Begin` and `Commit` included.
    pub messages: u64,
    /// Tables this segment changed, with their row counts.
    pub tables: Vec<TableChanges>,
    /// Every table the publication listed at capture, `schema.name`.
    pub published_tables: Vec<String>,
    /// Lowercase hex SHA-256 of the published tables' shape at capture
    /// (`docs/PITR.md`): replay refuses a segment whose tables changed.
    pub catalog_fingerprint: String,
    /// The published partitioned tables' leaf partitions and their files,
    /// read once the changes were read (absent in older segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_files: Option<Vec<PartitionFile>>,
    /// Partitions (`schema.name`) whose file changed since the chain's
    /// previous record (the segment before, or the base backup) without a
    /// TRUNCATE of their root in this segment: truncated alone (which is
    /// not published) or rewritten (VACUUM FULL, CLUSTER). The segment
    /// cuts the chain: replay refuses it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions_rewritten: Vec<String>,
    pub sequences: Vec<SequenceValue>,
    pub key_id: String,
    pub compression: Compression,
    pub chunk_size: u32,
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the stored object.
    pub checksum: String,
    /// Uncompressed payload bytes.
    pub payload_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_mac: Option<String>,
}

impl SegmentMetadata {
    /// Seals the document (sets `repositoryId` and `metadataMac`).
    pub fn seal(&mut self, keyring: &Keyring, repository_id: &str) -> Result<(), ChangesError> {
        let master = keyring.get(&self.key_id)?;
        self.metadata_mac = None;
        self.repository_id = Some(repository_id.to_owned());
        let value = serde_json::to_value(&*self).map_err(|e| self.malformed(e))?;
        let tag = segment_key(master, repository_id).tag(&canonical_document(&value));
        self.metadata_mac = Some(hex::encode(tag));
        Ok(())
    }

    /// Parses a stored document and checks its MAC from the stored bytes
    /// (fields this version does not know are covered too): a document
    /// without a MAC, under a key the keyring lacks, for another repository
    /// or altered in any byte is refused.
    pub fn open(
        stored: &[u8],
        keyring: &Keyring,
        repository_id: &str,
        key: &str,
    ) -> Result<Self, ChangesError> {
        let id = key
            .strip_prefix(CHANGES_PREFIX)
            .and_then(|name| name.strip_suffix(".json"))
            .unwrap_or(key)
            .to_owned();
        let tampered = || ChangesError::TamperedMetadata { id: id.clone() };
        let document: serde_json::Value = serde_json::from_slice(stored).map_err(|_| tampered())?;
        let tag = document
            .get("metadataMac")
            .and_then(serde_json::Value::as_str)
            .and_then(|text| hex::decode(text).ok())
            .ok_or_else(tampered)?;
        let key_id = document
            .get("keyId")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(tampered)?;
        let master = keyring.get(key_id)?;
        if document.get("repositoryId").and_then(serde_json::Value::as_str) != Some(repository_id) {
            return Err(tampered());
        }
        segment_key(master, repository_id)
            .verify(&canonical_document(&document), &tag)
            .map_err(|_| tampered())?;
        let metadata: Self = serde_json::from_value(document).map_err(|_| tampered())?;
        // Authentic, but filed under another segment's name: moved.
        if metadata.id.metadata_key() != key {
            return Err(tampered());
        }
        Ok(metadata)
    }

    fn malformed(&self, error: impl std::fmt::Display) -> ChangesError {
        ChangesError::MalformedSegment {
            id: self.id.to_string(),
            reason: error.to_string(),
        }
    }
}

fn segment_key(master: &crate::keyring::MasterKey, repository_id: &str) -> MetadataKey {
    let mut info = SEGMENT_MAC_INFO.to_vec();
    info.extend_from_slice(repository_id.as_bytes());
    MetadataKey::derive_for(master, &info)
}

/// The payload's first bytes.
pub fn payload_header() -> [u8; PAYLOAD_HEADER_LEN] {
    let mut header = [0u8; PAYLOAD_HEADER_LEN];
    header[..8].copy_from_slice(PAYLOAD_MAGIC);
    header[8] = PAYLOAD_VERSION;
    header[9] = PGOUTPUT_PROTO_VERSION;
    header
}

/// Appends one record (a message and the LSN the slot gave it) to `out`.
pub fn encode_record(lsn: Lsn, message: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&lsn.0.to_be_bytes());
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
}

/// Splits the payload back into records, across block boundaries, holding
/// no more than one record and one block at a time.
#[derive(Debug, Default)]
struct RecordSplitter {
    buffer: BytesMut,
    header_seen: bool,
}

impl RecordSplitter {
    fn push(&mut self, block: &[u8]) {
        self.buffer.extend_from_slice(block);
    }

    /// The next whole record, `Ok(None)` when more bytes are needed.
    fn next_record(&mut self) -> Result<Option<(Lsn, Bytes)>, String> {
        if !self.header_seen {
            if self.buffer.len() < PAYLOAD_HEADER_LEN {
                return Ok(None);
            }
            let header = self.buffer.split_to(PAYLOAD_HEADER_LEN);
            if &header[..8] != PAYLOAD_MAGIC {
                return Err("its payload does not start with PGCHANGE".into());
            }
            if header[8] != PAYLOAD_VERSION || header[9] != PGOUTPUT_PROTO_VERSION {
                return Err(format!(
                    "payload version {} with pgoutput protocol {}, which this build does not read",
                    header[8], header[9]
                ));
            }
            self.header_seen = true;
        }
        if self.buffer.len() < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let mut head = &self.buffer[..RECORD_HEADER_LEN];
        let lsn = Lsn(head.get_u64());
        let len = head.get_u32() as usize;
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(format!("a record at LSN {lsn} claims {len} bytes"));
        }
        if self.buffer.len() < RECORD_HEADER_LEN + len {
            self.buffer.reserve(RECORD_HEADER_LEN + len - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(RECORD_HEADER_LEN);
        Ok(Some((lsn, self.buffer.split_to(len).freeze())))
    }

    fn finish(&self) -> Result<(), String> {
        if !self.header_seen {
            return Err("its payload has no header".into());
        }
        if !self.buffer.is_empty() {
            return Err(format!("{} bytes after its last record", self.buffer.len()));
        }
        Ok(())
    }
}

/// One message of a segment, with the LSN the slot gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub message: Message,
}

/// Streams a segment's messages in the order they were captured. The
/// section's SHA-256 is checked when the last message has been read:
/// until [`SegmentChanges::next`] has returned `Ok(None)`, what it gave is
/// provisional (apply it inside a transaction).
pub struct SegmentChanges {
    id: SegmentId,
    section: SectionReader<ObjectReader>,
    splitter: RecordSplitter,
    relations: BTreeMap<u32, Relation>,
    done: bool,
}

impl SegmentChanges {
    pub async fn next(&mut self) -> Result<Option<Record>, ChangesError> {
        loop {
            if let Some((lsn, bytes)) = self
                .splitter
                .next_record()
                .map_err(|reason| self.malformed(reason))?
            {
                let message =
                    pgoutput::decode(&bytes).map_err(|source| ChangesError::Decode { lsn, source })?;
                if let Message::Relation(relation) = &message {
                    self.relations.insert(relation.oid, relation.clone());
                }
                return Ok(Some(Record { lsn, message }));
            }
            if self.done {
                return Ok(None);
            }
            match self.section.next_block().await? {
                Some(block) => self.splitter.push(&block),
                None => {
                    self.splitter.finish().map_err(|reason| self.malformed(reason))?;
                    self.done = true;
                }
            }
        }
    }

    /// The relation (table) a change refers to, as last described in this
    /// segment before it.
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    fn malformed(&self, reason: String) -> ChangesError {
        ChangesError::MalformedSegment {
            id: self.id.to_string(),
            reason,
        }
    }
}

/// The segments' documents, each authenticated, in id (LSN) order.
pub async fn list_segments(
    store: &dyn BackupStore,
    keyring: &Keyring,
) -> Result<Vec<SegmentMetadata>, ChangesError> {
    let Some(identity) = crate::identity::read(store).await? else {
        return Ok(Vec::new());
    };
    let mut segments = Vec::new();
    for info in store.list(CHANGES_PREFIX).await? {
        if !info.key.ends_with(".json") {
            continue;
        }
        let bytes = get_bytes(store, &info.key, MAX_DOCUMENT_BYTES).await?;
        segments.push(SegmentMetadata::open(
            &bytes,
            keyring,
            &identity.repository_id,
            &info.key,
        )?);
    }
    segments.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(segments)
}

/// Opens a segment's object (authenticating its header and trailer) and
/// streams its messages.
pub async fn read_segment(
    store: &dyn BackupStore,
    keyring: &Keyring,
    metadata: &SegmentMetadata,
) -> Result<SegmentChanges, ChangesError> {
    let object = StoredObject::open(store, &metadata.id.object_key()).await?;
    let reader = BackupReader::open(&object, keyring).await?;
    if reader.header().backup_id != metadata.id.as_str() {
        return Err(ChangesError::WrongSegmentObject {
            id: metadata.id.to_string(),
            found: reader.header().backup_id.clone(),
        });
    }
    let malformed = |reason: &str| ChangesError::MalformedSegment {
        id: metadata.id.to_string(),
        reason: reason.to_owned(),
    };
    let [entry] = reader.sections() else {
        return Err(malformed("it does not hold exactly one section"));
    };
    if entry.kind != SectionKind::Changes || entry.name != SECTION_NAME {
        return Err(malformed("its section is not a changes section"));
    }
    let section = reader.open_section(entry).await?;
    Ok(SegmentChanges {
        id: metadata.id.clone(),
        section,
        splitter: RecordSplitter::default(),
        relations: BTreeMap::new(),
        done: false,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_split_back_out_whatever_the_block_boundaries() {
        // Given a payload of three records
        let messages: [(Lsn, &[u8]); 3] =
            [(Lsn(1), b"B123"), (Lsn(2), b"I"), (Lsn(0xFFFF_0000_0001), b"C99")];
        let mut payload = payload_header().to_vec();
        for (lsn, message) in messages {
            encode_record(lsn, message, &mut payload);
        }
        // When it arrives in blocks of every size from 1 byte up
        for block_len in 1..=payload.len() {
            let mut splitter = RecordSplitter::default();
            let mut out = Vec::new();
            for block in payload.chunks(block_len) {
                splitter.push(block);
                while let Some((lsn, bytes)) = splitter.next_record().unwrap() {
                    out.push((lsn, bytes.to_vec()));
                }
            }
            // Then the same records come out, and nothing is left over
            splitter.finish().unwrap();
            let expected: Vec<(Lsn, Vec<u8>)> = messages.iter().map(|(l, m)| (*l, m.to_vec())).collect();
            assert_eq!(out, expected, "blocks of {block_len}");
        }
    }

    #[test]
    fn a_damaged_payload_is_named_not_guessed() {
        let mut payload = payload_header().to_vec();
        encode_record(Lsn(7), b"B", &mut payload);
        // A cut record is left over at the end
        let mut splitter = RecordSplitter::default();
        splitter.push(&payload[..payload.len() - 1]);
        assert!(splitter.next_record().unwrap().is_none());
        assert!(splitter.finish().unwrap_err().contains("after its last record"));
        // Another magic, another version
        for (at, value) in [(0, b'X'), (8, 2), (9, 2)] {
            let mut damaged = payload.clone();
            damaged[at] = value;
            let mut splitter = RecordSplitter::default();
            splitter.push(&damaged);
            assert!(splitter.next_record().is_err(), "byte {at}");
        }
        // A zero-length record
        let mut zero = payload_header().to_vec();
        encode_record(Lsn(7), b"", &mut zero);
        let mut splitter = RecordSplitter::default();
        splitter.push(&zero);
        assert!(splitter.next_record().is_err());
    }

    #[test]
    fn segment_ids_sort_by_lsn_and_parse_back() {
        let at = DateTime::from_timestamp_millis(1_765_000_000_000).unwrap();
        let early = SegmentId::new(Lsn(0x1_0000_0000), at);
        let late = SegmentId::new(Lsn(0x2_0000_0000), at - chrono::Duration::days(1));
        assert!(early < late);
        assert_eq!(early.as_str(), "0000000100000000-1765000000000");
        assert_eq!(
            early.object_key(),
            "changes/0000000100000000-1765000000000.segment"
        );
        assert_eq!(SegmentId::try_from(early.to_string()).unwrap(), early);
        for bad in [
            "",
            "x-1",
            "000000010000000-1",
            "0000000100000000-",
            "0000000100000000-1/../x",
        ] {
            assert!(SegmentId::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
