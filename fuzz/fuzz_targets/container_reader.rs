//! The whole reader over arbitrary bytes: open, then stream every section.
//! Nothing may panic, and nothing unauthenticated may size an allocation
//! beyond the header cap (libFuzzer's -malloc_limit_mb enforces it).
#![no_main]

use backup_core::{BackupReader, KeyId, Keyring, MasterKey};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const GOLDEN_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_hex(KeyId::new("test-key").unwrap(), GOLDEN_KEY_HEX, "fuzz").unwrap();
    let keyring = Keyring::single(key);
    let object = Bytes::copy_from_slice(data);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let Ok(reader) = BackupReader::open(&object, &keyring).await else {
            return;
        };
        for entry in reader.sections() {
            let Ok(mut section) = reader.open_section(entry).await else {
                return;
            };
            loop {
                match section.next_block().await {
                    Ok(Some(block)) => assert!(block.len() <= 256 * 1024),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    });
});
