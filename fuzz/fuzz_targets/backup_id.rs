//! Backup ids arrive in object keys, S3 events and console payloads.
//! What parses must print back to exactly the same text, and its storage
//! keys must stay inside `backups/` and `metadata/`.
#![no_main]

use backup_core::BackupId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<BackupId>() {
        assert_eq!(id.to_string(), text);
        let object_key = id.object_key();
        let metadata_key = id.metadata_key();
        assert!(object_key.starts_with("backups/") && !object_key.contains(".."));
        assert!(metadata_key.starts_with("metadata/") && !metadata_key.contains(".."));
        assert_eq!(object_key.matches('/').count(), 1);
    }
});
