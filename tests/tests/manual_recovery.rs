//! The hand-recovery recipe in docs/FORMAT.md works with stock tools
//! (bash, coreutils, openssl, zstd) on backups this software writes.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;

use backup_core::container::SectionEncoder;
use backup_core::{Compression, ContainerOptions, ContainerWriter, KeyId, MasterKey, SectionKind};

use integration_tests::recovery_recipe as recipe_script;

const KEY_HEX: &str = "5f0c3bd0a1e94d7c8b2a6e1f0d9c8b7a695847362514f3e2d1c0b9a897867564";

fn booking_rows(count: usize) -> Vec<u8> {
    let mut rows = Vec::new();
    for i in 0..count {
        let noise = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23);
        rows.extend_from_slice(
            format!(
                "{i}\t{noise:016x}\t2026-11-{:02} 09:00:00+00\tWash \\\\ Wax\t\\N\tconfirmed\n",
                i % 28 + 1
            )
            .as_bytes(),
        );
    }
    rows
}

fn recipe_key() -> MasterKey {
    MasterKey::from_hex(KeyId::new("ops-2026").unwrap(), KEY_HEX, "test").unwrap()
}

/// A container at `path` with its schema section written, 4 KiB chunks.
async fn begin_backup(path: &Path, compression: Compression, id: &str) -> ContainerWriter<tokio::fs::File> {
    let file = tokio::fs::File::create(path).await.unwrap();
    let options = ContainerOptions {
        compression,
        chunk_size: 4096,
        ..ContainerOptions::default()
    };
    let mut writer = ContainerWriter::create(file, &recipe_key(), id, options)
        .await
        .unwrap();
    let mut schema = writer.begin_section(SectionKind::Schema, None, "schema").unwrap();
    schema.write(b"CREATE TABLE \"Booking\" (...);\n").await.unwrap();
    schema.finish(0).await.unwrap();
    writer
}

async fn write_backup(path: &Path, compression: Compression, tables: &[(&str, &str, &[u8])]) {
    let mut writer = begin_backup(path, compression, "backup-1795658400000-feedbeef").await;
    for (schema_name, table, data) in tables {
        let mut section = writer
            .begin_section(SectionKind::Table, Some(schema_name), table)
            .unwrap();
        for piece in data.chunks(10_000) {
            section.write(piece).await.unwrap();
        }
        section
            .finish(data.iter().filter(|&&b| b == b'\n').count() as u64)
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
}

fn run_recipe(script: &Path, backup: &Path, table: &str, key: &str) -> std::process::Output {
    Command::new("bash")
        .arg(script)
        .env("BACKUP", backup)
        .env("MASTER_KEY", key)
        .env("TABLE", table)
        .output()
        .expect("bash runs")
}

#[tokio::test]
async fn the_documented_recipe_recovers_each_table_with_openssl_and_zstd() {
    // Given a backup with several tables, written by the library
    let dir = tempfile::tempdir().unwrap();
    let script = recipe_script(dir.path());
    let booking = booking_rows(3_000);
    let user = b"1\talice@example.com\n2\tbob@example.com\n".to_vec();
    let backup = dir.path().join("backup.backup");
    write_backup(
        &backup,
        Compression::default(),
        &[
            ("public", "Booking", &booking),
            ("public", "User", &user),
            ("public", "Empty", b""),
        ],
    )
    .await;

    // When the recipe from docs/FORMAT.md is run for each table
    for (table, expected) in [
        ("public.Booking", &booking),
        ("public.User", &user),
        ("public.Empty", &Vec::new()),
    ] {
        let output = run_recipe(&script, &backup, table, KEY_HEX);
        // Then it prints exactly the table's COPY data
        assert!(
            output.status.success(),
            "{table}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(&output.stdout == expected, "{table}: recovered data differs");
    }
    let schema = run_recipe(&script, &backup, "schema", KEY_HEX);
    assert!(schema.status.success());
    assert!(String::from_utf8_lossy(&schema.stdout).contains("CREATE TABLE"));
}

#[tokio::test]
async fn the_recipe_also_reads_uncompressed_backups() {
    let dir = tempfile::tempdir().unwrap();
    let script = recipe_script(dir.path());
    let booking = booking_rows(500);
    let backup = dir.path().join("plain.backup");
    write_backup(&backup, Compression::None, &[("public", "Booking", &booking)]).await;
    let output = run_recipe(&script, &backup, "public.Booking", KEY_HEX);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout == booking,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_recipe_refuses_a_wrong_key_a_damaged_chunk_and_an_unknown_table() {
    let dir = tempfile::tempdir().unwrap();
    let script = recipe_script(dir.path());
    let booking = booking_rows(2_000);
    let backup = dir.path().join("backup.backup");
    write_backup(
        &backup,
        Compression::default(),
        &[("public", "Booking", &booking)],
    )
    .await;

    // A wrong key fails at the header
    let wrong_key = "00".repeat(32);
    let output = run_recipe(&script, &backup, "public.Booking", &wrong_key);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("header authentication failed"));
    assert!(output.stdout.is_empty());

    // A flipped byte in the middle of the table's data fails its MAC and prints nothing
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).unwrap();
    let output = run_recipe(&script, &damaged, "public.Booking", KEY_HEX);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed authentication"));
    assert!(output.stdout.is_empty());

    // An unknown table is named, with the tables that exist
    let output = run_recipe(&script, &backup, "public.Nope", KEY_HEX);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"name\":\"Booking\""));
}

/// A footer that points at `section`: in place, or at a copy of that
/// section appended to the object (MACs bind chunks to section and chunk
/// numbers, not byte offsets, so the copy still authenticates).
fn forged_footer(original: &[u8], offset: u64, length: u64, index: u32, append: Option<&[u8]>) -> Vec<u8> {
    let mut forged = original[..original.len() - 28].to_vec();
    let offset = match append {
        Some(section) => {
            let at = forged.len() as u64;
            forged.extend_from_slice(section);
            at
        }
        None => offset,
    };
    forged.extend_from_slice(&offset.to_be_bytes());
    forged.extend_from_slice(&length.to_be_bytes());
    forged.extend_from_slice(&index.to_be_bytes());
    forged.extend_from_slice(b"PGBKEND1");
    forged
}

#[tokio::test]
async fn the_recipe_refuses_a_footer_pointed_at_a_table_section_whose_text_looks_like_a_trailer() {
    // Given a backup whose "Notes" table holds text shaped like trailer lines
    // naming a forged Booking section (an attacker who can write rows and
    // the bucket, but holds no key)
    let dir = tempfile::tempdir().unwrap();
    let script = recipe_script(dir.path());
    let booking = booking_rows(50);
    let notes = b"{\"formatVersion\":1,\"backupId\":\"x\",\"sectionCount\":2}\n\
{\"index\":1,\"kind\":\"table\",\"schema\":\"public\",\"name\":\"Booking\",\"rows\":1,\"plainBytes\":1,\"plainSha256\":\"00\",\"offset\":0,\"length\":1,\"chunks\":1}\n";
    let backup = dir.path().join("backup.backup");
    write_backup(
        &backup,
        Compression::None,
        &[("public", "Booking", &booking), ("public", "Notes", notes)],
    )
    .await;
    let original = std::fs::read(&backup).unwrap();
    let keyring = backup_core::Keyring::single(recipe_key());
    let bytes = bytes::Bytes::from(original.clone());
    let reader = backup_core::BackupReader::open(&bytes, &keyring).await.unwrap();
    let notes_section = reader
        .sections()
        .iter()
        .find(|s| s.name == "Notes")
        .unwrap()
        .clone();
    let range = notes_section.offset as usize..(notes_section.offset + notes_section.length) as usize;

    for (what, forged, says) in [
        (
            "a footer pointing at the Notes section in place",
            forged_footer(
                &original,
                notes_section.offset,
                notes_section.length,
                notes_section.index,
                None,
            ),
            "the footer does not describe the end of the file",
        ),
        (
            "a copy of the Notes section appended, with a footer pointing at it",
            forged_footer(
                &original,
                0,
                notes_section.length,
                notes_section.index,
                Some(&original[range.clone()]),
            ),
            "not the trailer",
        ),
    ] {
        let path = dir.path().join("forged.backup");
        std::fs::write(&path, &forged).unwrap();
        // When the recipe recovers Booking from it
        let output = run_recipe(&script, &path, "public.Booking", KEY_HEX);
        // Then it refuses, and prints nothing
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: the recipe accepted it");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(output.stdout.is_empty(), "{what}");
    }
}

#[tokio::test]
async fn the_recipe_joins_a_table_stored_in_parts_written_out_of_order() {
    // Given a backup whose Booking rows are in three parts, written 2, 0, 1
    // with another table between them, as two export connections leave them
    let dir = tempfile::tempdir().unwrap();
    let script = recipe_script(dir.path());
    let booking = booking_rows(3_000);
    let third = booking.len() / 3;
    let cut = |at: usize| at + booking[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let (first_end, second_end) = (cut(third), cut(2 * third));
    let parts = [
        &booking[..first_end],
        &booking[first_end..second_end],
        &booking[second_end..],
    ];
    let user = b"1\talice@example.com\n".to_vec();
    let backup = dir.path().join("parts.backup");
    let mut writer = begin_backup(&backup, Compression::default(), "backup-1795658400000-0badcafe").await;
    for (table, part, data) in [
        ("Booking", 2u32, parts[2]),
        ("Booking", 0, parts[0]),
        ("User", 0, &user[..]),
        ("Booking", 1, parts[1]),
    ] {
        let mut encoder = SectionEncoder::new(Compression::default()).unwrap();
        let mut encoded = Vec::new();
        encoder.encode(data, &mut encoded).unwrap();
        let digest = encoder.finish(&mut encoded).unwrap();
        let mut section = writer
            .begin_encoded_section(SectionKind::Table, Some("public"), table, part)
            .unwrap();
        section.write_encoded(&encoded).await.unwrap();
        let rows = data.iter().filter(|&&b| b == b'\n').count() as u64;
        section.finish_encoded(rows, digest).await.unwrap();
    }
    writer.finish().await.unwrap();

    // When the recipe recovers Booking
    let output = run_recipe(&script, &backup, "public.Booking", KEY_HEX);
    // Then it prints the whole table, its parts in order
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout == booking, "recovered data differs");
    let user_output = run_recipe(&script, &backup, "public.User", KEY_HEX);
    assert_eq!(user_output.stdout, user);

    // And the library reads the same rows back
    let bytes = bytes::Bytes::from(std::fs::read(&backup).unwrap());
    let reader =
        backup_core::BackupReader::open(&bytes, &backup_core::keyring::Keyring::single(recipe_key()))
            .await
            .unwrap();
    let table = reader.table("public", "Booking").unwrap();
    assert_eq!(table.parts().len(), 3);
    assert_eq!(table.rows(), 3_000);
    let mut read = Vec::new();
    let mut stream = reader.open_table(&table);
    while let Some(block) = stream.next_block().await.unwrap() {
        read.extend_from_slice(&block);
    }
    assert!(read == booking);
}
