//! The keyring secret as Secrets Manager or the environment hands it over.
//! Besides never panicking, an error must never echo a run of 32 or more
//! hex digits from the input: that would be key material in a log.
#![no_main]

use backup_core::Keyring;
use libfuzzer_sys::fuzz_target;

fn hex_runs(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|run| run.len() >= 32)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(secret) = std::str::from_utf8(data) else {
        return;
    };
    match Keyring::from_secret_string(secret, "BACKUP_ENCRYPTION_KEY") {
        Ok(keyring) => {
            let shown = format!("{keyring:?} {:?}", keyring.current());
            for run in hex_runs(secret) {
                assert!(!shown.contains(&run[..32]), "Debug shows key material: {shown}");
            }
        }
        Err(error) => {
            let message = error.to_string();
            for run in hex_runs(secret) {
                assert!(!message.contains(&run[..32]), "error echoes key material: {message}");
            }
        }
    }
});
