//! Master keys and the keyring that holds them.
//!
//! A master key never touches backup data directly: every backup derives its
//! own data and MAC keys from a master key and a random salt (see
//! [`crate::envelope`]). The keyring maps key ids to master keys so that
//! backups written before a rotation still decrypt after it.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of a master key in bytes (AES-256 strength).
pub const MASTER_KEY_LEN: usize = 32;
/// Longest key id the container header can record.
pub const MAX_KEY_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "{source_name} is not a valid key: expected 64 hexadecimal characters (32 bytes), as printed by `backupctl keys generate` or `openssl rand -hex 32`"
    )]
    MalformedKey { source_name: String },
    #[error(
        "key id {key_id} is not usable: use 1 to {MAX_KEY_ID_LEN} characters from A-Z a-z 0-9 . _ -, with no run of 32 hex digits (that would be key material)"
    )]
    MalformedKeyId { key_id: ShownId },
    #[error(
        "a key id in the keyring secret looks like a key (it holds 32 or more hex digits in a row), so it is not shown: were an id and its key swapped? The shape is {{\"keys\": {{\"<id>\": \"<64 hex>\"}}}}"
    )]
    KeyIdLooksLikeKey,
    #[error("the keyring secret names key id {key_id} twice; each id must appear once")]
    DuplicateKeyId { key_id: ShownId },
    #[error(
        "the keyring secret is neither a 64-hex-character key nor JSON like {{\"current\": \"k2\", \"keys\": {{\"k1\": \"<64 hex>\", \"k2\": \"<64 hex>\"}}}}"
    )]
    MalformedKeyringSecret,
    #[error("the keyring names {current} as its current key but has no key with that id")]
    CurrentKeyMissing { current: ShownId },
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
    #[error(
        "this backup was encrypted with key id {key_id:?}, which is not in the configured keyring; add that key (old keys stay needed after a rotation)"
    )]
    UnknownKeyId { key_id: String },
}

/// A key id as an error may show it: in full when short, otherwise only its
/// length (an over-long "id" is likely a key pasted in the wrong place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownId(String);

impl ShownId {
    const SHOWN_LEN: usize = 24;

    pub fn of(id: &str) -> Self {
        if id.chars().count() <= Self::SHOWN_LEN && !looks_like_key(id) {
            Self(format!("{id:?}"))
        } else {
            Self(format!("<{} characters, not shown>", id.chars().count()))
        }
    }
}

impl fmt::Display for ShownId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A run of 32 or more hex digits anywhere: key material (a key, or a key
/// with something stuck to it), never to be echoed or used as an id.
fn looks_like_key(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .any(|run| run.len() >= 32)
}

/// Identifier of a master key, recorded in every backup header.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn new(id: impl Into<String>) -> Result<Self, KeyringError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= MAX_KEY_ID_LEN
            && !looks_like_key(&id)
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(id))
        } else {
            Err(KeyringError::MalformedKeyId {
                key_id: ShownId::of(&id),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A 256-bit master key. Zeroized on drop; its `Debug` shows only the id.
#[derive(Clone)]
pub struct MasterKey {
    id: KeyId,
    secret: Zeroizing<[u8; MASTER_KEY_LEN]>,
}

impl MasterKey {
    /// Parses a key from 64 hex characters. `source_name` names where the key
    /// came from (an environment variable, a secret) for the error message;
    /// the key itself never appears in an error.
    pub fn from_hex(id: KeyId, hex_key: &str, source_name: &str) -> Result<Self, KeyringError> {
        let mut secret = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        let trimmed = hex_key.trim();
        if trimmed.len() != MASTER_KEY_LEN * 2 || hex::decode_to_slice(trimmed, secret.as_mut()).is_err() {
            return Err(KeyringError::MalformedKey {
                source_name: source_name.to_owned(),
            });
        }
        Ok(Self { id, secret })
    }

    /// A key whose id is derived from the key itself (`k-` and 8 hex digits of
    /// an HMAC of a fixed label). Used for a bare key from
    /// `BACKUP_ENCRYPTION_KEY`, so that a backup made with a different key is
    /// reported as "unknown key id" rather than as tampering.
    pub fn from_hex_with_fingerprint_id(hex_key: &str, source_name: &str) -> Result<Self, KeyringError> {
        let placeholder = KeyId("fingerprint-pending".to_owned());
        let mut key = Self::from_hex(placeholder, hex_key, source_name)?;
        key.id = KeyId(format!("k-{}", key.fingerprint()));
        Ok(key)
    }

    pub fn from_bytes(id: KeyId, bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self {
            id,
            secret: Zeroizing::new(bytes),
        }
    }

    /// A fresh random key, for `keys generate` and tests.
    pub fn generate(id: KeyId) -> Result<Self, getrandom::Error> {
        let mut secret = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        getrandom::fill(secret.as_mut())?;
        Ok(Self { id, secret })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key as 64 lowercase hex characters, for `keys generate` only.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.secret.as_ref()))
    }

    pub(crate) fn secret(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.secret
    }

    /// Non-secret 8-hex-digit fingerprint: HMAC-SHA256(key, label), truncated.
    fn fingerprint(&self) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.secret.as_ref())
            .expect("HMAC accepts keys of any length");
        mac.update(b"pgbackup key fingerprint v1");
        hex::encode(&mac.finalize().into_bytes()[..4])
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// All master keys we can decrypt with, and the one new backups use.
#[derive(Clone)]
pub struct Keyring {
    current: KeyId,
    keys: BTreeMap<KeyId, MasterKey>,
}

#[derive(Deserialize)]
struct KeyringSecret {
    current: String,
    /// In the order written, duplicates kept, so they can be refused (a
    /// map would silently keep the last).
    #[serde(deserialize_with = "key_pairs")]
    keys: Vec<(String, String)>,
}

impl Drop for KeyringSecret {
    fn drop(&mut self) {
        for (_, value) in &mut self.keys {
            value.zeroize();
        }
    }
}

fn key_pairs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of key ids to 64-hex keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry::<String, String>()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    deserializer.deserialize_map(Pairs)
}

impl Keyring {
    pub fn single(key: MasterKey) -> Self {
        let current = key.id.clone();
        Self {
            current: current.clone(),
            keys: BTreeMap::from([(current, key)]),
        }
    }

    pub fn new(current: KeyId, keys: Vec<MasterKey>) -> Result<Self, KeyringError> {
        let keys: BTreeMap<KeyId, MasterKey> = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        if !keys.contains_key(&current) {
            return Err(KeyringError::CurrentKeyMissing {
                current: ShownId::of(&current.0),
            });
        }
        Ok(Self { current, keys })
    }

    /// Parses the keyring secret as stored in Secrets Manager: either a bare
    /// 64-hex-character key or `{"current": "k2", "keys": {"k1": "…", "k2": "…"}}`.
    pub fn from_secret_string(secret: &str, source_name: &str) -> Result<Self, KeyringError> {
        let trimmed = secret.trim();
        if !trimmed.starts_with('{') {
            return Ok(Self::single(MasterKey::from_hex_with_fingerprint_id(
                trimmed,
                source_name,
            )?));
        }
        let parsed: KeyringSecret =
            serde_json::from_str(trimmed).map_err(|_| KeyringError::MalformedKeyringSecret)?;
        let mut keys: Vec<MasterKey> = Vec::with_capacity(parsed.keys.len());
        for (id, hex_key) in &parsed.keys {
            if looks_like_key(id) {
                return Err(KeyringError::KeyIdLooksLikeKey);
            }
            let key_id = KeyId::new(id.clone())?;
            if keys.iter().any(|key| key.id == key_id) {
                return Err(KeyringError::DuplicateKeyId {
                    key_id: ShownId::of(id),
                });
            }
            keys.push(MasterKey::from_hex(
                key_id,
                hex_key,
                &format!("{source_name} (key {})", ShownId::of(id)),
            )?);
        }
        // A key pasted as "current" must not come back in the error.
        if looks_like_key(&parsed.current) {
            return Err(KeyringError::KeyIdLooksLikeKey);
        }
        Self::new(KeyId::new(parsed.current.clone())?, keys)
    }

    /// The key new backups are encrypted with.
    pub fn current(&self) -> &MasterKey {
        // `new` and `single` guarantee the current id is present.
        &self.keys[&self.current]
    }

    pub fn get(&self, key_id: &str) -> Result<&MasterKey, KeyringError> {
        KeyId::new(key_id)
            .ok()
            .and_then(|id| self.keys.get(&id))
            .ok_or_else(|| KeyringError::UnknownKeyId {
                key_id: key_id.to_owned(),
            })
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// The id of the current key.
    pub fn current_id(&self) -> &KeyId {
        &self.current
    }

    /// A rotation: every key kept (old backups stay readable), a fresh
    /// random key added under `new_id` and made current.
    pub fn rotated(&self, new_id: KeyId) -> Result<Self, KeyringError> {
        if self.keys.contains_key(&new_id) {
            return Err(KeyringError::DuplicateKeyId {
                key_id: ShownId::of(new_id.as_str()),
            });
        }
        let fresh = MasterKey::generate(new_id.clone()).map_err(KeyringError::Randomness)?;
        let mut keys = self.keys.clone();
        keys.insert(new_id.clone(), fresh);
        Ok(Self {
            current: new_id,
            keys,
        })
    }

    /// An id for the next key: `k-20261126`, or `k-20261126-2` when the
    /// keyring already holds that one.
    pub fn next_key_id(&self, today: chrono::NaiveDate) -> KeyId {
        let base = format!("k-{}", today.format("%Y%m%d"));
        (1..)
            .map(|n| {
                if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .filter_map(|id| KeyId::new(id).ok())
            .find(|id| !self.keys.contains_key(id))
            .expect("some suffix is free")
    }

    /// Whether every key of `older` is here with the same material: a
    /// rotation may add keys, never lose or change one.
    pub fn keeps_every_key_of(&self, older: &Keyring) -> bool {
        older.keys.iter().all(|(id, key)| {
            self.keys.get(id).is_some_and(|kept| {
                bool::from(subtle::ConstantTimeEq::ct_eq(&kept.secret[..], &key.secret[..]))
            })
        })
    }

    /// Whether this keyring is a rotation of `older`: every key kept, and a
    /// current key `older` did not have.
    pub fn is_rotation_of(&self, older: &Keyring) -> bool {
        self.keeps_every_key_of(older) && !older.keys.contains_key(&self.current)
    }

    /// The keyring as its secret holds it:
    /// `{"current":"k2","keys":{"k1":"<64 hex>","k2":"<64 hex>"}}`. Ids are
    /// validated to need no JSON escaping; the text is zeroized on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(32 + self.keys.len() * 96));
        text.push_str("{\"current\":\"");
        text.push_str(self.current.as_str());
        text.push_str("\",\"keys\":{");
        for (index, (id, key)) in self.keys.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            text.push('"');
            text.push_str(id.as_str());
            text.push_str("\":\"");
            text.push_str(key.to_hex().as_str());
            text.push('"');
        }
        text.push_str("}}");
        text
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_keyring_with_id_and_key_swapped_never_echoes_the_key() {
        // Given a keyring secret whose id and key were swapped
        let key = "ab".repeat(32);
        let secret = format!(r#"{{"current": "k1", "keys": {{"{key}": "k1"}}}}"#);
        // When it is parsed, Then the error says what happened but not the key
        let error = Keyring::from_secret_string(&secret, "BACKUP_KEYRING_SECRET_ARN")
            .unwrap_err()
            .to_string();
        assert!(!error.contains(&key), "{error}");
        assert!(!error.contains(&key[..32]), "{error}");
        assert!(error.contains("swapped"), "{error}");
        // And an over-long id with other characters is not echoed either
        let odd = format!("{}==", "Zm9v".repeat(10));
        let error = KeyId::new(odd.clone()).unwrap_err().to_string();
        assert!(!error.contains(&odd) && error.contains("not shown"), "{error}");
    }

    #[test]
    fn a_key_pasted_as_the_current_id_is_never_echoed() {
        // Found while writing the keyring fuzz property: a 64-hex "current" is a
        // valid key id, and the missing-current error printed it.
        let key = "cd".repeat(32);
        let other = "ef".repeat(32);
        for secret in [
            format!(r#"{{"current": "{key}", "keys": {{"k1": "{other}"}}}}"#),
            format!(r#"{{"current": "{}", "keys": {{"k1": "{other}"}}}}"#, &key[..40]),
        ] {
            let error = Keyring::from_secret_string(&secret, "BACKUP_KEYRING_SECRET_ARN")
                .unwrap_err()
                .to_string();
            assert!(!error.contains(&key[..32]), "{error}");
            assert!(!error.contains(&other[..32]), "{error}");
        }
    }

    #[test]
    fn an_id_with_a_key_stuck_to_it_is_refused_and_never_shown() {
        // Found by the keyring_secret fuzz target: an id of "k" + 46 hex
        // digits was accepted, and the keyring's Debug listed it.
        let run = "2000000000000000000172822222222222220006664111";
        let secret = format!(r#"{{"current": "k1", "keys": {{"k{run}": "{KEY_A}", "k1": "{KEY_B}"}}}}"#);
        let error = Keyring::from_secret_string(&secret, "X").unwrap_err().to_string();
        assert!(!error.contains(run), "{error}");
        assert!(matches!(
            KeyId::new(format!("k-{run}")),
            Err(KeyringError::MalformedKeyId { .. })
        ));
        // while ordinary ids, UUIDs and fingerprint ids stay valid
        for id in [
            "k1",
            "2026-q4",
            "3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c",
            "k-0123abcd",
        ] {
            assert!(KeyId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn a_key_id_written_twice_is_refused_instead_of_keeping_the_last() {
        let (one, two) = ("11".repeat(32), "22".repeat(32));
        let secret = format!(r#"{{"current": "k1", "keys": {{"k1": "{one}", "k1": "{two}"}}}}"#);
        let error = Keyring::from_secret_string(&secret, "BACKUP_KEYRING_SECRET_ARN")
            .unwrap_err()
            .to_string();
        assert!(error.contains("names key id \"k1\" twice"), "{error}");
        assert!(!error.contains(&one) && !error.contains(&two), "{error}");
    }

    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn a_bare_hex_key_gets_a_stable_fingerprint_id() {
        let first = Keyring::from_secret_string(KEY_A, "BACKUP_ENCRYPTION_KEY").unwrap();
        let again = Keyring::from_secret_string(&format!(" {KEY_A}\n"), "X").unwrap();
        let other = Keyring::from_secret_string(KEY_B, "X").unwrap();
        assert_eq!(first.current().id(), again.current().id());
        assert_ne!(first.current().id(), other.current().id());
        assert!(first.current().id().as_str().starts_with("k-"));
        assert_eq!(first.current().id().as_str().len(), 10);
    }

    #[test]
    fn a_json_keyring_keeps_old_keys_for_reading() {
        let secret = format!(r#"{{"current": "k2", "keys": {{"k1": "{KEY_A}", "k2": "{KEY_B}"}}}}"#);
        let ring = Keyring::from_secret_string(&secret, "secret").unwrap();
        assert_eq!(ring.current().id().as_str(), "k2");
        assert_eq!(ring.get("k1").unwrap().secret()[0], 0x00);
        assert!(matches!(ring.get("k3"), Err(KeyringError::UnknownKeyId { .. })));
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_the_key() {
        let bad = "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let err = Keyring::from_secret_string(bad, "BACKUP_ENCRYPTION_KEY").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("BACKUP_ENCRYPTION_KEY"));
        assert!(!message.contains(bad));
        assert!(Keyring::from_secret_string("abcd", "X").is_err());
        let missing_current = format!(r#"{{"current": "k9", "keys": {{"k1": "{KEY_A}"}}}}"#);
        assert!(matches!(
            Keyring::from_secret_string(&missing_current, "X"),
            Err(KeyringError::CurrentKeyMissing { .. })
        ));
        assert!(matches!(
            Keyring::from_secret_string("{not json", "X"),
            Err(KeyringError::MalformedKeyringSecret)
        ));
    }

    #[test]
    fn debug_output_never_contains_key_material() {
        let ring = Keyring::from_secret_string(KEY_A, "X").unwrap();
        let shown = format!("{ring:?} {:?}", ring.current());
        assert!(!shown.contains(KEY_A));
        assert!(!shown.contains("0001020304"));
        assert!(shown.contains("redacted") || shown.contains("key_ids"));
    }

    #[test]
    fn a_rotation_keeps_every_key_adds_a_current_one_and_round_trips_as_a_secret() {
        use super::{KeyId, Keyring};
        // Given a bare key (its backups record the fingerprint id)
        let bare = Keyring::from_secret_string(&"ab".repeat(32), "test").unwrap();
        let old_id = bare.current_id().clone();
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        // When it is rotated twice on the same day
        let once = bare.rotated(bare.next_key_id(today)).unwrap();
        let twice = once.rotated(once.next_key_id(today)).unwrap();
        // Then the ids are dated and distinct, the newest is current, every key is kept
        assert_eq!(once.current_id().as_str(), "k-20261126");
        assert_eq!(twice.current_id().as_str(), "k-20261126-2");
        assert!(twice.keeps_every_key_of(&once) && twice.keeps_every_key_of(&bare));
        assert!(
            !bare.keeps_every_key_of(&once),
            "the old keyring lacks the new key"
        );
        assert_eq!(
            twice.get(old_id.as_str()).unwrap().to_hex().as_str(),
            "ab".repeat(32)
        );
        // And the secret text parses back to the same keyring
        let text = twice.to_secret_string();
        let back = Keyring::from_secret_string(&text, "test").unwrap();
        assert_eq!(back.current_id(), twice.current_id());
        assert!(back.keeps_every_key_of(&twice) && twice.keeps_every_key_of(&back));
        // A rotation to an id already present is refused
        assert!(twice.rotated(KeyId::new("k-20261126").unwrap()).is_err());
    }
}
