//! pgoutput messages arrive from the database's replication slot at
//! capture, and from stored segments at replay: whatever the bytes, the
//! decoder returns a message or an error, never panics, and never
//! allocates by a length it has not seen the bytes for.
#![no_main]

use backup_core::changes::pgoutput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = pgoutput::decode(data) {
        // A decoded message has the type byte it started with.
        assert_eq!(message.tag(), data[0]);
    }
});
