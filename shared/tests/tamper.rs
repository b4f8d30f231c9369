//! Tampering: any change to a stored backup is an integrity error — never
//! data, never a panic.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use backup_core::{Compression, ContainerError, ContainerOptions, KeyId, Keyring, KeyringError, MasterKey};
use bytes::Bytes;
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// A small-chunked container: schema section plus three tables, so every
/// region (header, each section's chunks, trailer, footer) is several chunks.
async fn sample() -> (Bytes, MasterKey, usize) {
    let key = test_key();
    let schema = br#"{"tables":["Booking","User","Service"]}"#.repeat(10);
    let booking: Vec<u8> = (0..400u64)
        .flat_map(|i| {
            let noise = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
            format!("{i}\t2026-11-{:02}\t{noise:016x}\tconfirmed\n", i % 28 + 1).into_bytes()
        })
        .collect();
    let user: Vec<u8> = (0..50)
        .flat_map(|i| format!("{i}\tuser{i}@example.com\n").into_bytes())
        .collect();
    let planned = [
        PlannedSection {
            kind: backup_core::SectionKind::Schema,
            schema: None,
            name: "schema",
            data: &schema,
            write_size: 100,
        },
        table("Booking", &booking),
        table("User", &user),
        table("Empty", b""),
    ];
    let options = ContainerOptions {
        compression: Compression::Zstd { level: 3 },
        chunk_size: 256,
        ..ContainerOptions::default()
    };
    let (object, _) = write_container(&key, "backup-1764122400000-0badc0de", options, &planned).await;
    let header_len = {
        let (header, _) = backup_core::container::Header::open(&object, &keyring_of(&key)).unwrap();
        header.encoded_len()
    };
    (object, key, header_len)
}

fn assert_rejected(result: Result<Vec<(backup_core::SectionEntry, Vec<u8>)>, ContainerError>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: tampered backup was accepted"),
        Err(
            ContainerError::Integrity
            | ContainerError::NotABackup
            | ContainerError::UnsupportedFormatVersion { .. }
            | ContainerError::UnsupportedAlgorithm { .. }
            | ContainerError::Keyring(KeyringError::UnknownKeyId { .. }),
        ) => {}
        Err(other) => panic!("{what}: unexpected error kind: {other:?}"),
    }
}

#[test]
fn the_untampered_sample_reads_back() {
    runtime().block_on(async {
        let (object, key, header_len) = sample().await;
        let sections = read_everything(&object, &keyring_of(&key)).await.unwrap();
        assert_eq!(sections.len(), 4);
        assert!(
            chunk_starts(&object, header_len).len() > 20,
            "sample has many chunks"
        );
    });
}

#[test]
fn flipping_any_single_bit_is_detected() {
    runtime().block_on(async {
        // Given a valid container and its regions
        let (object, key, header_len) = sample().await;
        let keyring = keyring_of(&key);
        let total_bits = object.len() * 8;
        // Sample: every bit of the header and footer, plus a stride over the rest
        let mut positions: Vec<usize> = (0..header_len * 8).collect();
        positions.extend((object.len() - 28) * 8..total_bits);
        let stride = (total_bits / 700).max(1);
        positions.extend((header_len * 8..(object.len() - 28) * 8).step_by(stride));
        // and the first and last bits of every chunk's framing and tag
        for start in chunk_starts(&object, header_len) {
            positions.extend([
                start * 8,
                start * 8 + 7,
                (start + 1) * 8,
                (start + 5) * 8 + 3,
                (start + 21) * 8,
            ]);
        }
        positions.sort_unstable();
        positions.dedup();
        assert!(positions.len() >= 500, "sampled {} positions", positions.len());

        // When each bit is flipped on its own, then the whole read fails cleanly
        for bit in positions {
            let mut damaged = object.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = read_everything(&Bytes::from(damaged), &keyring).await;
            assert_rejected(result, &format!("bit {bit} (byte {})", bit / 8));
        }
    });
}

#[test]
fn truncation_at_every_chunk_boundary_and_mid_chunk_is_detected() {
    runtime().block_on(async {
        let (object, key, header_len) = sample().await;
        let keyring = keyring_of(&key);
        let starts = chunk_starts(&object, header_len);
        let mut cuts = vec![
            0,
            1,
            8,
            header_len - 1,
            header_len,
            object.len() - 1,
            object.len() - 28,
        ];
        for pair in starts.windows(2) {
            cuts.push(pair[0]); // at a boundary
            cuts.push(pair[0] + 10); // inside the prefix
            cuts.push((pair[0] + pair[1]) / 2); // mid-chunk
            cuts.push(pair[1] - 1); // inside the tag
        }
        for cut in cuts {
            let result = read_everything(&object.slice(..cut), &keyring).await;
            assert_rejected(result, &format!("truncated to {cut} bytes"));
        }
    });
}

#[test]
fn swapping_two_chunks_is_detected() {
    runtime().block_on(async {
        let (object, key, header_len) = sample().await;
        let keyring = keyring_of(&key);
        let starts = chunk_starts(&object, header_len);
        let mut ends = starts[1..].to_vec();
        ends.push(object.len() - 28);
        // Swap every pair of adjacent chunks of equal length (same section
        // or neighbouring sections), and the first chunk with the last.
        let mut swaps = 0;
        for i in 0..starts.len() - 1 {
            let (a, b) = ((starts[i], ends[i]), (starts[i + 1], ends[i + 1]));
            if a.1 - a.0 != b.1 - b.0 {
                continue;
            }
            let mut damaged = object.to_vec();
            let first = object[a.0..a.1].to_vec();
            damaged.copy_within(b.0..b.1, a.0);
            damaged[b.0..b.1].copy_from_slice(&first);
            assert_rejected(
                read_everything(&Bytes::from(damaged), &keyring).await,
                &format!("swap chunk {i}"),
            );
            swaps += 1;
        }
        assert!(swaps >= 10, "only {swaps} swaps tried");
    });
}

#[test]
fn appended_bytes_are_detected() {
    runtime().block_on(async {
        let (object, key, _) = sample().await;
        let keyring = keyring_of(&key);
        let footer = object.slice(object.len() - 28..);
        for tail in [
            vec![0u8],
            b"trailing garbage".to_vec(),
            footer.to_vec(),
            object.to_vec(),
        ] {
            let mut damaged = object.to_vec();
            damaged.extend_from_slice(&tail);
            assert_rejected(
                read_everything(&Bytes::from(damaged), &keyring).await,
                "appended bytes",
            );
        }
    });
}

#[test]
fn a_wrong_key_is_an_integrity_error_and_an_unknown_key_id_says_so() {
    runtime().block_on(async {
        let (object, key, _) = sample().await;
        // Same key id, different key material
        let impostor = MasterKey::from_bytes(key.id().clone(), [0x42; 32]);
        let result = read_everything(&object, &Keyring::single(impostor)).await;
        assert!(matches!(result, Err(ContainerError::Integrity)), "{result:?}");
        // A keyring without the backup's key id
        let other = MasterKey::from_bytes(KeyId::new("other").unwrap(), [0x42; 32]);
        let result = read_everything(&object, &Keyring::single(other)).await;
        match result {
            Err(ContainerError::Keyring(KeyringError::UnknownKeyId { key_id })) => {
                assert_eq!(key_id, "test-key")
            }
            other => panic!("expected unknown key id, got {other:?}"),
        }
    });
}

#[test]
fn the_integrity_error_message_is_vague_and_contains_no_key() {
    let message = ContainerError::Integrity.to_string();
    assert!(message.contains("integrity check failed"));
    assert!(!message.contains(TEST_KEY_HEX));
    assert!(!message.to_lowercase().contains("mac mismatch"));
}

#[test]
fn random_garbage_is_not_a_backup() {
    runtime().block_on(async {
        let key = test_key();
        for garbage in [
            Bytes::new(),
            Bytes::from_static(b"PGBACKUP"),
            Bytes::from(vec![0u8; 4096]),
        ] {
            assert_rejected(read_everything(&garbage, &keyring_of(&key)).await, "garbage");
        }
    });
}
