//! The committed golden backup (format version 1) must always read.
//!
//! Regenerate only when the format version changes, never to make this
//! test pass: `GOLDEN_WRITE=1 cargo test -p backup-core --test golden -- --ignored`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;

use backup_core::{
    BackupMetadata, BackupRequest, Compression, ContainerOptions, SectionKind, SourceDatabase, Trigger,
};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use support::*;

const GOLDEN_ID: &str = "backup-1795658400000-0badc0de";
const SCHEMA: &str = "{\"note\":\"golden fixture schema section\",\"tables\":[\"Booking\",\"User\"]}\n";
const BOOKING: &str = "1\tWash & Wax\t2026-11-26 09:00:00+00\tconfirmed\t49.90\n\
2\tInterior \\\\ Deluxe\t2026-11-26 10:30:00+00\tcancelled\t\\N\n\
3\tNotes with\\ttab and\\nnewline\t2026-11-27 08:15:00+00\tpending\t0.00\n\
4\tÜnïcødé 🚗\tinfinity\tconfirmed\t123456789.123456789\n";
const USER: &str = "1\talice@example.com\tAlice\n2\tbob@example.com\t\\N\n";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected_sections() -> Vec<(SectionKind, &'static str, &'static str)> {
    vec![
        (SectionKind::Schema, "schema", SCHEMA),
        (SectionKind::Table, "Booking", BOOKING),
        (SectionKind::Table, "User", USER),
    ]
}

#[test]
fn the_golden_v1_backup_still_reads_and_matches_its_metadata() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            // Given the committed golden backup and its metadata
            let object = Bytes::from(std::fs::read(fixture_dir().join("golden-v1.backup")).unwrap());
            let metadata =
                BackupMetadata::from_json(&std::fs::read(fixture_dir().join("golden-v1.json")).unwrap())
                    .unwrap();

            // When it is checksummed and read with the fixed test key
            let checksum = backup_core::checksum::sha256_hex(&object);
            let sections = read_everything(&object, &keyring_of(&test_key())).await.unwrap();

            // Then the checksum and every section match what was written
            assert_eq!(metadata.id.to_string(), GOLDEN_ID);
            assert_eq!(checksum, metadata.checksum);
            assert_eq!(metadata.size_bytes, object.len() as u64);
            assert_eq!(metadata.record_count, 6);
            assert_eq!(sections.len(), expected_sections().len());
            for ((entry, data), (kind, name, text)) in sections.iter().zip(expected_sections()) {
                assert_eq!((entry.kind, entry.name.as_str()), (kind, name));
                assert_eq!(String::from_utf8(data.clone()).unwrap(), text);
            }
            assert_eq!(
                &metadata.sections,
                &sections.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>()
            );
        });
}

#[test]
#[ignore = "writes the golden fixture; run only when the format version changes"]
fn write_golden_fixture() {
    if std::env::var_os("GOLDEN_WRITE").is_none() {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let planned: Vec<PlannedSection> = expected_sections()
                .into_iter()
                .map(|(kind, name, text)| PlannedSection {
                    kind,
                    schema: (kind == SectionKind::Table).then_some("public"),
                    name,
                    data: text.as_bytes(),
                    write_size: 50,
                })
                .collect();
            let options = ContainerOptions {
                compression: Compression::Zstd { level: 3 },
                chunk_size: 64,
                ..ContainerOptions::default()
            };
            let (object, summary) = write_container(&test_key(), GOLDEN_ID, options, &planned).await;
            let metadata = BackupMetadata::describe(
                GOLDEN_ID.parse().unwrap(),
                Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap(),
                &summary,
                SourceDatabase {
                    database: "carwash".to_owned(),
                    server_version: "15.19".to_owned(),
                    host: None,
                },
                42,
                BackupRequest {
                    trigger: Trigger::Manual,
                    reason: Some("golden fixture".to_owned()),
                    requested_by: Some("tests".to_owned()),
                },
            );
            std::fs::write(fixture_dir().join("golden-v1.backup"), &object).unwrap();
            std::fs::write(fixture_dir().join("golden-v1.json"), metadata.to_json_pretty()).unwrap();
        });
}
