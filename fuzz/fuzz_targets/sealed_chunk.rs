//! One sealed chunk: its length prefix and `open_chunk` on arbitrary bytes.
#![no_main]

use backup_core::envelope::{BackupKeys, ChunkPosition, chunk_ciphertext_len};
use backup_core::{KeyId, MasterKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let master = MasterKey::from_bytes(KeyId::new("fuzz").unwrap(), [7u8; 32]);
    let keys = BackupKeys::derive(&master, &[9u8; 32]);
    let _ = chunk_ciphertext_len(data);
    // The first byte picks the position, so seeds can carry a valid chunk.
    let Some((&at, sealed)) = data.split_first() else {
        return;
    };
    let position = ChunkPosition {
        section: u32::from(at & 0x0f),
        chunk: u64::from(at >> 4),
    };
    let mut sealed = sealed.to_vec();
    if let Ok((_flags, plaintext)) = keys.open_chunk(position, &mut sealed) {
        assert!(plaintext.len() < data.len());
    }
});
