//! The plaintext header, read before anything is authenticated.
#![no_main]

use backup_core::container::Header;
use backup_core::{KeyId, Keyring, MasterKey};
use libfuzzer_sys::fuzz_target;

/// The key of the golden fixture (`shared/tests/fixtures/golden-v1.backup`),
/// so seeds from it pass the header MAC and mutations explore past it.
const GOLDEN_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_hex(KeyId::new("test-key").unwrap(), GOLDEN_KEY_HEX, "fuzz").unwrap();
    let keyring = Keyring::single(key);
    if let Ok((header, _keys)) = Header::open(data, &keyring) {
        // Whatever opens must describe itself within the documented caps.
        assert!(header.encoded_len() <= backup_core::container::MAX_HEADER_LEN);
        assert!(header.encoded_len() <= data.len());
        assert!(header.backup_id.len() <= backup_core::container::MAX_BACKUP_ID_LEN);
    }
});
