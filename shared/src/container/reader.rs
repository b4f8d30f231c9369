//! Container reader: random access by section, every byte authenticated.
//!
//! Opening a backup reads three small ranges (header, footer, trailer) and
//! checks that header, sections, trailer and footer tile the object exactly,
//! so there is no unaccounted byte anywhere. A section is then read from
//! its own byte range, so restoring one table downloads only that table.

use std::future::Future;
use std::io;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use super::{
    Compression, ContainerError, FOOTER_LEN, Footer, Header, MAX_HEADER_LEN, MAX_TRAILER_PLAIN_BYTES,
    SectionEntry, SectionKind, decode_trailer, integrity_failure,
};
use crate::envelope::{
    BackupKeys, CHUNK_PREFIX_LEN, ChunkPosition, FLAG_LAST_IN_CONTAINER, FLAG_LAST_IN_SECTION, MAC_LEN,
    chunk_ciphertext_len, max_ciphertext_len,
};
use crate::keyring::Keyring;

/// Size of the plaintext blocks a [`SectionReader`] hands out. Decompression
/// is bounded by it, so a highly compressible table cannot balloon memory.
const BLOCK_LEN: usize = 256 * 1024;

/// Something a stored backup object can be read from by byte range.
pub trait ObjectSource: Sync {
    /// `'static` so a section can be decoded on its own task, ahead of
    /// whatever consumes it.
    type Reader: AsyncRead + Unpin + Send + 'static;

    /// Total size of the object in bytes.
    fn size(&self) -> u64;

    /// A reader over `length` bytes starting at `offset`.
    fn read_range(&self, offset: u64, length: u64) -> impl Future<Output = io::Result<Self::Reader>> + Send;
}

impl ObjectSource for Bytes {
    type Reader = io::Cursor<Bytes>;

    fn size(&self) -> u64 {
        self.len() as u64
    }

    async fn read_range(&self, offset: u64, length: u64) -> io::Result<Self::Reader> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(usize::try_from(length).map_err(|_| io::ErrorKind::InvalidInput)?)
            .filter(|&end| end <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(io::Cursor::new(self.slice(start..end)))
    }
}

/// An opened, authenticated backup: header, keys and the section index.
#[derive(Debug)]
pub struct BackupReader<'s, S> {
    source: &'s S,
    header: Header,
    keys: BackupKeys,
    sections: Vec<SectionEntry>,
}

impl<'s, S: ObjectSource> BackupReader<'s, S> {
    /// Reads and authenticates the header, footer and trailer.
    pub async fn open(source: &'s S, keyring: &Keyring) -> Result<Self, ContainerError> {
        let size = source.size();
        let head_len = size.min(MAX_HEADER_LEN as u64);
        let head = read_fully(source, 0, head_len).await?;
        let (header, keys) = Header::open(&head, keyring)?;
        let header_len = header.encoded_len() as u64;
        if size < header_len + FOOTER_LEN as u64 {
            return Err(integrity_failure(
                "object too short for header and footer",
                None,
                None,
            ));
        }
        let footer_bytes = read_fully(source, size - FOOTER_LEN as u64, FOOTER_LEN as u64).await?;
        let footer = Footer::parse(&footer_bytes)?;
        let trailer_end = footer.trailer_offset.checked_add(footer.trailer_length);
        if footer.trailer_offset < header_len || trailer_end != Some(size - FOOTER_LEN as u64) {
            return Err(integrity_failure(
                "footer does not describe this object",
                None,
                None,
            ));
        }

        let trailer_entry = SectionEntry {
            part: 0,
            index: footer.trailer_section,
            kind: SectionKind::Schema,
            schema: None,
            name: "trailer".to_owned(),
            rows: 0,
            plain_bytes: 0,
            plain_sha256: String::new(),
            offset: footer.trailer_offset,
            length: footer.trailer_length,
            chunks: 0,
            copy_format: super::CopyFormat::Text,
        };
        let reader = source
            .read_range(trailer_entry.offset, trailer_entry.length)
            .await?;
        let mut trailer = SectionReader::new(reader, &header, keys.clone(), &trailer_entry, true)?;
        let mut text = Vec::new();
        while let Some(block) = trailer.next_block().await? {
            if (text.len() + block.len()) as u64 > MAX_TRAILER_PLAIN_BYTES {
                return Err(integrity_failure(
                    "trailer implausibly large",
                    Some(footer.trailer_section),
                    None,
                ));
            }
            text.extend_from_slice(&block);
        }
        let sections = decode_trailer(&text, &header)?;
        check_layout(&sections, header_len, &footer)?;
        Ok(Self {
            source,
            header,
            keys,
            sections,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The data sections (schema and tables), in the order they were written.
    pub fn sections(&self) -> &[SectionEntry] {
        &self.sections
    }

    /// The sections holding table `schema.name` (compared exactly), in part
    /// order; `None` when the backup does not hold the table.
    pub fn table(&self, schema: &str, name: &str) -> Option<TableSections<'_>> {
        let mut parts: Vec<&SectionEntry> = self
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::Table && s.schema.as_deref() == Some(schema) && s.name == name)
            .collect();
        parts.sort_by_key(|s| s.part);
        (!parts.is_empty()).then_some(TableSections { parts })
    }

    /// Streams a table's plaintext, part after part.
    pub fn open_table<'b>(&'b self, table: &TableSections<'_>) -> TableReader<'b, 's, S> {
        TableReader {
            backup: self,
            parts: table.parts.iter().map(|&p| p.clone()).collect(),
            next_part: 0,
            current: None,
        }
    }

    /// Streams one section's plaintext, reading only its byte range.
    pub async fn open_section(
        &self,
        entry: &SectionEntry,
    ) -> Result<SectionReader<S::Reader>, ContainerError> {
        if !self.sections.iter().any(|s| s == entry) {
            return Err(ContainerError::UnknownSection(entry.display_name()));
        }
        let reader = self.source.read_range(entry.offset, entry.length).await?;
        SectionReader::new(reader, &self.header, self.keys.clone(), entry, false)
    }
}

/// Streams one table's plaintext across its parts, in part order, opening
/// each part's byte range only when the one before it is done.
pub struct TableReader<'b, 's, S: ObjectSource> {
    backup: &'b BackupReader<'s, S>,
    parts: Vec<SectionEntry>,
    next_part: usize,
    current: Option<SectionReader<S::Reader>>,
}

impl<S: ObjectSource> TableReader<'_, '_, S> {
    /// The next block of plaintext, or `None` once every part has been read
    /// and verified.
    pub async fn next_block(&mut self) -> Result<Option<Bytes>, ContainerError> {
        loop {
            if let Some(section) = self.current.as_mut() {
                if let Some(block) = section.next_block().await? {
                    return Ok(Some(block));
                }
                self.current = None;
            }
            let Some(part) = self.parts.get(self.next_part) else {
                return Ok(None);
            };
            self.current = Some(self.backup.open_section(part).await?);
            self.next_part += 1;
        }
    }
}

/// One table's sections, in part order (a single one unless the backup was
/// exported over several connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSections<'a> {
    parts: Vec<&'a SectionEntry>,
}

impl<'a> TableSections<'a> {
    pub fn parts(&self) -> &[&'a SectionEntry] {
        &self.parts
    }

    pub fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// The COPY format of the table's parts: binary only if every part is
    /// (an exporter writes one format per table; a mix is read as text
    /// and refused by the server or by the comparison).
    pub fn copy_format(&self) -> super::CopyFormat {
        if !self.parts.is_empty()
            && self
                .parts
                .iter()
                .all(|p| p.copy_format == super::CopyFormat::Binary)
        {
            super::CopyFormat::Binary
        } else {
            super::CopyFormat::Text
        }
    }

    /// Uncompressed size of the table's COPY text.
    pub fn plain_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.plain_bytes).sum()
    }

    /// Stored (sealed) bytes of the table's sections.
    pub fn stored_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.length).sum()
    }

    /// `schema.name` for people.
    pub fn display_name(&self) -> String {
        self.parts[0].display_name()
    }
}

async fn read_fully<S: ObjectSource>(
    source: &S,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, ContainerError> {
    let mut reader = source.read_range(offset, length).await?;
    let mut bytes = Vec::with_capacity(length as usize);
    reader.read_to_end(&mut bytes).await?;
    if bytes.len() as u64 != length {
        return Err(integrity_failure("object shorter than it claims", None, None));
    }
    Ok(bytes)
}

/// Header, sections and trailer must tile the object with no gap or overlap.
fn check_layout(sections: &[SectionEntry], header_len: u64, footer: &Footer) -> Result<(), ContainerError> {
    let mut expected_offset = header_len;
    for (position, entry) in sections.iter().enumerate() {
        if entry.index as usize != position || entry.offset != expected_offset || entry.chunks == 0 {
            return Err(integrity_failure(
                "sections do not tile the object",
                Some(entry.index),
                None,
            ));
        }
        expected_offset = entry
            .offset
            .checked_add(entry.length)
            .ok_or_else(|| integrity_failure("section length overflows", Some(entry.index), None))?;
    }
    if expected_offset != footer.trailer_offset || footer.trailer_section as usize != sections.len() {
        return Err(integrity_failure(
            "trailer is not where the sections end",
            None,
            None,
        ));
    }
    Ok(())
}

/// Streams the authenticated, decompressed plaintext of one section.
///
/// Every chunk's MAC is verified before it is decrypted. The section is
/// accepted only when its last chunk carries the last-in-section flag, no
/// byte follows it in the range, and the plaintext's length and SHA-256
/// match the trailer. Until [`SectionReader::next_block`] has returned
/// `Ok(None)`, data already handed out must be treated as provisional (a
/// restore does so by loading inside a transaction).
pub struct SectionReader<R> {
    reader: R,
    keys: BackupKeys,
    index: u32,
    chunk_size: u32,
    is_trailer: bool,
    expected: Option<(u64, String, u64)>,
    next_chunk: u64,
    sealed: Vec<u8>,
    plain_start: usize,
    plain_end: usize,
    decoder: Option<ZstdDecoder<'static>>,
    decoder_may_hold_output: bool,
    frame_complete: bool,
    last_chunk_read: bool,
    done: bool,
    plain_hash: Sha256,
    plain_bytes: u64,
}

impl<R: AsyncRead + Unpin> SectionReader<R> {
    fn new(
        reader: R,
        header: &Header,
        keys: BackupKeys,
        entry: &SectionEntry,
        is_trailer: bool,
    ) -> Result<Self, ContainerError> {
        let decoder = match header.compression {
            Compression::None => None,
            Compression::Zstd { .. } => Some(ZstdDecoder::new().map_err(ContainerError::Compression)?),
        };
        Ok(Self {
            reader,
            keys,
            index: entry.index,
            chunk_size: header.chunk_size,
            is_trailer,
            expected: (!is_trailer).then(|| (entry.plain_bytes, entry.plain_sha256.clone(), entry.chunks)),
            next_chunk: 0,
            sealed: Vec::new(),
            plain_start: 0,
            plain_end: 0,
            decoder_may_hold_output: false,
            frame_complete: decoder.is_none(),
            decoder,
            last_chunk_read: false,
            done: false,
            plain_hash: Sha256::new(),
            plain_bytes: 0,
        })
    }

    /// The next block of plaintext, or `None` once the whole section has
    /// been read and verified.
    pub async fn next_block(&mut self) -> Result<Option<Bytes>, ContainerError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let pending_input = self.plain_end - self.plain_start;
            if pending_input > 0 || self.decoder_may_hold_output {
                if let Some(block) = self.produce_block()? {
                    self.plain_hash.update(&block);
                    self.plain_bytes += block.len() as u64;
                    return Ok(Some(block));
                }
                continue;
            }
            if self.last_chunk_read {
                self.finish_checks().await?;
                self.done = true;
                return Ok(None);
            }
            self.read_chunk().await?;
        }
    }

    /// Reads the rest of the section, discarding the plaintext; returns the
    /// number of plaintext bytes. For verification.
    pub async fn drain(&mut self) -> Result<u64, ContainerError> {
        while self.next_block().await?.is_some() {}
        Ok(self.plain_bytes)
    }

    fn produce_block(&mut self) -> Result<Option<Bytes>, ContainerError> {
        let input = &self.sealed[self.plain_start..self.plain_end];
        let Some(decoder) = self.decoder.as_mut() else {
            let block = Bytes::copy_from_slice(input);
            self.plain_start = self.plain_end;
            return Ok(Some(block));
        };
        let mut block = Vec::with_capacity(BLOCK_LEN);
        let mut in_buffer = InBuffer::around(input);
        let mut out_buffer = OutBuffer::around(&mut block);
        let hint = decoder
            .run(&mut in_buffer, &mut out_buffer)
            .map_err(|_| integrity_failure("compressed data does not decode", Some(self.index), None))?;
        let produced = out_buffer.pos();
        self.plain_start += in_buffer.pos();
        self.decoder_may_hold_output = produced == BLOCK_LEN;
        self.frame_complete = hint == 0;
        Ok((produced > 0).then(|| Bytes::from(block)))
    }

    async fn read_chunk(&mut self) -> Result<(), ContainerError> {
        let position = ChunkPosition {
            section: self.index,
            chunk: self.next_chunk,
        };
        let truncated = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                integrity_failure(
                    "section ends before its last chunk",
                    Some(position.section),
                    Some(position.chunk),
                )
            } else {
                ContainerError::Io(e)
            }
        };
        self.sealed.resize(CHUNK_PREFIX_LEN, 0);
        self.reader
            .read_exact(&mut self.sealed)
            .await
            .map_err(truncated)?;
        let ciphertext_len = chunk_ciphertext_len(&self.sealed);
        if ciphertext_len > max_ciphertext_len(self.chunk_size) || ciphertext_len == 0 {
            return Err(integrity_failure(
                "chunk length out of range",
                Some(position.section),
                Some(position.chunk),
            ));
        }
        self.sealed.resize(CHUNK_PREFIX_LEN + ciphertext_len + MAC_LEN, 0);
        self.reader
            .read_exact(&mut self.sealed[CHUNK_PREFIX_LEN..])
            .await
            .map_err(truncated)?;
        let (flags, plaintext_len) = {
            let (flags, plaintext) = self
                .keys
                .open_chunk(position, &mut self.sealed)
                .map_err(|fault| {
                    integrity_failure(fault.as_str(), Some(position.section), Some(position.chunk))
                })?;
            (flags, plaintext.len())
        };
        self.check_flags(flags, plaintext_len, position)?;
        self.plain_start = CHUNK_PREFIX_LEN;
        self.plain_end = CHUNK_PREFIX_LEN + plaintext_len;
        self.next_chunk += 1;
        Ok(())
    }

    fn check_flags(
        &mut self,
        flags: u8,
        plaintext_len: usize,
        at: ChunkPosition,
    ) -> Result<(), ContainerError> {
        let known = FLAG_LAST_IN_SECTION | FLAG_LAST_IN_CONTAINER;
        let last_in_section = flags & FLAG_LAST_IN_SECTION != 0;
        let last_in_container = flags & FLAG_LAST_IN_CONTAINER != 0;
        let valid = flags & !known == 0
            && (!last_in_container || last_in_section)
            && (last_in_container == (self.is_trailer && last_in_section))
            && (last_in_section || plaintext_len == self.chunk_size as usize);
        if !valid {
            return Err(integrity_failure(
                "chunk flags do not fit its place",
                Some(at.section),
                Some(at.chunk),
            ));
        }
        self.last_chunk_read = last_in_section;
        Ok(())
    }

    async fn finish_checks(&mut self) -> Result<(), ContainerError> {
        let mut extra = [0u8; 1];
        if self.reader.read(&mut extra).await? != 0 {
            return Err(integrity_failure(
                "bytes after the section's last chunk",
                Some(self.index),
                None,
            ));
        }
        if !self.frame_complete {
            return Err(integrity_failure(
                "compressed frame incomplete",
                Some(self.index),
                None,
            ));
        }
        if let Some((plain_bytes, sha256, chunks)) = &self.expected {
            let actual = hex::encode(std::mem::take(&mut self.plain_hash).finalize());
            if *plain_bytes != self.plain_bytes || *sha256 != actual || *chunks != self.next_chunk {
                return Err(integrity_failure(
                    "section digest differs from the trailer",
                    Some(self.index),
                    None,
                ));
            }
        }
        Ok(())
    }
}
