//! Round trips: whatever goes into a container comes out identical.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use backup_core::{Compression, ContainerOptions, SectionKind};
use proptest::prelude::*;
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// Sizes that stress the chunk logic for a given chunk size.
fn interesting_size(chunk: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(chunk - 1),
        Just(chunk),
        Just(chunk + 1),
        Just(3 * chunk),
        0usize..(8 * chunk),
        (3usize << 20)..(5usize << 20),
    ]
}

fn options_strategy() -> impl Strategy<Value = ContainerOptions> {
    (
        prop_oneof![Just(16u32), Just(64), Just(1000), Just(4096), Just(65536)],
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Zstd { level: 1 }),
            Just(Compression::Zstd { level: 3 }),
            // zstd's fast levels (BACKUP_COMPRESSION_LEVEL -7 to -1)
            Just(Compression::Zstd { level: -5 })
        ],
    )
        .prop_map(|(chunk_size, compression)| ContainerOptions {
            compression,
            chunk_size,
            ..ContainerOptions::default()
        })
}

/// Data that is partly compressible (repeated rows) and partly not (noise).
fn data_of(size: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if compressible {
            out.extend_from_slice(
                format!("{}\tWash & Wax\t{}\tconfirmed\n", state % 10_000, state % 97).as_bytes(),
            );
        } else {
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out.truncate(size);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_section_reads_back_byte_for_byte(
        (options, sizes) in options_strategy().prop_flat_map(|options| {
            (Just(options), proptest::collection::vec(interesting_size(options.chunk_size as usize), 1..4))
        }),
        seed in any::<u64>(),
        compressible in any::<bool>(),
        write_size in prop_oneof![Just(1usize), Just(7), Just(4096), Just(1 << 20)],
    ) {
        // Given sections of awkward sizes for this chunk size
        let datas: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                // keep 1-byte writes to small sections so the suite stays fast
                let size = if write_size == 1 { size.min(64 * 1024) } else { size };
                data_of(size, seed.wrapping_add(i as u64), compressible)
            })
            .collect();
        let names: Vec<String> = (0..datas.len()).map(|i| format!("Table{i}")).collect();
        let planned: Vec<PlannedSection> = datas
            .iter()
            .zip(&names)
            .map(|(data, name)| PlannedSection { write_size, ..table(name, data) })
            .collect();
        let key = test_key();

        // When they are written to a container and read back
        let read = runtime().block_on(async {
            let (object, summary) = write_container(&key, "backup-1-00000000", options, &planned).await;
            assert_eq!(summary.size_bytes, object.len() as u64);
            assert_eq!(summary.sha256, backup_core::checksum::sha256_hex(&object));
            read_everything(&object, &keyring_of(&key)).await
        }).unwrap();

        // Then every section comes back identical, in order, with its digest
        prop_assert_eq!(read.len(), datas.len());
        for ((entry, data), original) in read.iter().zip(&datas) {
            prop_assert_eq!(entry.kind, SectionKind::Table);
            prop_assert_eq!(entry.plain_bytes, original.len() as u64);
            prop_assert_eq!(&entry.plain_sha256, &backup_core::checksum::sha256_hex(original));
            prop_assert!(data == original, "section {} differs", entry.name);
        }
    }
}

/// Records every byte range a reader asks for.
struct RecordingSource {
    object: bytes::Bytes,
    ranges: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl backup_core::ObjectSource for RecordingSource {
    type Reader = std::io::Cursor<bytes::Bytes>;

    fn size(&self) -> u64 {
        self.object.len() as u64
    }

    async fn read_range(&self, offset: u64, length: u64) -> std::io::Result<Self::Reader> {
        self.ranges.lock().unwrap().push((offset, length));
        self.object.read_range(offset, length).await
    }
}

#[test]
fn reading_one_table_fetches_only_its_own_byte_range() {
    runtime().block_on(async {
        // Given a backup of three tables
        let key = test_key();
        let (booking, user, service) = (
            data_of(300_000, 1, true),
            data_of(5_000, 2, true),
            data_of(70_000, 3, false),
        );
        let planned = [
            table("Booking", &booking),
            table("User", &user),
            table("Service", &service),
        ];
        let (object, _) =
            write_container(&key, "backup-2-00000000", ContainerOptions::default(), &planned).await;
        let source = RecordingSource {
            object,
            ranges: Default::default(),
        };

        // When only the User table is read
        let reader = backup_core::BackupReader::open(&source, &keyring_of(&key))
            .await
            .unwrap();
        let index_reads = source.ranges.lock().unwrap().len();
        let entry = reader.table("public", "User").unwrap().parts()[0].clone();
        let mut section = reader.open_section(&entry).await.unwrap();
        let mut data = Vec::new();
        while let Some(block) = section.next_block().await.unwrap() {
            data.extend_from_slice(&block);
        }

        // Then it is intact, and besides header, footer and trailer the
        // reader fetched exactly the User section's bytes
        assert_eq!(data, user);
        let ranges = source.ranges.lock().unwrap().clone();
        assert_eq!(index_reads, 3, "header, footer, trailer");
        assert_eq!(&ranges[3..], &[(entry.offset, entry.length)]);
        let fetched: u64 = ranges.iter().map(|(_, len)| len).sum();
        assert!(
            fetched < source.object.len() as u64 / 4,
            "fetched {fetched} of {}",
            source.object.len()
        );
    });
}

#[test]
fn an_unfinished_section_prevents_sealing_the_container() {
    runtime().block_on(async {
        // Given a section that was begun and dropped without finish()
        let key = test_key();
        let mut writer = backup_core::ContainerWriter::create(
            Vec::new(),
            &key,
            "backup-3-00000000",
            ContainerOptions::default(),
        )
        .await
        .unwrap();
        {
            let mut section = writer
                .begin_section(SectionKind::Table, Some("public"), "Booking")
                .unwrap();
            section.write(b"1\tpartial\n").await.unwrap();
        }
        // When the container is finished / another section begun
        let next = writer
            .begin_section(SectionKind::Table, Some("public"), "User")
            .map(|_| ());
        let finished = writer.finish().await;
        // Then both are refused: a half-written backup is never sealed
        assert!(matches!(
            next,
            Err(backup_core::ContainerError::UnfinishedSection)
        ));
        assert!(matches!(
            finished,
            Err(backup_core::ContainerError::UnfinishedSection)
        ));
    });
}
