//! The metadata document stored beside each backup (untrusted: anyone who
//! can write the bucket can write it). What parses must write back in a
//! form that parses again, and from then on round-trips unchanged (the
//! first write may normalise, e.g. a timestamp to milliseconds).
#![no_main]

use backup_core::BackupMetadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(metadata) = BackupMetadata::from_json(data) {
        let written = BackupMetadata::from_json(metadata.to_json_pretty().as_bytes())
            .expect("metadata it wrote must parse again");
        let again = BackupMetadata::from_json(written.to_json_pretty().as_bytes())
            .expect("metadata it wrote must parse again");
        assert_eq!(written, again);
    }
});
