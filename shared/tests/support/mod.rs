//! Helpers shared by the container test suites.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use backup_core::{
    BackupReader, ContainerError, ContainerOptions, ContainerSummary, ContainerWriter, KeyId, Keyring,
    MasterKey, SectionEntry, SectionKind,
};
use bytes::Bytes;

pub const TEST_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub fn test_key() -> MasterKey {
    MasterKey::from_hex(KeyId::new("test-key").unwrap(), TEST_KEY_HEX, "test").unwrap()
}

pub fn keyring_of(key: &MasterKey) -> Keyring {
    Keyring::single(key.clone())
}

pub struct PlannedSection<'a> {
    pub kind: SectionKind,
    pub schema: Option<&'a str>,
    pub name: &'a str,
    pub data: &'a [u8],
    /// Split the data into writes of this many bytes (exercises buffering).
    pub write_size: usize,
}

pub fn table<'a>(name: &'a str, data: &'a [u8]) -> PlannedSection<'a> {
    PlannedSection {
        kind: SectionKind::Table,
        schema: Some("public"),
        name,
        data,
        write_size: 4096,
    }
}

/// Writes a container into memory and returns its bytes and summary.
pub async fn write_container(
    key: &MasterKey,
    backup_id: &str,
    options: ContainerOptions,
    sections: &[PlannedSection<'_>],
) -> (Bytes, ContainerSummary) {
    let mut buffer = Vec::new();
    let summary = {
        let mut writer = ContainerWriter::create(&mut buffer, key, backup_id, options)
            .await
            .unwrap();
        for planned in sections {
            let mut section = writer
                .begin_section(planned.kind, planned.schema, planned.name)
                .unwrap();
            for piece in planned.data.chunks(planned.write_size.max(1)) {
                section.write(piece).await.unwrap();
            }
            let rows = planned.data.iter().filter(|&&b| b == b'\n').count() as u64;
            section.finish(rows).await.unwrap();
        }
        writer.finish().await.unwrap()
    };
    (Bytes::from(buffer), summary)
}

/// Opens the container and reads every section to the end, verifying all.
pub async fn read_everything(
    object: &Bytes,
    keyring: &Keyring,
) -> Result<Vec<(SectionEntry, Vec<u8>)>, ContainerError> {
    let reader = BackupReader::open(object, keyring).await?;
    let mut out = Vec::new();
    for entry in reader.sections() {
        let mut section = reader.open_section(entry).await?;
        let mut data = Vec::new();
        while let Some(block) = section.next_block().await? {
            data.extend_from_slice(&block);
        }
        out.push((entry.clone(), data));
    }
    Ok(out)
}

/// Byte offsets where each sealed chunk starts, plus the footer's offset,
/// found by walking the stored framing (flags ‖ ct_len ‖ iv ‖ ct ‖ mac).
pub fn chunk_starts(object: &[u8], header_len: usize) -> Vec<usize> {
    let footer_start = object.len() - 28;
    let mut starts = Vec::new();
    let mut at = header_len;
    while at < footer_start {
        starts.push(at);
        let ct_len = u32::from_be_bytes(object[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 21 + ct_len + 32;
    }
    assert_eq!(at, footer_start, "chunks tile the object up to the footer");
    starts
}
