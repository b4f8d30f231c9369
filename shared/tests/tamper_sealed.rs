//! Tampering by someone who holds the key: containers whose every chunk is
//! validly sealed (so every MAC passes) but whose structure is wrong —
//! chunks deleted, duplicated, moved across sections or re-flagged, a
//! footer aimed at a data section, a trailer that lies. Each must be an
//! integrity error raised by the structural check meant for it (the reason
//! the reader logs is captured and compared), never data and never a panic.
//!
//! Bit flips and cuts (`tamper.rs`) only ever reach the MAC and the footer
//! parser; these reach the flag, truncation, tiling and digest logic.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use backup_core::container::Header;
use backup_core::envelope::{
    BackupKeys, ChunkPosition, FLAG_LAST_IN_CONTAINER, FLAG_LAST_IN_SECTION, chunk_ciphertext_len,
};
use backup_core::{
    Compression, ContainerError, ContainerOptions, Keyring, MasterKey, SectionEntry, SectionKind,
};
use bytes::Bytes;
use support::*;

const BACKUP_ID: &str = "backup-1764122400000-5ea1ed00";

/// One chunk as the key holder sees it: flags and plaintext.
#[derive(Clone, Debug)]
struct PlainChunk {
    flags: u8,
    plaintext: Vec<u8>,
}

/// A container taken apart: the header bytes, the backup's keys, each data
/// section's trailer entry and chunks, and the trailer's own chunks.
#[derive(Clone)]
struct Disassembled {
    header: Vec<u8>,
    keys: BackupKeys,
    entries: Vec<SectionEntry>,
    sections: Vec<Vec<PlainChunk>>,
    trailer: Vec<PlainChunk>,
}

/// How the forged container's trailer and footer are made.
#[derive(Clone, Copy)]
enum TrailerForgery {
    /// Rewrite offsets, lengths and chunk counts to fit the new layout
    /// (a careful attacker); sizes and digests stay as they were.
    FitLayout,
    /// Keep the original trailer chunks as they were sealed.
    Original,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

fn key() -> MasterKey {
    test_key()
}

/// Rows for a table: `rows` lines of incompressible-ish text.
fn rows(prefix: &str, rows: u64) -> Vec<u8> {
    (0..rows)
        .flat_map(|i| {
            let noise = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
            format!("{i}\t{prefix}-{noise:016x}\n").into_bytes()
        })
        .collect()
}

/// A container with a schema section and three tables, 64-byte chunks, so
/// every section has several chunks.
async fn sample(compression: Compression, backup_id: &str) -> Bytes {
    let schema = br#"{"tables":["Booking","User","Service"]}"#.repeat(4);
    let booking = rows("booking", 40);
    let user = rows("user", 12);
    let service = rows("service", 6);
    let planned = [
        PlannedSection {
            kind: SectionKind::Schema,
            schema: None,
            name: "schema",
            data: &schema,
            write_size: 50,
        },
        table("Booking", &booking),
        table("User", &user),
        table("Service", &service),
    ];
    let options = ContainerOptions {
        compression,
        chunk_size: 64,
        ..ContainerOptions::default()
    };
    write_container(&key(), backup_id, options, &planned).await.0
}

/// Takes a container apart into plaintext chunks with the key.
async fn disassemble(object: &Bytes) -> Disassembled {
    let keyring = keyring_of(&key());
    let (header, keys) = Header::open(object, &keyring).unwrap();
    let header_len = header.encoded_len();
    let reader = backup_core::BackupReader::open(object, &keyring).await.unwrap();
    let entries = reader.sections().to_vec();
    let trailer_offset = entries.last().map(|e| (e.offset + e.length) as usize).unwrap();

    let mut sections = Vec::new();
    for entry in &entries {
        let range = &object[entry.offset as usize..(entry.offset + entry.length) as usize];
        sections.push(open_chunks(&keys, entry.index, range));
    }
    let trailer_range = &object[trailer_offset..object.len() - 28];
    let trailer = open_chunks(&keys, entries.len() as u32, trailer_range);
    Disassembled {
        header: object[..header_len].to_vec(),
        keys,
        entries,
        sections,
        trailer,
    }
}

fn open_chunks(keys: &BackupKeys, section: u32, mut range: &[u8]) -> Vec<PlainChunk> {
    let mut chunks = Vec::new();
    while !range.is_empty() {
        let len = 21 + chunk_ciphertext_len(range) + 32;
        let mut sealed = range[..len].to_vec();
        let position = ChunkPosition {
            section,
            chunk: chunks.len() as u64,
        };
        let (flags, plaintext) = keys.open_chunk(position, &mut sealed).unwrap();
        chunks.push(PlainChunk {
            flags,
            plaintext: plaintext.to_vec(),
        });
        range = &range[len..];
    }
    chunks
}

fn seal_all(keys: &BackupKeys, section: u32, chunks: &[PlainChunk]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let position = ChunkPosition {
            section,
            chunk: i as u64,
        };
        keys.seal_chunk(position, chunk.flags, &chunk.plaintext, &mut out)
            .unwrap();
    }
    out
}

fn footer(offset: u64, length: u64, section: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&section.to_be_bytes());
    bytes.extend_from_slice(b"PGBKEND1");
    bytes
}

/// The trailer's plaintext (before compression) for these entries, of a
/// container written with tables in text format (the samples' header says so).
fn trailer_text(backup_id: &str, section_count: usize, entries: &[SectionEntry]) -> Vec<u8> {
    let head = serde_json::json!({
        "formatVersion": backup_core::container::TEXT_COPY_FORMAT_VERSION,
        "backupId": backup_id,
        "sectionCount": section_count,
    });
    let mut text = serde_json::to_vec(&head).unwrap();
    text.push(b'\n');
    for entry in entries {
        serde_json::to_writer(&mut text, entry).unwrap();
        text.push(b'\n');
    }
    text
}

/// Compresses (zstd, as the header says) and cuts into 64-byte chunks,
/// flagging the last one as the trailer's.
fn trailer_chunks(text: &[u8], compressed: bool) -> Vec<PlainChunk> {
    let data = if compressed {
        zstd::encode_all(text, 3).unwrap()
    } else {
        text.to_vec()
    };
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(64).collect()
    };
    // Only the last chunk may be short; it may also be full.
    let last = pieces.len() - 1;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| PlainChunk {
            flags: if i == last {
                FLAG_LAST_IN_SECTION | FLAG_LAST_IN_CONTAINER
            } else {
                0
            },
            plaintext: piece.to_vec(),
        })
        .collect()
}

impl Disassembled {
    /// Seals everything again at its (new) place and forges trailer and footer.
    fn assemble(&self, forgery: TrailerForgery, compressed: bool) -> Bytes {
        let mut object = self.header.clone();
        let mut entries = Vec::new();
        for (index, chunks) in self.sections.iter().enumerate() {
            let offset = object.len() as u64;
            object.extend_from_slice(&seal_all(&self.keys, index as u32, chunks));
            let mut entry = self
                .entries
                .get(index)
                .cloned()
                .unwrap_or_else(|| self.entries[0].clone());
            entry.index = index as u32;
            entry.offset = offset;
            entry.length = object.len() as u64 - offset;
            entry.chunks = chunks.len() as u64;
            entries.push(entry);
        }
        let trailer_index = self.sections.len() as u32;
        let trailer = match forgery {
            TrailerForgery::FitLayout => {
                trailer_chunks(&trailer_text(BACKUP_ID, entries.len(), &entries), compressed)
            }
            TrailerForgery::Original => self.trailer.clone(),
        };
        let trailer_offset = object.len() as u64;
        object.extend_from_slice(&seal_all(&self.keys, trailer_index, &trailer));
        let trailer_length = object.len() as u64 - trailer_offset;
        object.extend_from_slice(&footer(trailer_offset, trailer_length, trailer_index));
        Bytes::from(object)
    }

    fn with_entries(mut self, edit: impl FnOnce(&mut Vec<SectionEntry>)) -> Self {
        edit(&mut self.entries);
        self
    }
}

/// Reads everything while capturing the reasons the reader logs.
fn read_capturing(object: &Bytes) -> (Result<usize, ContainerError>, String) {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, || {
        runtime().block_on(async {
            read_everything(object, &keyring_of(&key()))
                .await
                .map(|sections| sections.len())
        })
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (result, logs)
}

/// Given a forged container, then it is refused as an integrity failure
/// for `reason` (one of them), and the MAC never was the reason.
fn assert_refused_for(object: &Bytes, reasons: &[&str], what: &str) {
    let (result, logs) = read_capturing(object);
    match result {
        Err(ContainerError::Integrity) => {}
        Ok(n) => panic!("{what}: a forged container was read as {n} sections"),
        Err(other) => panic!("{what}: unexpected error {other:?}"),
    }
    assert!(
        !logs.contains("MAC mismatch"),
        "{what}: every chunk was validly sealed, yet a MAC failed: {logs}"
    );
    assert!(
        reasons.iter().any(|reason| logs.contains(reason)),
        "{what}: refused, but not for {reasons:?}: {logs}"
    );
}

fn both_compressions() -> [(Compression, bool); 2] {
    [(Compression::Zstd { level: 3 }, true), (Compression::None, false)]
}

const BOOKING: usize = 1;
const USER: usize = 2;
const SERVICE: usize = 3;

#[test]
fn reassembling_an_untouched_container_reads_back_identically() {
    // Guards the forgery tools: if they were wrong, every refusal below
    // could come from them rather than from the reader.
    for (compression, compressed) in both_compressions() {
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let parts = runtime().block_on(disassemble(&object));
        assert!(parts.sections[BOOKING].len() >= 4, "Booking spans several chunks");
        let rebuilt = parts.assemble(TrailerForgery::FitLayout, compressed);
        let keyring = keyring_of(&key());
        let (original, again) = runtime().block_on(async {
            (
                read_everything(&object, &keyring).await.unwrap(),
                read_everything(&rebuilt, &keyring).await.unwrap(),
            )
        });
        assert_eq!(original, again);
        let (result, logs) = read_capturing(&rebuilt);
        assert_eq!(result.unwrap(), 4);
        assert!(logs.is_empty(), "{logs}");
    }
}

#[test]
fn a_chunk_deleted_from_the_middle_of_a_table_is_refused() {
    for (compression, compressed) in both_compressions() {
        // Given a container whose Booking section lost its second chunk,
        // every later chunk renumbered and sealed again
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        parts.sections[BOOKING].remove(1);
        // When the trailer is rewritten to fit, then the digest (or the
        // compressed frame) gives it away
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &[
                "section digest differs",
                "compressed data does not decode",
                "compressed frame incomplete",
            ],
            "deleted chunk, trailer fitted",
        );
        // and when the trailer is left alone, the layout does
        assert_refused_for(
            &parts.assemble(TrailerForgery::Original, compressed),
            &[
                "sections do not tile the object",
                "trailer is not where the sections end",
            ],
            "deleted chunk, original trailer",
        );
    }
}

#[test]
fn a_duplicated_chunk_is_refused() {
    for (compression, compressed) in both_compressions() {
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        let copy = parts.sections[BOOKING][1].clone();
        parts.sections[BOOKING].insert(2, copy);
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &[
                "section digest differs",
                "compressed data does not decode",
                "compressed frame incomplete",
            ],
            "duplicated chunk",
        );
    }
}

#[test]
fn a_table_cut_short_with_its_new_last_chunk_flagged_is_refused() {
    for (compression, compressed) in both_compressions() {
        // Given Booking's last chunk dropped and the one before flagged last
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        let booking = &mut parts.sections[BOOKING];
        booking.pop();
        booking.last_mut().unwrap().flags = FLAG_LAST_IN_SECTION;
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &["section digest differs", "compressed frame incomplete"],
            "table cut short",
        );
    }
}

#[test]
fn a_last_chunk_without_its_flag_is_refused() {
    for (compression, compressed) in both_compressions() {
        // Given Booking's short last chunk sealed without the last flag,
        // the reader sees a short chunk that claims more follow
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        assert!(
            parts.sections[BOOKING].last().unwrap().plaintext.len() < 64,
            "Booking ends on a short chunk"
        );
        parts.sections[BOOKING].last_mut().unwrap().flags = 0;
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &["chunk flags do not fit its place"],
            "last flag removed",
        );
        // and the same with a full chunk appended after the unflagged one
        // is refused when the section's range runs out
        let mut parts = runtime().block_on(disassemble(&object));
        let booking = &mut parts.sections[BOOKING];
        booking.last_mut().unwrap().flags = 0;
        booking.last_mut().unwrap().plaintext.resize(64, b'x');
        // (compressed, the padding does not decode before the range ends)
        let reasons: &[&str] = if compressed {
            &[
                "section ends before its last chunk",
                "compressed data does not decode",
            ]
        } else {
            &["section ends before its last chunk"]
        };
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            reasons,
            "section without a last chunk",
        );
    }
}

#[test]
fn a_chunk_after_the_last_one_of_a_section_is_refused() {
    for (compression, compressed) in both_compressions() {
        // Given an extra chunk sealed after Booking's flagged last chunk
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        let extra = PlainChunk {
            flags: FLAG_LAST_IN_SECTION,
            plaintext: b"99\tinjected\n".to_vec(),
        };
        parts.sections[BOOKING].push(extra);
        // (the chunk count in the trailer fits; the bytes after the last
        // chunk are what must be caught)
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &["bytes after the section's last chunk"],
            "chunk after the last",
        );
    }
}

#[test]
fn the_container_flag_anywhere_but_the_trailer_end_is_refused() {
    for (compression, compressed) in both_compressions() {
        // A data section's last chunk claiming to end the container
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        parts.sections[USER].last_mut().unwrap().flags = FLAG_LAST_IN_SECTION | FLAG_LAST_IN_CONTAINER;
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &["chunk flags do not fit its place"],
            "container flag on a table",
        );
        // The trailer's last chunk without it (a trailer cut where a
        // section ends)
        let parts = runtime().block_on(disassemble(&object));
        let mut trailer = trailer_chunks(&trailer_text(BACKUP_ID, 4, &parts.entries), compressed);
        trailer.last_mut().unwrap().flags = FLAG_LAST_IN_SECTION;
        let mut forged = parts.clone();
        forged.trailer = trailer;
        assert_refused_for(
            &forged.assemble(TrailerForgery::Original, compressed),
            &["chunk flags do not fit its place"],
            "trailer without the container flag",
        );
        // An unknown flag bit
        let mut parts = runtime().block_on(disassemble(&object));
        parts.sections[SERVICE][0].flags |= 0b100;
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &["chunk flags do not fit its place"],
            "unknown flag bit",
        );
    }
}

#[test]
fn a_footer_pointing_at_a_data_section_is_refused() {
    for (compression, _) in both_compressions() {
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let parts = runtime().block_on(disassemble(&object));
        // Given the object cut after Booking and a footer calling Booking
        // the trailer (its text column is attacker-chosen data)
        let booking = &parts.entries[BOOKING];
        let end = (booking.offset + booking.length) as usize;
        let mut forged = object[..end].to_vec();
        forged.extend_from_slice(&footer(booking.offset, booking.length, BOOKING as u32));
        assert_refused_for(
            &Bytes::from(forged),
            &["chunk flags do not fit its place"],
            "footer at a table",
        );
        // and even with Booking's last chunk re-flagged as the container's
        // last, its rows do not parse as a trailer
        let mut reflagged = parts.clone();
        reflagged.sections.truncate(BOOKING + 1);
        reflagged.sections[BOOKING].last_mut().unwrap().flags = FLAG_LAST_IN_SECTION | FLAG_LAST_IN_CONTAINER;
        let mut object = reflagged.header.clone();
        for (index, chunks) in reflagged.sections.iter().enumerate() {
            object.extend_from_slice(&seal_all(&reflagged.keys, index as u32, chunks));
        }
        let offset = reflagged.entries[BOOKING].offset;
        let length = object.len() as u64 - offset;
        object.extend_from_slice(&footer(offset, length, BOOKING as u32));
        assert_refused_for(
            &Bytes::from(object),
            &["trailer head unreadable", "compressed data does not decode"],
            "footer at a re-flagged table",
        );
    }
}

#[test]
fn first_and_last_chunks_swapped_across_sections_are_refused() {
    for (compression, compressed) in both_compressions() {
        // Given Booking's first chunk and User's last chunk exchanged, each
        // sealed again at its new place with the flags of its new place
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        let booking_first = parts.sections[BOOKING][0].plaintext.clone();
        let user_last = parts.sections[USER].last().unwrap().plaintext.clone();
        parts.sections[BOOKING][0].plaintext = user_last;
        parts.sections[USER].last_mut().unwrap().plaintext = booking_first;
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &[
                "chunk flags do not fit its place",
                "section digest differs",
                "compressed data does not decode",
                "compressed frame incomplete",
            ],
            "first/last swap re-sealed",
        );
        // and the same swap with the flags carried along: Booking now ends
        // after its first chunk, with its own chunks left over
        let mut parts = runtime().block_on(disassemble(&object));
        let booking_first = parts.sections[BOOKING][0].clone();
        let user_last = parts.sections[USER].last().unwrap().clone();
        parts.sections[BOOKING][0] = user_last;
        *parts.sections[USER].last_mut().unwrap() = booking_first;
        // (compressed, a frame's tail does not decode as its start)
        let reasons: &[&str] = if compressed {
            &[
                "bytes after the section's last chunk",
                "compressed data does not decode",
            ]
        } else {
            &["bytes after the section's last chunk"]
        };
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            reasons,
            "first/last swap with flags",
        );
    }
}

#[test]
fn whole_sections_exchanged_are_refused_by_their_digests() {
    for (compression, compressed) in both_compressions() {
        // Given User's and Service's data exchanged (each sealed at the
        // other's index) while the trailer keeps their names and digests
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let mut parts = runtime().block_on(disassemble(&object));
        parts.sections.swap(USER, SERVICE);
        assert_refused_for(
            &parts.assemble(TrailerForgery::FitLayout, compressed),
            &["section digest differs"],
            "sections exchanged",
        );
    }
}

#[test]
fn a_chunk_spliced_from_another_backup_is_refused() {
    // Given two backups under the same master key
    let (object, other, mine, theirs) = runtime().block_on(async {
        let object = sample(Compression::Zstd { level: 3 }, BACKUP_ID).await;
        let other = sample(Compression::Zstd { level: 3 }, "backup-1764126000000-0be7bac0").await;
        let mine = disassemble(&object).await;
        let theirs = disassemble(&other).await;
        (object, other, mine, theirs)
    });
    {
        // When the other's sealed Booking chunk 1 replaces ours byte for byte
        let sealed_range = |parts: &Disassembled, object: &Bytes| {
            let entry = &parts.entries[BOOKING];
            let start = entry.offset as usize;
            let first = 21 + chunk_ciphertext_len(&object[start..]) + 32;
            let second = 21 + chunk_ciphertext_len(&object[start + first..]) + 32;
            start + first..start + first + second
        };
        let (ours, foreign) = (sealed_range(&mine, &object), sealed_range(&theirs, &other));
        assert_eq!(ours.len(), foreign.len());
        let mut spliced = object.to_vec();
        spliced[ours].copy_from_slice(&other[foreign]);
        // Then its MAC fails: the other backup's keys differ (own salt)
        let (result, logs) = read_capturing(&Bytes::from(spliced));
        assert!(matches!(result, Err(ContainerError::Integrity)), "{result:?}");
        assert!(logs.contains("MAC mismatch"), "{logs}");
    }
}

#[test]
fn a_trailer_that_lies_is_refused() {
    for (compression, compressed) in both_compressions() {
        let object = runtime().block_on(sample(compression, BACKUP_ID));
        let parts = runtime().block_on(disassemble(&object));
        let forge_trailer = |text: Vec<u8>| {
            let mut forged = parts.clone();
            forged.trailer = trailer_chunks(&text, compressed);
            forged.assemble(TrailerForgery::Original, compressed)
        };
        // Another backup's id in the trailer head
        assert_refused_for(
            &forge_trailer(trailer_text("backup-1764126000000-0therbac", 4, &parts.entries)),
            &["trailer does not belong to this header"],
            "trailer of another backup",
        );
        // A section count that does not match its lines
        assert_refused_for(
            &forge_trailer(trailer_text(BACKUP_ID, 3, &parts.entries)),
            &["trailer section count mismatch"],
            "section count",
        );
        // A section dropped from the list (User vanishes from the index)
        let mut fewer = parts.entries.clone();
        fewer.remove(USER);
        assert_refused_for(
            &forge_trailer(trailer_text(BACKUP_ID, 3, &fewer)),
            &["sections do not tile the object"],
            "section hidden from the index",
        );
        // Sections listed out of order
        let mut reordered = parts.entries.clone();
        reordered.swap(USER, SERVICE);
        assert_refused_for(
            &forge_trailer(trailer_text(BACKUP_ID, 4, &reordered)),
            &["sections do not tile the object"],
            "sections out of order",
        );
        // A digest that does not match the data
        let lying = parts.clone().with_entries(|entries| {
            entries[USER].plain_sha256 = "00".repeat(32);
        });
        assert_refused_for(
            &lying.assemble(TrailerForgery::FitLayout, compressed),
            &["section digest differs"],
            "digest",
        );
        // A row count is not checked by the reader (rows are a display
        // figure); a byte count is
        let lying = parts.clone().with_entries(|entries| {
            entries[USER].plain_bytes += 1;
        });
        assert_refused_for(
            &lying.assemble(TrailerForgery::FitLayout, compressed),
            &["section digest differs"],
            "plain bytes",
        );
        // Garbage instead of JSON
        assert_refused_for(
            &forge_trailer(b"not json\n".to_vec()),
            &["trailer head unreadable"],
            "garbage trailer",
        );
    }
}

#[test]
fn a_forged_container_under_another_master_key_is_refused_by_the_header() {
    // Given a container fully re-forged by someone with a different key
    // but the same key id
    let (object, parts) = runtime().block_on(async {
        let object = sample(Compression::Zstd { level: 3 }, BACKUP_ID).await;
        let parts = disassemble(&object).await;
        (object, parts)
    });
    let impostor = MasterKey::from_bytes(key().id().clone(), [0x5a; 32]);
    {
        let (header, _) = Header::open(&object, &keyring_of(&key())).unwrap();
        let impostor_keys = BackupKeys::derive(&impostor, &header.salt);
        let mut forged = parts.clone();
        forged.keys = impostor_keys;
        let bytes = forged.assemble(TrailerForgery::FitLayout, true);
        // Then the header tag (made with the real key) no longer matches
        // the chunks, and the reader stops at the first chunk it reads
        let (result, logs) = read_capturing(&bytes);
        assert!(matches!(result, Err(ContainerError::Integrity)), "{result:?}");
        assert!(logs.contains("MAC mismatch"), "{logs}");
        // and a keyring holding only the impostor opens nothing either
        let result = runtime().block_on(read_everything(&bytes, &Keyring::single(impostor)));
        assert!(matches!(result, Err(ContainerError::Integrity)), "{result:?}");
    }
}
