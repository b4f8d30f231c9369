//! The metadata document: the user's field names exactly, and a lossless round trip.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use backup_core::metadata::{VerificationDepth, VerificationRecord, VerificationStatus};
use backup_core::{
    BackupId, BackupMetadata, BackupRequest, Compression, ContainerSummary, SectionEntry, SectionKind,
    SourceDatabase, Trigger,
};
use chrono::{TimeZone, Utc};

fn sample_metadata() -> BackupMetadata {
    let started = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap();
    let section = |index: u32, kind, schema: Option<&str>, name: &str, rows: u64| SectionEntry {
        index,
        kind,
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
        rows,
        plain_bytes: rows * 100,
        plain_sha256: "ab".repeat(32),
        offset: 100 + u64::from(index) * 1000,
        length: 1000,
        chunks: 1,
        part: 0,
        copy_format: Default::default(),
    };
    let summary = ContainerSummary {
        format_version: 2,
        backup_id: "backup-1795658400000-1a2b3c4d".to_owned(),
        key_id: "k2".to_owned(),
        compression: Compression::Zstd { level: 3 },
        chunk_size: 1 << 20,
        size_bytes: 4_128,
        sha256: "cd".repeat(32),
        sections: vec![
            section(0, SectionKind::Schema, None, "schema", 0),
            section(1, SectionKind::Table, Some("public"), "Booking", 120),
            section(2, SectionKind::Table, Some("public"), "User", 30),
            section(3, SectionKind::Table, Some("audit"), "Event", 5),
        ],
    };
    BackupMetadata::describe(
        "backup-1795658400000-1a2b3c4d".parse().unwrap(),
        started,
        &summary,
        SourceDatabase {
            database: "carwash".to_owned(),
            server_version: "15.19".to_owned(),
            host: None,
        },
        1_234,
        BackupRequest {
            trigger: Trigger::PreDeployment,
            reason: Some("release 2.4".to_owned()),
            requested_by: Some("ops@carwash.example".to_owned()),
        },
    )
}

#[test]
fn the_users_original_fields_appear_with_exactly_their_names_and_meaning() {
    // Given metadata for a three-table backup
    let metadata = sample_metadata();
    // When it is serialized
    let json: serde_json::Value = serde_json::from_str(&metadata.to_json_pretty()).unwrap();
    // Then the original eight fields are there, named and typed as before
    assert_eq!(json["id"], "backup-1795658400000-1a2b3c4d");
    assert_eq!(json["timestamp"], "2026-11-26T02:00:00.000Z");
    assert!(json["version"].is_string());
    assert_eq!(
        json["tables"],
        serde_json::json!(["Booking", "User", "audit.Event"])
    );
    assert_eq!(json["recordCount"], 155);
    assert_eq!(json["checksum"], "cd".repeat(32));
    assert_eq!(json["encrypted"], true);
    assert_eq!(json["compressed"], true);
    // and ours beside them
    for field in [
        "formatVersion",
        "sizeBytes",
        "keyId",
        "source",
        "durationMs",
        "trigger",
        "reason",
        "requestedBy",
        "sections",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    assert_eq!(json["trigger"], "pre-deployment");
    assert_eq!(json["sections"][1]["plainSha256"], "ab".repeat(32));
    assert_eq!(json["source"]["serverVersion"], "15.19");
}

#[test]
fn metadata_round_trips_through_json_including_a_verification_record() {
    let mut metadata = sample_metadata();
    metadata.verification = Some(VerificationRecord {
        status: VerificationStatus::Passed,
        depth: VerificationDepth::Deep,
        verified_at: Utc.with_ymd_and_hms(2026, 11, 26, 2, 5, 0).unwrap(),
        duration_ms: 9_000,
        restore_duration_ms: Some(7_500),
        error: None,
        drill: None,
    });
    let text = metadata.to_json_pretty();
    let back = BackupMetadata::from_json(text.as_bytes()).unwrap();
    assert_eq!(back, metadata);
    assert!(text.contains("\"restoreDurationMs\": 7500"));
}

#[test]
fn backup_ids_are_validated_and_name_their_storage_keys() {
    let id: BackupId = "backup-1795658400000-1a2b3c4d".parse().unwrap();
    assert_eq!(id.unix_ms(), 1_795_658_400_000);
    assert_eq!(id.object_key(), "backups/backup-1795658400000-1a2b3c4d.backup");
    assert_eq!(id.metadata_key(), "metadata/backup-1795658400000-1a2b3c4d.json");
    for bad in [
        "",
        "backup-",
        "backup-123",
        "backup-123-1A2B3C4D",
        "backup-123-1a2b3c4",
        "backup-12x-1a2b3c4d",
        "backup-1-1a2b3c4d/../../etc",
        "../backup-1-1a2b3c4d",
        // a second spelling of backup-0-0badc0de (found by the backup_id
        // fuzz target: it named other storage keys than it was given)
        "backup-00-0badc0de",
        "backup-01795658400000-1a2b3c4d",
    ] {
        assert!(bad.parse::<BackupId>().is_err(), "{bad:?} accepted");
    }
    assert_eq!("backup-0-0badc0de".parse::<BackupId>().unwrap().unix_ms(), 0);
    let fresh = BackupId::new(Utc::now()).unwrap();
    assert_eq!(fresh.to_string().parse::<BackupId>().unwrap(), fresh);
    assert!(serde_json::from_str::<BackupId>("\"backup-1-zzzzzzzz\"").is_err());
}
