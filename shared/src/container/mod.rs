//! The backup container: one self-describing, authenticated object per backup.
//!
//! ```text
//! header ‖ section 0 ‖ section 1 ‖ … ‖ section n-1 ‖ trailer (section n) ‖ footer
//! ```
//!
//! * The **header** is plaintext (magic, format version, algorithms, chunk
//!   size, HKDF salt, key id, backup id) and ends with an HMAC over itself.
//! * Each **section** (the captured schema, then one per table) is an
//!   independent zstd frame cut into sealed chunks (see [`crate::envelope`]),
//!   so one table can be read from its byte range alone.
//! * The **trailer** is a section too: JSON lines listing every section's
//!   byte range, row count, plaintext size and SHA-256. Its last chunk is
//!   flagged last-in-container, so truncation anywhere is detected.
//! * The **footer** (28 bytes) points at the trailer for random access.
//!
//! The byte-level specification is `docs/FORMAT.md`.

mod reader;
mod writer;

pub use reader::{BackupReader, ObjectSource, SectionReader, TableReader, TableSections};
pub use writer::{
    ContainerSummary, ContainerWriter, PlainDigest, SEGMENT_LEN, SectionEncoder, SectionWriter,
};

use serde::{Deserialize, Serialize};

use crate::envelope::{BackupKeys, MAC_LEN, SALT_LEN};
use crate::keyring::{Keyring, KeyringError, MAX_KEY_ID_LEN};

pub const MAGIC: &[u8; 8] = b"PGBACKUP";
pub const FOOTER_MAGIC: &[u8; 8] = b"PGBKEND1";
/// Version 2 lets a table's rows span several sections (`part`), so two
/// connections can export at once; version 1 objects are still read.
/// Version 3 adds tables stored in COPY's binary format
/// ([`SectionEntry::copy_format`]); a container is written as 3 only when
/// it may hold one ([`ContainerOptions::table_copy_format`]), so a reader of
/// 2 refuses it by its version instead of loading binary rows as text.
pub const FORMAT_VERSION: u16 = 3;
/// The version of a container whose tables are all in COPY text format.
pub const TEXT_COPY_FORMAT_VERSION: u16 = 2;
/// The oldest format version readers accept.
pub const MIN_FORMAT_VERSION: u16 = 1;
/// AES-256-CBC with PKCS#7, random IV per chunk, HMAC-SHA256 encrypt-then-MAC.
pub const CIPHER_SUITE_AES256CBC_HMACSHA256: u8 = 1;
/// HKDF-SHA256 from the master key and the header's salt.
pub const KDF_HKDF_SHA256: u8 = 1;
pub const FOOTER_LEN: usize = 8 + 8 + 4 + 8;
/// Fixed part of the header before the key id.
const HEADER_FIXED_LEN: usize = 8 + 2 + 2 + 1 + 1 + 1 + 1 + 4 + SALT_LEN;
pub const MAX_BACKUP_ID_LEN: usize = 128;
pub const MAX_HEADER_LEN: usize = HEADER_FIXED_LEN + 1 + MAX_KEY_ID_LEN + 1 + MAX_BACKUP_ID_LEN + MAC_LEN;
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
pub const MIN_CHUNK_SIZE: u32 = 16;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Section indices stay far below any value whose bytes could be confused
/// with the header's magic in a MAC input.
pub const MAX_SECTIONS: u32 = 1 << 24;
/// Level 1 meets the 300 MB/s-per-core target on booking rows; level 3 is ~2.4%
/// smaller and ~30% slower (see the closing note of issue #2 and the benchmark).
pub const DEFAULT_ZSTD_LEVEL: i8 = 1;
/// The trailer is small (a line per section); anything larger is corrupt.
const MAX_TRAILER_PLAIN_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("reading or writing the backup stream failed")]
    Io(#[from] std::io::Error),
    #[error("this object is not a backup container (its first bytes are not the PGBACKUP magic)")]
    NotABackup,
    #[error(
        "this backup says it uses container format version {version}, which this build cannot read: it was written by a newer backupctl (use that), or its header is damaged (this is read before the header is authenticated)"
    )]
    UnsupportedFormatVersion { version: u16 },
    #[error(
        "this backup says it uses {what} algorithm id {id}, which this build does not know: it was written by a newer backupctl (use that), or its header is damaged (this is read before the header is authenticated)"
    )]
    UnsupportedAlgorithm { what: &'static str, id: u8 },
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Deliberately vague: never say which check failed or how close it came.
    #[error(
        "integrity check failed: the backup is damaged, truncated or altered, or the key does not match; do not trust or restore it, use another backup"
    )]
    Integrity,
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
    #[error("zstd compression failed")]
    Compression(#[source] std::io::Error),
    #[error("invalid container option: {0}")]
    InvalidOption(String),
    #[error("a section was started but never finished, so the backup is incomplete and was not sealed")]
    UnfinishedSection,
    #[error("the backup has no section for {0}")]
    UnknownSection(String),
}

/// Logs the precise reason for an integrity failure (no secrets involved)
/// and returns the deliberately vague error callers see.
pub(crate) fn integrity_failure(reason: &str, section: Option<u32>, chunk: Option<u64>) -> ContainerError {
    tracing::warn!(reason, section, chunk, "backup integrity check failed");
    ContainerError::Integrity
}

/// How section data is compressed before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd { level: i8 },
}

impl Compression {
    fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd { .. } => 1,
        }
    }

    fn level(self) -> i8 {
        match self {
            Self::None => 0,
            Self::Zstd { level } => level,
        }
    }

    fn from_header(id: u8, level: i8) -> Result<Self, ContainerError> {
        match id {
            0 => Ok(Self::None),
            1 => Ok(Self::Zstd { level }),
            other => Err(ContainerError::UnsupportedAlgorithm {
                what: "compression",
                id: other,
            }),
        }
    }

    pub fn is_compressed(self) -> bool {
        !matches!(self, Self::None)
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// Choices made when a container is written; all recorded in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerOptions {
    pub compression: Compression,
    pub chunk_size: u32,
    /// The COPY format tables are exported in where their column types
    /// allow it (`docs/FORMAT.md`); binary makes the container version 3.
    pub table_copy_format: CopyFormat,
}

impl Default for ContainerOptions {
    fn default() -> Self {
        Self {
            compression: Compression::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            table_copy_format: CopyFormat::Text,
        }
    }
}

/// How a table section's rows are encoded: PostgreSQL's COPY text format,
/// or its binary format (faster to write and to load, larger once
/// compressed; only for column types whose binary form is the same in
/// every database, see `postgres::export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormat {
    #[default]
    Text,
    Binary,
}

impl CopyFormat {
    pub fn is_text(&self) -> bool {
        *self == Self::Text
    }

    /// The option list of a `COPY` statement in this format, e.g. ` (FORMAT binary)`.
    pub fn copy_options(self, freeze: bool) -> &'static str {
        match (self, freeze) {
            (Self::Text, false) => "",
            (Self::Text, true) => " WITH (FREEZE)",
            (Self::Binary, false) => " WITH (FORMAT binary)",
            (Self::Binary, true) => " WITH (FORMAT binary, FREEZE)",
        }
    }
}

impl ContainerOptions {
    fn validate(&self) -> Result<(), ContainerError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(ContainerError::InvalidOption(format!(
                "chunk size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes",
                self.chunk_size
            )));
        }
        if let Compression::Zstd { level } = self.compression {
            let range = zstd::compression_level_range();
            if !range.contains(&i32::from(level)) {
                return Err(ContainerError::InvalidOption(format!(
                    "zstd level {level} is outside {}..={}",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(())
    }
}

/// The plaintext, authenticated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format_version: u16,
    pub compression: Compression,
    pub chunk_size: u32,
    pub salt: [u8; SALT_LEN],
    pub key_id: String,
    pub backup_id: String,
}

impl Header {
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN + 1 + self.key_id.len() + 1 + self.backup_id.len() + MAC_LEN
    }

    /// The header bytes, including the trailing HMAC computed with `keys`.
    fn encode(&self, keys: &BackupKeys) -> Vec<u8> {
        let total = self.encoded_len();
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.format_version.to_be_bytes());
        bytes.extend_from_slice(&u16::try_from(total).expect("header is short").to_be_bytes());
        bytes.push(CIPHER_SUITE_AES256CBC_HMACSHA256);
        bytes.push(KDF_HKDF_SHA256);
        bytes.push(self.compression.id());
        bytes.push(self.compression.level().to_be_bytes()[0]);
        bytes.extend_from_slice(&self.chunk_size.to_be_bytes());
        bytes.extend_from_slice(&self.salt);
        bytes.push(u8::try_from(self.key_id.len()).expect("key id length is checked"));
        bytes.extend_from_slice(self.key_id.as_bytes());
        bytes.push(u8::try_from(self.backup_id.len()).expect("backup id length is checked"));
        bytes.extend_from_slice(self.backup_id.as_bytes());
        let tag = keys.header_tag(&bytes);
        bytes.extend_from_slice(&tag);
        debug_assert_eq!(bytes.len(), total);
        bytes
    }

    /// Parses and authenticates a header from the first bytes of an object
    /// (at least the header; more is ignored). Returns the header and the
    /// backup's keys derived from the keyring's matching master key.
    pub fn open(bytes: &[u8], keyring: &Keyring) -> Result<(Self, BackupKeys), ContainerError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(ContainerError::NotABackup);
        }
        if bytes.len() < HEADER_FIXED_LEN + 2 + MAC_LEN {
            return Err(integrity_failure("object shorter than a header", None, None));
        }
        let format_version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&format_version) {
            return Err(ContainerError::UnsupportedFormatVersion {
                version: format_version,
            });
        }
        let header_len = usize::from(u16::from_be_bytes([bytes[10], bytes[11]]));
        let plausible = HEADER_FIXED_LEN + 2 + MAC_LEN..=MAX_HEADER_LEN;
        if header_len > bytes.len() || !plausible.contains(&header_len) {
            return Err(integrity_failure("header length out of range", None, None));
        }
        let header = &bytes[..header_len];
        if header[12] != CIPHER_SUITE_AES256CBC_HMACSHA256 {
            return Err(ContainerError::UnsupportedAlgorithm {
                what: "cipher suite",
                id: header[12],
            });
        }
        if header[13] != KDF_HKDF_SHA256 {
            return Err(ContainerError::UnsupportedAlgorithm {
                what: "key derivation",
                id: header[13],
            });
        }
        let compression = Compression::from_header(header[14], i8::from_be_bytes([header[15]]))?;
        let chunk_size = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&header[20..20 + SALT_LEN]);

        let body_end = header_len - MAC_LEN;
        let mut cursor = HEADER_FIXED_LEN;
        let key_id = read_short_string(header, &mut cursor, body_end)?;
        let backup_id = read_short_string(header, &mut cursor, body_end)?;
        if cursor != body_end {
            return Err(integrity_failure(
                "header fields do not fill the header",
                None,
                None,
            ));
        }

        let master = keyring.get(&key_id)?;
        let keys = BackupKeys::derive(master, &salt);
        keys.verify_header_tag(&header[..body_end], &header[body_end..])
            .map_err(|fault| integrity_failure(fault.as_str(), None, None))?;
        // Authenticated from here on; a bad chunk size is now a real option error.
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(integrity_failure("chunk size out of range", None, None));
        }
        Ok((
            Self {
                format_version,
                compression,
                chunk_size,
                salt,
                key_id,
                backup_id,
            },
            keys,
        ))
    }
}

fn read_short_string(header: &[u8], cursor: &mut usize, end: usize) -> Result<String, ContainerError> {
    let Some(&len) = header.get(*cursor) else {
        return Err(integrity_failure("header truncated", None, None));
    };
    let start = *cursor + 1;
    let stop = start + usize::from(len);
    if stop > end {
        return Err(integrity_failure("header string overruns header", None, None));
    }
    *cursor = stop;
    String::from_utf8(header[start..stop].to_vec())
        .map_err(|_| integrity_failure("header string is not UTF-8", None, None))
}

/// The last 28 bytes: where the trailer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub trailer_offset: u64,
    pub trailer_length: u64,
    pub trailer_section: u32,
}

impl Footer {
    fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut bytes = [0u8; FOOTER_LEN];
        bytes[..8].copy_from_slice(&self.trailer_offset.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.trailer_length.to_be_bytes());
        bytes[16..20].copy_from_slice(&self.trailer_section.to_be_bytes());
        bytes[20..].copy_from_slice(FOOTER_MAGIC);
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<Self, ContainerError> {
        if bytes.len() != FOOTER_LEN || &bytes[20..] != FOOTER_MAGIC {
            return Err(integrity_failure("footer missing or malformed", None, None));
        }
        let u64_at = |start: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[start..start + 8]);
            u64::from_be_bytes(word)
        };
        let trailer_offset = u64_at(0);
        let trailer_length = u64_at(8);
        let trailer_section = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        Ok(Self {
            trailer_offset,
            trailer_length,
            trailer_section,
        })
    }
}

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    /// The captured schema (DDL and catalog), used to recreate tables.
    Schema,
    /// One table's rows in PostgreSQL COPY format (text unless the entry's
    /// `copyFormat` says binary).
    Table,
    /// Every large object's bytes, framed per object (`docs/FORMAT.md`).
    LargeObjects,
    /// A change segment's captured logical changes (`docs/PITR.md`).
    Changes,
}

/// One line of the trailer: a section's place and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SectionEntry {
    pub index: u32,
    pub kind: SectionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub name: String,
    /// Rows as counted by the writer (COPY lines for tables).
    pub rows: u64,
    /// Uncompressed, unencrypted size of the section's data.
    pub plain_bytes: u64,
    /// Lowercase hex SHA-256 of the section's uncompressed data.
    pub plain_sha256: String,
    /// Byte range of the sealed section inside the object.
    pub offset: u64,
    pub length: u64,
    pub chunks: u64,
    /// Which part of its table this section holds, from 0. A table's rows
    /// are its parts' data concatenated in part order; parts need not be
    /// adjacent in the object (format version 2; absent means 0).
    #[serde(default, skip_serializing_if = "is_first_part")]
    pub part: u32,
    /// A table section's COPY format (format version 3; absent means text).
    /// A binary part is a whole binary COPY stream, header and end marker
    /// included, so each part is loaded with a COPY of its own.
    #[serde(default, skip_serializing_if = "CopyFormat::is_text")]
    pub copy_format: CopyFormat,
}

fn is_first_part(part: &u32) -> bool {
    *part == 0
}

impl SectionEntry {
    /// `schema.name` for people; not for parsing.
    pub fn display_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// First line of the trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrailerHead {
    format_version: u16,
    backup_id: String,
    section_count: u32,
}

fn encode_trailer(header: &Header, sections: &[SectionEntry]) -> Result<Vec<u8>, serde_json::Error> {
    let backup_id = header.backup_id.as_str();
    let head = TrailerHead {
        format_version: header.format_version,
        backup_id: backup_id.to_owned(),
        section_count: u32::try_from(sections.len()).expect("section count is bounded"),
    };
    let mut text = serde_json::to_vec(&head)?;
    text.push(b'\n');
    for entry in sections {
        serde_json::to_writer(&mut text, entry)?;
        text.push(b'\n');
    }
    Ok(text)
}

fn decode_trailer(text: &[u8], header: &Header) -> Result<Vec<SectionEntry>, ContainerError> {
    let mut lines = text.split(|&b| b == b'\n').filter(|line| !line.is_empty());
    let head: TrailerHead = lines
        .next()
        .and_then(|line| serde_json::from_slice(line).ok())
        .ok_or_else(|| integrity_failure("trailer head unreadable", None, None))?;
    if head.format_version != header.format_version || head.backup_id != header.backup_id {
        return Err(integrity_failure(
            "trailer does not belong to this header",
            None,
            None,
        ));
    }
    let sections: Vec<SectionEntry> = lines
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()
        .map_err(|_| integrity_failure("trailer entry unreadable", None, None))?;
    if sections.len() != head.section_count as usize {
        return Err(integrity_failure("trailer section count mismatch", None, None));
    }
    check_parts(&sections)?;
    Ok(sections)
}

/// Each table's parts are numbered 0, 1, … with none missing or repeated,
/// so no part of a table can go unnoticed.
fn check_parts(sections: &[SectionEntry]) -> Result<(), ContainerError> {
    let mut parts: std::collections::BTreeMap<(Option<&str>, &str), Vec<u32>> =
        std::collections::BTreeMap::new();
    for entry in sections.iter().filter(|s| s.kind == SectionKind::Table) {
        parts
            .entry((entry.schema.as_deref(), entry.name.as_str()))
            .or_default()
            .push(entry.part);
    }
    for numbers in parts.values_mut() {
        numbers.sort_unstable();
        if numbers.iter().enumerate().any(|(i, &part)| part as usize != i) {
            return Err(integrity_failure(
                "a table's parts are not numbered 0..n",
                None,
                None,
            ));
        }
    }
    if sections
        .iter()
        .any(|s| s.kind != SectionKind::Table && s.part != 0)
    {
        return Err(integrity_failure("a schema section claims a part", None, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_round_trips_and_rejects_a_bad_magic() {
        let footer = Footer {
            trailer_offset: 123_456,
            trailer_length: 789,
            trailer_section: 12,
        };
        let bytes = footer.encode();
        assert_eq!(Footer::parse(&bytes).unwrap(), footer);
        let mut damaged = bytes;
        damaged[FOOTER_LEN - 1] ^= 1;
        assert!(matches!(Footer::parse(&damaged), Err(ContainerError::Integrity)));
    }

    fn table_part(name: &str, part: u32) -> SectionEntry {
        SectionEntry {
            index: 0,
            kind: SectionKind::Table,
            schema: Some("public".into()),
            name: name.into(),
            rows: 1,
            plain_bytes: 1,
            plain_sha256: String::new(),
            offset: 0,
            length: 1,
            chunks: 1,
            part,
            copy_format: CopyFormat::Text,
        }
    }

    #[test]
    fn a_tables_parts_must_be_numbered_from_zero_without_gaps_or_repeats() {
        // Given parts written out of order by two connections, they are accepted
        let interleaved = [
            table_part("Booking", 1),
            table_part("User", 0),
            table_part("Booking", 0),
            table_part("Booking", 2),
        ];
        assert!(check_parts(&interleaved).is_ok());
        // A missing, repeated or lone later part is refused: rows would go missing or double
        for broken in [
            vec![table_part("Booking", 0), table_part("Booking", 2)],
            vec![table_part("Booking", 0), table_part("Booking", 0)],
            vec![table_part("Booking", 1)],
        ] {
            assert!(
                matches!(check_parts(&broken), Err(ContainerError::Integrity)),
                "{broken:?}"
            );
        }
        // The first part's number is left out of the trailer, so version 1 entries read as part 0
        let line = serde_json::to_string(&table_part("User", 0)).unwrap();
        assert!(!line.contains("part"));
        assert!(
            serde_json::to_string(&table_part("User", 3))
                .unwrap()
                .contains("\"part\":3")
        );
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let too_small = ContainerOptions {
            chunk_size: 8,
            ..Default::default()
        };
        assert!(too_small.validate().is_err());
        let bad_level = ContainerOptions {
            compression: Compression::Zstd { level: 99 },
            ..Default::default()
        };
        assert!(bad_level.validate().is_err());
        assert!(ContainerOptions::default().validate().is_ok());
    }
}
