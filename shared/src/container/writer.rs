//! Streaming container writer: compress → encrypt → MAC → hash → sink.
//!
//! Memory stays bounded whatever the backup's size: plaintext collects in a
//! segment buffer of [`SEGMENT_LEN`] bytes, each full segment is compressed
//! in one shot into an independent zstd frame (contiguous input keeps zstd
//! on its fast path; independent frames could be compressed in parallel),
//! the compressed bytes are cut into chunks that are sealed and written to
//! the sink at once, and the SHA-256 of everything stored is computed on the
//! way out, never in a second pass.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{
    Compression, ContainerError, ContainerOptions, CopyFormat, FORMAT_VERSION, Footer, Header,
    MAX_BACKUP_ID_LEN, MAX_SECTIONS, SectionEntry, SectionKind, TEXT_COPY_FORMAT_VERSION, encode_trailer,
};
use crate::envelope::{BackupKeys, ChunkPosition, FLAG_LAST_IN_CONTAINER, FLAG_LAST_IN_SECTION, SALT_LEN};
use crate::keyring::MasterKey;

/// Plaintext bytes compressed together into one zstd frame. Not part of the
/// format: readers accept any number of frames per section.
pub const SEGMENT_LEN: usize = 2 << 20;

/// What was written, for the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// The container format version its header records.
    pub format_version: u16,
    pub backup_id: String,
    pub key_id: String,
    pub compression: Compression,
    pub chunk_size: u32,
    /// Size of the stored object in bytes.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the stored object.
    pub sha256: String,
    /// Data sections (schema and tables), not the trailer.
    pub sections: Vec<SectionEntry>,
}

/// Writes one container. Call [`ContainerWriter::finish`]: a writer dropped
/// without it leaves an object with no trailer, which every reader rejects.
pub struct ContainerWriter<W> {
    sink: W,
    keys: BackupKeys,
    header: Header,
    stored_bytes: u64,
    stored_hash: Sha256,
    sections: Vec<SectionEntry>,
    section_open: bool,
    outbox: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> ContainerWriter<W> {
    /// Starts a container for `backup_id`, encrypted under a fresh per-backup
    /// key derived from `master`, and writes its header.
    pub async fn create(
        sink: W,
        master: &MasterKey,
        backup_id: &str,
        options: ContainerOptions,
    ) -> Result<Self, ContainerError> {
        options.validate()?;
        if backup_id.is_empty() || backup_id.len() > MAX_BACKUP_ID_LEN {
            return Err(ContainerError::InvalidOption(format!(
                "backup id must be 1 to {MAX_BACKUP_ID_LEN} bytes"
            )));
        }
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(ContainerError::Randomness)?;
        let keys = BackupKeys::derive(master, &salt);
        let header = Header {
            format_version: match options.table_copy_format {
                CopyFormat::Text => TEXT_COPY_FORMAT_VERSION,
                CopyFormat::Binary => FORMAT_VERSION,
            },
            compression: options.compression,
            chunk_size: options.chunk_size,
            salt,
            key_id: master.id().as_str().to_owned(),
            backup_id: backup_id.to_owned(),
        };
        let mut writer = Self {
            sink,
            outbox: header.encode(&keys),
            keys,
            header,
            stored_bytes: 0,
            stored_hash: Sha256::new(),
            sections: Vec::new(),
            section_open: false,
        };
        writer.flush_outbox().await?;
        Ok(writer)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes stored so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Opens the next section. Only one section is open at a time; it must be
    /// finished with [`SectionWriter::finish`] before the next or before the
    /// container is finished.
    pub fn begin_section(
        &mut self,
        kind: SectionKind,
        schema: Option<&str>,
        name: &str,
    ) -> Result<SectionWriter<'_, W>, ContainerError> {
        let encoder = SectionEncoder::new(self.header.compression)?;
        self.open_section(kind, schema, name, 0, Some(encoder))
    }

    /// Opens a section whose plaintext a [`SectionEncoder`] turns into
    /// stored bytes elsewhere (e.g. on a blocking thread, while another
    /// section is being written): feed it with
    /// [`SectionWriter::write_encoded`] and end it with
    /// [`SectionWriter::finish_encoded`].
    pub fn begin_encoded_section(
        &mut self,
        kind: SectionKind,
        schema: Option<&str>,
        name: &str,
        part: u32,
    ) -> Result<SectionWriter<'_, W>, ContainerError> {
        self.open_section(kind, schema, name, part, None)
    }

    /// The COPY format this container may store tables in: binary only if
    /// it was created for it (its header then says format version 3).
    pub fn table_copy_format(&self) -> CopyFormat {
        if self.header.format_version >= FORMAT_VERSION {
            CopyFormat::Binary
        } else {
            CopyFormat::Text
        }
    }

    fn open_section(
        &mut self,
        kind: SectionKind,
        schema: Option<&str>,
        name: &str,
        part: u32,
        encoder: Option<SectionEncoder>,
    ) -> Result<SectionWriter<'_, W>, ContainerError> {
        if self.section_open {
            return Err(ContainerError::UnfinishedSection);
        }
        let index = u32::try_from(self.sections.len()).expect("bounded by MAX_SECTIONS");
        if index >= MAX_SECTIONS - 1 {
            return Err(ContainerError::InvalidOption(format!(
                "more than {} sections",
                MAX_SECTIONS - 1
            )));
        }
        self.section_open = true;
        SectionWriter::new(
            self,
            index,
            kind,
            schema.map(str::to_owned),
            name.to_owned(),
            part,
            encoder,
            0,
        )
    }

    /// Writes the trailer and footer, flushes, and returns the summary. The
    /// object is complete only once this returns `Ok`.
    pub async fn finish(mut self) -> Result<ContainerSummary, ContainerError> {
        if self.section_open {
            return Err(ContainerError::UnfinishedSection);
        }
        let trailer_text = encode_trailer(&self.header, &self.sections)
            .map_err(|e| ContainerError::InvalidOption(format!("trailer encoding: {e}")))?;
        let trailer_index = u32::try_from(self.sections.len()).expect("bounded by MAX_SECTIONS");
        self.section_open = true;
        let encoder = SectionEncoder::new(self.header.compression)?;
        let mut trailer = SectionWriter::new(
            &mut self,
            trailer_index,
            SectionKind::Schema,
            None,
            "trailer".to_owned(),
            0,
            Some(encoder),
            FLAG_LAST_IN_CONTAINER,
        )?;
        trailer.write(&trailer_text).await?;
        let trailer_entry = trailer.finish(0).await?;
        let footer = Footer {
            trailer_offset: trailer_entry.offset,
            trailer_length: trailer_entry.length,
            trailer_section: trailer_index,
        };
        self.outbox.extend_from_slice(&footer.encode());
        self.flush_outbox().await?;
        self.sink.flush().await?;
        self.sink.shutdown().await?;
        Ok(ContainerSummary {
            format_version: self.header.format_version,
            backup_id: self.header.backup_id.clone(),
            key_id: self.header.key_id.clone(),
            compression: self.header.compression,
            chunk_size: self.header.chunk_size,
            size_bytes: self.stored_bytes,
            sha256: hex::encode(self.stored_hash.finalize()),
            sections: self.sections,
        })
    }

    /// Hands the sink back without finishing, e.g. to abort an upload.
    pub fn into_sink(self) -> W {
        self.sink
    }

    async fn flush_outbox(&mut self) -> Result<(), ContainerError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        self.stored_hash.update(&self.outbox);
        self.sink.write_all(&self.outbox).await?;
        self.stored_bytes += self.outbox.len() as u64;
        self.outbox.clear();
        Ok(())
    }
}

/// What a section's plaintext was: counted and hashed where it was encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainDigest {
    pub plain_bytes: u64,
    pub plain_sha256: String,
}

/// Turns a section's plaintext into the bytes that get sealed: independent
/// zstd frames of up to [`SEGMENT_LEN`] plaintext bytes each (or the
/// plaintext itself when uncompressed), hashing the plaintext on the way.
/// Synchronous and `Send`, so the costly part of a backup can run on a
/// blocking thread while the container writes another section.
pub struct SectionEncoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Plaintext waiting to be compressed (compressed sections only).
    segment: Vec<u8>,
    plain_hash: Sha256,
    plain_bytes: u64,
}

impl SectionEncoder {
    pub fn new(compression: Compression) -> Result<Self, ContainerError> {
        let compressor = match compression {
            Compression::None => None,
            Compression::Zstd { level } => {
                Some(zstd::bulk::Compressor::new(i32::from(level)).map_err(ContainerError::Compression)?)
            }
        };
        Ok(Self {
            compressor,
            segment: Vec::new(),
            plain_hash: Sha256::new(),
            plain_bytes: 0,
        })
    }

    /// Takes plaintext; appends whatever is ready for sealing to `encoded`.
    pub fn encode(&mut self, mut data: &[u8], encoded: &mut Vec<u8>) -> Result<(), ContainerError> {
        self.plain_hash.update(data);
        self.plain_bytes += data.len() as u64;
        if self.compressor.is_none() {
            encoded.extend_from_slice(data);
            return Ok(());
        }
        // A batch of at least a segment's size, with nothing waiting before
        // it, becomes one frame compressed straight from the caller's
        // buffer: no copy of the plaintext into the segment (frames need
        // not be of equal size).
        if self.segment.is_empty() && data.len() >= SEGMENT_LEN {
            return compress_frame(self.compressor.as_mut(), data, encoded);
        }
        while !data.is_empty() {
            if self.segment.capacity() == 0 {
                self.segment.reserve_exact(SEGMENT_LEN);
            }
            let take = (SEGMENT_LEN - self.segment.len()).min(data.len());
            self.segment.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.segment.len() == SEGMENT_LEN {
                self.compress_segment(encoded)?;
            }
        }
        Ok(())
    }

    /// Flushes the last frame into `encoded` and returns the plaintext's digest.
    pub fn finish(mut self, encoded: &mut Vec<u8>) -> Result<PlainDigest, ContainerError> {
        // A compressed section always holds at least one frame, even if
        // empty, so that `zstd -d` accepts it.
        if self.compressor.is_some() && (!self.segment.is_empty() || self.plain_bytes == 0) {
            self.compress_segment(encoded)?;
        }
        Ok(PlainDigest {
            plain_bytes: self.plain_bytes,
            plain_sha256: hex::encode(self.plain_hash.finalize()),
        })
    }

    fn compress_segment(&mut self, encoded: &mut Vec<u8>) -> Result<(), ContainerError> {
        compress_frame(self.compressor.as_mut(), &self.segment, encoded)?;
        self.segment.clear();
        Ok(())
    }
}

/// Appends `plain` to `encoded` as one zstd frame (nothing without a compressor).
fn compress_frame(
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    plain: &[u8],
    encoded: &mut Vec<u8>,
) -> Result<(), ContainerError> {
    let Some(compressor) = compressor else {
        return Ok(());
    };
    let bound = zstd::zstd_safe::compress_bound(plain.len());
    if encoded.is_empty() {
        // Straight into the caller's buffer: no frame buffer kept per
        // section and no copy.
        encoded.reserve(bound);
        compressor
            .compress_to_buffer(plain, encoded)
            .map_err(ContainerError::Compression)?;
    } else {
        let mut frame = Vec::with_capacity(bound);
        compressor
            .compress_to_buffer(plain, &mut frame)
            .map_err(ContainerError::Compression)?;
        encoded.extend_from_slice(&frame);
    }
    Ok(())
}

/// Writes one section's data. [`SectionWriter::finish`] (or
/// [`SectionWriter::finish_encoded`]) must be called; a section dropped
/// without it makes the container refuse to finish.
pub struct SectionWriter<'c, W> {
    container: &'c mut ContainerWriter<W>,
    index: u32,
    kind: SectionKind,
    schema: Option<String>,
    name: String,
    part: u32,
    start_offset: u64,
    /// Present when this writer encodes the plaintext itself.
    encoder: Option<SectionEncoder>,
    /// Encoded bytes (compressed, or raw) waiting to be sealed.
    unsealed: Vec<u8>,
    next_chunk: u64,
    final_flags: u8,
    copy_format: CopyFormat,
}

impl<'c, W: AsyncWrite + Unpin> SectionWriter<'c, W> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        container: &'c mut ContainerWriter<W>,
        index: u32,
        kind: SectionKind,
        schema: Option<String>,
        name: String,
        part: u32,
        encoder: Option<SectionEncoder>,
        extra_final_flags: u8,
    ) -> Result<Self, ContainerError> {
        let chunk_size = container.header.chunk_size as usize;
        Ok(Self {
            start_offset: container.stored_bytes,
            container,
            index,
            kind,
            schema,
            name,
            part,
            encoder,
            unsealed: Vec::with_capacity(chunk_size),
            next_chunk: 0,
            final_flags: FLAG_LAST_IN_SECTION | extra_final_flags,
            copy_format: CopyFormat::Text,
        })
    }

    /// Records that this table section's rows are in COPY's binary format;
    /// refused unless the container was created for binary tables.
    pub fn store_as(&mut self, format: CopyFormat) -> Result<(), ContainerError> {
        if format == CopyFormat::Binary && self.container.table_copy_format() != CopyFormat::Binary {
            return Err(ContainerError::InvalidOption(
                "a binary COPY section in a container not created for binary tables".into(),
            ));
        }
        self.copy_format = format;
        Ok(())
    }

    /// Uncompressed bytes written to this section so far (0 for a section
    /// encoded elsewhere).
    pub fn plain_bytes(&self) -> u64 {
        self.encoder.as_ref().map_or(0, |e| e.plain_bytes)
    }

    /// Appends data to the section. Full chunks are sealed and written to the
    /// sink before this returns, so the caller's back-pressure is the sink's.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ContainerError> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(ContainerError::InvalidOption(
                "plaintext written to a section encoded elsewhere".into(),
            ));
        };
        encoder.encode(data, &mut self.unsealed)?;
        self.seal_full_chunks().await
    }

    /// Appends bytes a [`SectionEncoder`] produced for this section.
    pub async fn write_encoded(&mut self, encoded: &[u8]) -> Result<(), ContainerError> {
        if self.encoder.is_some() {
            return Err(ContainerError::InvalidOption(
                "encoded bytes written to a section that encodes its own plaintext".into(),
            ));
        }
        self.unsealed.extend_from_slice(encoded);
        self.seal_full_chunks().await
    }

    /// Ends the section, recording `rows` in the trailer, and returns its entry.
    pub async fn finish(mut self, rows: u64) -> Result<SectionEntry, ContainerError> {
        let Some(encoder) = self.encoder.take() else {
            return Err(ContainerError::InvalidOption(
                "a section encoded elsewhere ends with finish_encoded".into(),
            ));
        };
        let digest = encoder.finish(&mut self.unsealed)?;
        self.finish_inner(rows, digest).await
    }

    /// Ends a section encoded elsewhere, with its encoder's digest.
    pub async fn finish_encoded(
        self,
        rows: u64,
        digest: PlainDigest,
    ) -> Result<SectionEntry, ContainerError> {
        if self.encoder.is_some() {
            return Err(ContainerError::InvalidOption(
                "a section that encodes its own plaintext ends with finish".into(),
            ));
        }
        self.finish_inner(rows, digest).await
    }

    async fn finish_inner(mut self, rows: u64, digest: PlainDigest) -> Result<SectionEntry, ContainerError> {
        self.seal_full_chunks().await?;
        self.seal_chunk(self.final_flags, 0..self.unsealed.len())?;
        self.container.flush_outbox().await?;

        let entry = SectionEntry {
            index: self.index,
            kind: self.kind,
            schema: self.schema.take(),
            name: std::mem::take(&mut self.name),
            rows,
            plain_bytes: digest.plain_bytes,
            plain_sha256: digest.plain_sha256,
            offset: self.start_offset,
            length: self.container.stored_bytes - self.start_offset,
            chunks: self.next_chunk,
            part: self.part,
            copy_format: self.copy_format,
        };
        self.container.section_open = false;
        if self.final_flags & FLAG_LAST_IN_CONTAINER == 0 {
            self.container.sections.push(entry.clone());
        }
        Ok(entry)
    }

    /// Seals every full chunk waiting in `unsealed`, writing each at once.
    async fn seal_full_chunks(&mut self) -> Result<(), ContainerError> {
        let chunk_size = self.container.header.chunk_size as usize;
        let mut sealed_up_to = 0;
        while self.unsealed.len() - sealed_up_to >= chunk_size {
            self.seal_chunk(0, sealed_up_to..sealed_up_to + chunk_size)?;
            sealed_up_to += chunk_size;
            self.container.flush_outbox().await?;
        }
        if sealed_up_to > 0 {
            self.unsealed.drain(..sealed_up_to);
        }
        Ok(())
    }

    /// Seals `unsealed[range]` as the section's next chunk.
    fn seal_chunk(&mut self, flags: u8, range: std::ops::Range<usize>) -> Result<(), ContainerError> {
        let position = ChunkPosition {
            section: self.index,
            chunk: self.next_chunk,
        };
        self.container
            .keys
            .seal_chunk(position, flags, &self.unsealed[range], &mut self.container.outbox)
            .map_err(ContainerError::Randomness)?;
        self.next_chunk += 1;
        Ok(())
    }
}
