//! The stored segments as one chain: listing (`backupctl list --changes`),
//! continuity (holes between segments, repeats after a killed capture),
//! the chain each base backup needs, the full check of every segment
//! (`backupctl verify --changes`) and the achieved RPO per day (the audit
//! report). Design: `docs/PITR.md`, "Retention and verification".
//!
//! Documents are read with their MAC checked when a keyring is at hand;
//! without one (the prune function never holds the key) they are read as
//! *unchecked*, which is enough to list them, to keep them, and to delete
//! those every retained base backup has passed.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::pgoutput::Message;
use super::segment::{CHANGES_PREFIX, SegmentId, SegmentMetadata, read_segment};
use super::{ChangesError, Lsn};
use crate::checksum::sha256_of_stream;
use crate::keyring::Keyring;
use crate::storage::{BackupStore, ObjectInfo, get_bytes};

/// A segment document is small (a line per table and sequence).
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// Whether a segment's document was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentIntegrity {
    /// Its MAC matches under the repository's key.
    Authentic,
    /// Read without a keyring: not checked.
    Unchecked,
    /// It fails its MAC (or cannot be read as a segment document).
    Failed,
}

/// One segment document as found in the store.
#[derive(Debug, Clone)]
pub struct StoredSegment {
    /// `changes/{id}.json`.
    pub key: String,
    /// When the document was stored (the store's last-modified time): the
    /// segment's changes were safe from then on.
    pub stored_at: DateTime<Utc>,
    pub integrity: DocumentIntegrity,
    /// `None` when the document failed (see `error`).
    pub metadata: Option<SegmentMetadata>,
    pub error: Option<String>,
}

impl StoredSegment {
    /// The segment's id, from the document or else from its key.
    pub fn id(&self) -> String {
        self.metadata.as_ref().map_or_else(
            || {
                self.key
                    .strip_prefix(CHANGES_PREFIX)
                    .and_then(|name| name.strip_suffix(".json"))
                    .unwrap_or(&self.key)
                    .to_owned()
            },
            |metadata| metadata.id.to_string(),
        )
    }
}

/// Every segment document under `changes/`, in id (LSN) order. With a
/// keyring each MAC is checked, and a failing document is returned as
/// failed rather than refusing the rest; without one they are parsed
/// unchecked. The segment objects (`.segment`) are not read.
pub async fn read_documents(
    store: &dyn BackupStore,
    keyring: Option<&Keyring>,
) -> Result<Vec<StoredSegment>, ChangesError> {
    let listed: Vec<ObjectInfo> = store
        .list(CHANGES_PREFIX)
        .await?
        .into_iter()
        .filter(|info| info.key.ends_with(".json"))
        .collect();
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let repository_id = match keyring {
        Some(_) => crate::identity::read(store)
            .await?
            .map(|identity| identity.repository_id),
        None => None,
    };
    let mut segments = Vec::with_capacity(listed.len());
    for info in listed {
        let bytes = get_bytes(store, &info.key, MAX_DOCUMENT_BYTES).await?;
        let opened = match (keyring, &repository_id) {
            (Some(keyring), Some(repository_id)) => {
                SegmentMetadata::open(&bytes, keyring, repository_id, &info.key)
                    .map(|metadata| (metadata, DocumentIntegrity::Authentic))
                    .map_err(|error| error.to_string())
            }
            // A document but no repository identity: nothing to bind it to.
            (Some(_), None) => Err("the store has no repository identity to check it against".to_owned()),
            (None, _) => serde_json::from_slice::<SegmentMetadata>(&bytes)
                .map_err(|error| format!("it is not a segment document: {error}"))
                .and_then(|metadata| {
                    if metadata.id.metadata_key() == info.key {
                        Ok((metadata, DocumentIntegrity::Unchecked))
                    } else {
                        Err(format!("it names segment {}, not its own key", metadata.id))
                    }
                }),
        };
        segments.push(match opened {
            Ok((metadata, integrity)) => StoredSegment {
                key: info.key,
                stored_at: info.last_modified,
                integrity,
                metadata: Some(metadata),
                error: None,
            },
            Err(error) => StoredSegment {
                key: info.key,
                stored_at: info.last_modified,
                integrity: DocumentIntegrity::Failed,
                metadata: None,
                error: Some(error),
            },
        });
    }
    segments.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(segments)
}

/// LSNs no stored segment holds, between two segments of the chain (or
/// before the first one a base backup needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hole {
    /// The chain so far ends here…
    pub from: Lsn,
    /// …and the next segment starts here.
    pub to: Lsn,
    /// The last segment before the hole (`None`: the hole is before the
    /// first segment, seen from a base backup's position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<SegmentId>,
    /// The first segment after it.
    pub before: SegmentId,
}

impl std::fmt::Display for Hole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no stored segment holds the changes from LSN {} to {}",
            self.from, self.to
        )?;
        match &self.after {
            Some(after) => write!(f, " (between segments {after} and {})", self.before),
            None => write!(f, " (before segment {})", self.before),
        }
    }
}

/// How the segments, in id order, follow each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continuity {
    /// Segments that hold nothing the chain did not already have (a capture
    /// repeated after a run was killed before advancing the slot): not holes.
    pub repeats: Vec<SegmentId>,
    pub holes: Vec<Hole>,
}

/// Walks the segments in id order from the first one's start: each must
/// start at or before where the chain so far ends (`startLsn` ≤ the
/// previous `endLsn`); one starting past it leaves a hole, named with its
/// LSN range. A segment ending at or before the chain's end is a repeat.
pub fn continuity<'a>(segments: impl IntoIterator<Item = &'a SegmentMetadata>) -> Continuity {
    let mut ordered: Vec<&SegmentMetadata> = segments.into_iter().collect();
    ordered.sort_by(|a, b| a.id.cmp(&b.id));
    let mut result = Continuity::default();
    let mut covered: Option<(Lsn, &SegmentId)> = None;
    for segment in ordered {
        match covered {
            Some((end, _)) if segment.end_lsn <= end => {
                result.repeats.push(segment.id.clone());
                continue;
            }
            Some((end, last)) if segment.start_lsn > end => result.holes.push(Hole {
                from: end,
                to: segment.start_lsn,
                after: Some(last.clone()),
                before: segment.id.clone(),
            }),
            _ => {}
        }
        covered = Some((segment.end_lsn, &segment.id));
    }
    result
}

/// The first hole in the chain a base backup at stream position `start`
/// needs, if any: the segments ending after `start`, in id order, must
/// follow each other without a hole from `start` on. A position past every
/// stored segment needs none yet (the slot holds what follows).
pub fn first_hole_from<'a>(
    segments: impl IntoIterator<Item = &'a SegmentMetadata>,
    start: Lsn,
) -> Option<Hole> {
    let mut ordered: Vec<&SegmentMetadata> = segments.into_iter().collect();
    ordered.sort_by(|a, b| a.id.cmp(&b.id));
    let mut covered = start;
    let mut last: Option<&SegmentId> = None;
    for segment in ordered {
        if segment.end_lsn <= covered {
            continue;
        }
        if segment.start_lsn > covered {
            return Some(Hole {
                from: covered,
                to: segment.start_lsn,
                after: last.cloned(),
                before: segment.id.clone(),
            });
        }
        covered = segment.end_lsn;
        last = Some(&segment.id);
    }
    None
}

/// One segment as `backupctl list --changes` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSegment {
    pub id: String,
    pub document: DocumentIntegrity,
    #[serde(with = "crate::metadata::rfc3339_millis")]
    pub stored_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_lsn: Option<Lsn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<Lsn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_commit_lsn: Option<Lsn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_lsn: Option<Lsn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_commit_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit_time: Option<DateTime<Utc>>,
    pub transactions: u64,
    pub changes: u64,
    /// Stored bytes of the segment object.
    pub size_bytes: u64,
    /// The tables the segment changed.
    pub tables: Vec<String>,
    /// Holds nothing the segments before it did not (a repeated capture).
    pub repeat: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `backupctl list --changes`: the segments in LSN order and the holes
/// between them.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainListing {
    pub segments: Vec<ListedSegment>,
    pub gaps: Vec<Hole>,
}

pub async fn list_chain(
    store: &dyn BackupStore,
    keyring: Option<&Keyring>,
) -> Result<ChainListing, ChangesError> {
    let stored = read_documents(store, keyring).await?;
    let readable: Vec<&SegmentMetadata> = stored.iter().filter_map(|s| s.metadata.as_ref()).collect();
    let continuity = continuity(readable.iter().copied());
    let segments = stored
        .iter()
        .map(|segment| {
            let metadata = segment.metadata.as_ref();
            ListedSegment {
                id: segment.id(),
                document: segment.integrity,
                stored_at: segment.stored_at,
                slot: metadata.map(|m| m.slot.clone()),
                start_lsn: metadata.map(|m| m.start_lsn),
                end_lsn: metadata.map(|m| m.end_lsn),
                first_commit_lsn: metadata.map(|m| m.first_commit_lsn),
                last_commit_lsn: metadata.map(|m| m.last_commit_lsn),
                first_commit_time: metadata.map(|m| m.first_commit_time),
                last_commit_time: metadata.map(|m| m.last_commit_time),
                transactions: metadata.map_or(0, |m| m.transactions),
                changes: metadata.map_or(0, |m| m.changes),
                size_bytes: metadata.map_or(0, |m| m.size_bytes),
                tables: metadata
                    .map_or_else(Vec::new, |m| m.tables.iter().map(|t| t.table.clone()).collect()),
                repeat: metadata.is_some_and(|m| continuity.repeats.contains(&m.id)),
                error: segment.error.clone(),
            }
        })
        .collect();
    Ok(ChainListing {
        segments,
        gaps: continuity.holes,
    })
}

/// What reading one segment through found (`verify --changes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentContent {
    pub transactions: u64,
    pub changes: u64,
    pub messages: u64,
    pub first_commit_lsn: Option<Lsn>,
    pub last_commit_lsn: Option<Lsn>,
    pub end_lsn: Option<Lsn>,
}

/// Checks one segment completely against its (authenticated) document:
/// the stored object's size and SHA-256, then every chunk authenticated
/// and decrypted, the section's SHA-256, every message decoded, and the
/// counts and LSNs the document records. `Err(reason)`: the segment is
/// bad; an operational failure (the store unreachable) is `Ok(Err(..))`'s
/// outer error.
pub async fn check_segment(
    store: &dyn BackupStore,
    keyring: &Keyring,
    metadata: &SegmentMetadata,
) -> Result<Result<SegmentContent, String>, ChangesError> {
    let key = metadata.id.object_key();
    let object = match store.get(&key).await {
        Ok(object) => object,
        Err(error) if error.is_not_found() => {
            return Ok(Err(format!("its object {key} is missing")));
        }
        Err(error) => return Err(error.into()),
    };
    let (checksum, size) =
        sha256_of_stream(object)
            .await
            .map_err(|source| crate::storage::StorageError::Io {
                operation: "read",
                key: key.clone(),
                source,
            })?;
    if size != metadata.size_bytes {
        return Ok(Err(format!(
            "its object is {size} bytes, its document says {}",
            metadata.size_bytes
        )));
    }
    if checksum != metadata.checksum {
        return Ok(Err(
            "its object's SHA-256 differs from the one its document records".to_owned(),
        ));
    }
    let mut reader = match read_segment(store, keyring, metadata).await {
        Ok(reader) => reader,
        Err(ChangesError::Storage(error)) if !error.is_not_found() => return Err(error.into()),
        Err(error) => return Ok(Err(error.to_string())),
    };
    let mut content = SegmentContent::default();
    loop {
        let record = match reader.next().await {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(ChangesError::Storage(error)) if !error.is_not_found() => return Err(error.into()),
            Err(error) => return Ok(Err(error.to_string())),
        };
        content.messages += 1;
        match record.message {
            Message::Begin(begin) => {
                content.transactions += 1;
                content.first_commit_lsn.get_or_insert(begin.final_lsn);
            }
            Message::Commit(commit) => {
                content.last_commit_lsn = Some(commit.commit_lsn);
                content.end_lsn = Some(commit.end_lsn);
            }
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) => content.changes += 1,
            Message::Truncate(_) | Message::Relation(_) | Message::Type(_) | Message::Origin(_) => {}
        }
    }
    let recorded = (
        metadata.transactions,
        metadata.changes,
        metadata.messages,
        Some(metadata.first_commit_lsn),
        Some(metadata.last_commit_lsn),
        Some(metadata.end_lsn),
    );
    let found = (
        content.transactions,
        content.changes,
        content.messages,
        content.first_commit_lsn,
        content.last_commit_lsn,
        content.end_lsn,
    );
    if recorded != found {
        return Ok(Err(format!(
            "it holds {} transactions, {} changes and {} messages (commits {} … {}, end {}), its document records {} transactions, {} changes and {} messages (commits {} … {}, end {})",
            content.transactions,
            content.changes,
            content.messages,
            shown_lsn(content.first_commit_lsn),
            shown_lsn(content.last_commit_lsn),
            shown_lsn(content.end_lsn),
            metadata.transactions,
            metadata.changes,
            metadata.messages,
            metadata.first_commit_lsn,
            metadata.last_commit_lsn,
            metadata.end_lsn
        )));
    }
    Ok(Ok(content))
}

fn shown_lsn(lsn: Option<Lsn>) -> String {
    lsn.map_or_else(|| "none".to_owned(), |lsn| lsn.to_string())
}

/// The achieved RPO of one day, from the segments stored that day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DayCoverage {
    pub day: NaiveDate,
    /// Segments stored that day (repeats excepted).
    pub segments: usize,
    pub transactions: u64,
    pub changes: u64,
    /// The longest a commit waited to be stored in a segment: from a
    /// segment's first commit to its document being stored (the first
    /// commit waited longest), the worst of the day.
    pub achieved_rpo_seconds: i64,
    /// The segment that set it.
    pub worst_segment: String,
}

/// The achieved RPO per day (UTC) over the segments stored in
/// `[from, to)`, repeats left out (their commits were stored before).
/// A segment that overlaps an earlier one counts whole, so the figure is
/// an upper bound there.
pub fn coverage_per_day(
    segments: &[StoredSegment],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DayCoverage> {
    let readable: Vec<&SegmentMetadata> = segments.iter().filter_map(|s| s.metadata.as_ref()).collect();
    let repeats = continuity(readable.iter().copied()).repeats;
    let mut days: BTreeMap<NaiveDate, DayCoverage> = BTreeMap::new();
    for segment in segments {
        let Some(metadata) = &segment.metadata else {
            continue;
        };
        if segment.stored_at < from || segment.stored_at >= to || repeats.contains(&metadata.id) {
            continue;
        }
        let day = segment.stored_at.date_naive();
        let lag = (segment.stored_at - metadata.first_commit_time)
            .num_seconds()
            .max(0);
        let entry = days.entry(day).or_insert_with(|| DayCoverage {
            day,
            segments: 0,
            transactions: 0,
            changes: 0,
            achieved_rpo_seconds: 0,
            worst_segment: metadata.id.to_string(),
        });
        entry.segments += 1;
        entry.transactions += metadata.transactions;
        entry.changes += metadata.changes;
        if lag > entry.achieved_rpo_seconds {
            entry.achieved_rpo_seconds = lag;
            entry.worst_segment = metadata.id.to_string();
        }
    }
    days.into_values().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::container::Compression;

    fn segment(first: u64, millis: i64, start: u64, end: u64) -> SegmentMetadata {
        let at = DateTime::from_timestamp_millis(millis).unwrap();
        SegmentMetadata {
            id: SegmentId::new(Lsn(first), at),
            version: "test".into(),
            captured_at: at,
            slot: "s".into(),
            publication: "p".into(),
            start_lsn: Lsn(start),
            first_commit_lsn: Lsn(first),
            last_commit_lsn: Lsn(end - 8),
            end_lsn: Lsn(end),
            first_commit_time: at - chrono::Duration::seconds(5),
            last_commit_time: at - chrono::Duration::seconds(1),
            transactions: 2,
            changes: 3,
            messages: 7,
            tables: Vec::new(),
            published_tables: Vec::new(),
            catalog_fingerprint: "f".into(),
            partition_files: None,
            partitions_rewritten: Vec::new(),
            sequences: Vec::new(),
            key_id: "k".into(),
            compression: Compression::None,
            chunk_size: 1,
            size_bytes: 1,
            checksum: String::new(),
            payload_bytes: 1,
            repository_id: None,
            metadata_mac: None,
        }
    }

    #[test]
    fn a_repeated_capture_is_not_a_hole_and_a_missing_segment_is_named_by_its_lsns() {
        // Given three consecutive segments, a repeat of the second (a
        // capture killed before advancing the slot, then run again), and
        // one that overlaps the third and reaches further
        let a = segment(0x110, 1_000, 0x100, 0x200);
        let b = segment(0x210, 2_000, 0x200, 0x300);
        let b_again = segment(0x210, 2_500, 0x200, 0x300);
        let c = segment(0x310, 3_000, 0x300, 0x400);
        let c_longer = segment(0x310, 3_500, 0x300, 0x480);
        // When the chain is walked
        let whole = continuity([&a, &b, &b_again, &c, &c_longer]);
        // Then the repeat is a repeat, the overlap neither, and there is no hole
        assert_eq!(whole.repeats, vec![b_again.id.clone()]);
        assert!(whole.holes.is_empty());
        // When the second segment (and its repeat) is gone
        let holed = continuity([&c_longer, &a, &c]);
        // Then the hole is named with its LSN range and its neighbours
        assert_eq!(
            holed.holes,
            vec![Hole {
                from: Lsn(0x200),
                to: Lsn(0x300),
                after: Some(a.id.clone()),
                before: c.id.clone()
            }]
        );
        assert!(holed.holes[0].to_string().contains("from LSN 0/200 to 0/300"));
    }

    #[test]
    fn a_base_backup_needs_the_segments_from_its_position_on() {
        let a = segment(0x110, 1_000, 0x100, 0x200);
        let b = segment(0x210, 2_000, 0x200, 0x300);
        let c = segment(0x310, 3_000, 0x300, 0x400);
        // A base inside b needs b and c: present, no hole
        assert_eq!(first_hole_from([&a, &b, &c], Lsn(0x250)), None);
        // A base past every segment needs none yet
        assert_eq!(first_hole_from([&a, &b, &c], Lsn(0x500)), None);
        // Without b, a base inside it lacks from its own position on
        let hole = first_hole_from([&a, &c], Lsn(0x250)).unwrap();
        assert_eq!((hole.from, hole.to, hole.after), (Lsn(0x250), Lsn(0x300), None));
        // A base after the hole does not mind it
        assert_eq!(first_hole_from([&a, &c], Lsn(0x300)), None);
    }

    #[test]
    fn the_achieved_rpo_of_a_day_is_its_longest_wait_from_commit_to_stored() {
        let stored = |metadata: SegmentMetadata, seconds_after: i64| StoredSegment {
            key: metadata.id.metadata_key(),
            stored_at: metadata.captured_at + chrono::Duration::seconds(seconds_after),
            integrity: DocumentIntegrity::Authentic,
            metadata: Some(metadata),
            error: None,
        };
        let day = 86_400_000;
        let segments = vec![
            stored(segment(0x110, day + 1_000, 0x100, 0x200), 1),
            stored(segment(0x210, day + 60_000, 0x200, 0x300), 40),
            // The repeat was stored late, but its commits were safe already
            stored(segment(0x210, day + 70_000, 0x200, 0x300), 500),
            stored(segment(0x310, 2 * day + 1_000, 0x300, 0x400), 2),
        ];
        let all = coverage_per_day(
            &segments,
            DateTime::from_timestamp_millis(0).unwrap(),
            DateTime::from_timestamp_millis(10 * day).unwrap(),
        );
        assert_eq!(all.len(), 2);
        // 5 s from the first commit to the capture, plus 40 s to store
        assert_eq!((all[0].segments, all[0].achieved_rpo_seconds), (2, 45));
        assert_eq!(
            all[0].worst_segment,
            segments[1].key[8..].trim_end_matches(".json")
        );
        assert_eq!((all[1].segments, all[1].achieved_rpo_seconds), (1, 7));
    }
}
