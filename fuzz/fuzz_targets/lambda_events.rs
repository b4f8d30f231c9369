//! Every payload a function can be invoked with: EventBridge schedules and
//! S3 notifications, classic S3 events and console JSON, through each
//! function's parser.
#![no_main]

use backup_lambda::events::{parse_create, parse_prune, parse_restore, parse_verify, url_decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = url_decode(text);
    }
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = parse_create(payload.clone());
    let _ = parse_prune(payload.clone());
    let _ = parse_verify(payload.clone());
    let _ = parse_restore(payload);
});
