//! The cryptographic envelope of a backup: per-backup keys and sealed chunks.
//!
//! Each backup derives its own 256-bit encryption key and 256-bit MAC key
//! with HKDF-SHA256 from a master key and a 32-byte random salt stored in
//! the header, so master keys never touch backup data and a leaked data key
//! exposes one backup only.
//!
//! A chunk is sealed with AES-256-CBC (PKCS#7 padding, a fresh random IV)
//! and then authenticated with HMAC-SHA256 over its position (section index,
//! chunk index), its flags and everything stored before the tag
//! (encrypt-then-MAC). The MAC is checked, in constant time, before any
//! decryption happens.

use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keyring::MasterKey;

type Aes256CbcEncryptor = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDecryptor = cbc::Decryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// HKDF `info` string; part of the format (`docs/FORMAT.md`).
pub const HKDF_INFO: &[u8] = b"pgbackup/v1 keys";
pub const SALT_LEN: usize = 32;
pub const IV_LEN: usize = 16;
pub const MAC_LEN: usize = 32;
pub const AES_BLOCK_LEN: usize = 16;
/// Stored before a chunk's ciphertext: flags (1), ciphertext length (4), IV (16).
pub const CHUNK_PREFIX_LEN: usize = 1 + 4 + IV_LEN;

/// Flag bit: this chunk is the last of its section.
pub const FLAG_LAST_IN_SECTION: u8 = 0b01;
/// Flag bit: this chunk is the last of the whole container (trailer's last chunk).
pub const FLAG_LAST_IN_CONTAINER: u8 = 0b10;

/// Where a chunk sits in the container; authenticated with the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPosition {
    pub section: u32,
    pub chunk: u64,
}

impl ChunkPosition {
    fn to_bytes(self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.section.to_be_bytes());
        bytes[4..].copy_from_slice(&self.chunk.to_be_bytes());
        bytes
    }
}

/// Why a chunk or header failed to authenticate. Shown to callers only as
/// a generic integrity failure; the detail goes to the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityFault {
    MacMismatch,
    BadLength,
    BadPadding,
}

impl IntegrityFault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MacMismatch => "MAC mismatch",
            Self::BadLength => "impossible ciphertext length",
            Self::BadPadding => "invalid padding after a valid MAC",
        }
    }
}

/// HKDF `info` of the metadata MAC key; part of the format (`docs/FORMAT.md`).
pub const METADATA_MAC_INFO: &[u8] = b"pgbackup/v1 metadata mac";

/// The key that authenticates metadata documents, derived from a master
/// key: HKDF-SHA256(ikm = master key, no salt, info = [`METADATA_MAC_INFO`]).
/// One per master key (a metadata document is small and public-shaped; no
/// per-backup salt is needed), never the key of any backup's data.
pub struct MetadataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MetadataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetadataKey(<redacted>)")
    }
}

impl MetadataKey {
    pub fn derive(master: &MasterKey) -> Self {
        Self::derive_for(master, METADATA_MAC_INFO)
    }

    /// The same derivation for another kind of document (`info` names it,
    /// e.g. the erasure ledger's records), so no key serves two purposes.
    pub fn derive_for(master: &MasterKey, info: &[u8]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(None, master.secret());
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf.expand(info, key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(key)
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(self.0.as_ref()).expect("HMAC accepts 32-byte keys")
    }

    /// HMAC-SHA256 of the canonical document bytes.
    pub fn tag(&self, canonical_document: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac();
        mac.update(canonical_document);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison with a stored tag.
    pub fn verify(&self, canonical_document: &[u8], tag: &[u8]) -> Result<(), IntegrityFault> {
        let mut mac = self.mac();
        mac.update(canonical_document);
        mac.verify_slice(tag).map_err(|_| IntegrityFault::MacMismatch)
    }
}

/// The two keys of one backup. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct BackupKeys {
    encryption: Zeroizing<[u8; 32]>,
    authentication: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for BackupKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKeys(<redacted>)")
    }
}

impl BackupKeys {
    /// HKDF-SHA256(ikm = master key, salt, info = [`HKDF_INFO`]) → 64 bytes:
    /// the first 32 are the AES key, the last 32 the HMAC key.
    pub fn derive(master: &MasterKey, salt: &[u8; SALT_LEN]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(salt), master.secret());
        let mut okm = Zeroizing::new([0u8; 64]);
        hkdf.expand(HKDF_INFO, okm.as_mut())
            .expect("64 bytes is a valid HKDF-SHA256 output length");
        let mut encryption = Zeroizing::new([0u8; 32]);
        let mut authentication = Zeroizing::new([0u8; 32]);
        encryption.copy_from_slice(&okm[..32]);
        authentication.copy_from_slice(&okm[32..]);
        Self {
            encryption,
            authentication,
        }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(self.authentication.as_ref())
            .expect("HMAC accepts 32-byte keys")
    }

    /// HMAC-SHA256 over the header bytes that precede the tag.
    pub fn header_tag(&self, header_without_tag: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac();
        mac.update(header_without_tag);
        mac.finalize().into_bytes().into()
    }

    pub fn verify_header_tag(&self, header_without_tag: &[u8], tag: &[u8]) -> Result<(), IntegrityFault> {
        let mut mac = self.mac();
        mac.update(header_without_tag);
        mac.verify_slice(tag).map_err(|_| IntegrityFault::MacMismatch)
    }

    /// Encrypts `plaintext` and appends the sealed chunk
    /// (`flags ‖ ct_len ‖ iv ‖ ciphertext ‖ tag`) to `out`.
    pub fn seal_chunk(
        &self,
        position: ChunkPosition,
        flags: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), getrandom::Error> {
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv)?;
        let padded_len = (plaintext.len() / AES_BLOCK_LEN + 1) * AES_BLOCK_LEN;
        let ciphertext_len = u32::try_from(padded_len).expect("chunk sizes are limited far below 4 GiB");

        let frame_start = out.len();
        out.reserve(CHUNK_PREFIX_LEN + padded_len + MAC_LEN);
        out.push(flags);
        out.extend_from_slice(&ciphertext_len.to_be_bytes());
        out.extend_from_slice(&iv);
        let ciphertext_start = out.len();
        out.extend_from_slice(plaintext);
        out.resize(ciphertext_start + padded_len, 0);
        let encryptor = Aes256CbcEncryptor::new(&(*self.encryption).into(), &iv.into());
        encryptor
            .encrypt_padded::<Pkcs7>(&mut out[ciphertext_start..], plaintext.len())
            .expect("buffer was sized for PKCS#7 padding");

        let mut mac = self.mac();
        mac.update(&position.to_bytes());
        mac.update(&out[frame_start..]);
        out.extend_from_slice(&mac.finalize().into_bytes());
        Ok(())
    }

    /// Authenticates and decrypts one sealed chunk in place. `sealed` is the
    /// whole chunk as stored. Returns the flags and the plaintext.
    pub fn open_chunk<'a>(
        &self,
        position: ChunkPosition,
        sealed: &'a mut [u8],
    ) -> Result<(u8, &'a [u8]), IntegrityFault> {
        if sealed.len() < CHUNK_PREFIX_LEN + AES_BLOCK_LEN + MAC_LEN {
            return Err(IntegrityFault::BadLength);
        }
        let ciphertext_len = chunk_ciphertext_len(&sealed[..CHUNK_PREFIX_LEN]);
        if !ciphertext_len.is_multiple_of(AES_BLOCK_LEN)
            || sealed.len() != CHUNK_PREFIX_LEN + ciphertext_len + MAC_LEN
        {
            return Err(IntegrityFault::BadLength);
        }
        let (body, tag) = sealed.split_at_mut(CHUNK_PREFIX_LEN + ciphertext_len);
        let mut mac = self.mac();
        mac.update(&position.to_bytes());
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| IntegrityFault::MacMismatch)?;

        let flags = body[0];
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&body[5..CHUNK_PREFIX_LEN]);
        let decryptor = Aes256CbcDecryptor::new(&(*self.encryption).into(), &iv.into());
        let plaintext = decryptor
            .decrypt_padded::<Pkcs7>(&mut body[CHUNK_PREFIX_LEN..])
            .map_err(|_| IntegrityFault::BadPadding)?;
        Ok((flags, plaintext))
    }
}

/// Seals a chunk under `master` (fresh salt, as a backup would) and opens
/// it again: proves a key works before it is trusted with backups (the
/// key-rotation test step).
pub fn seal_and_open_round_trip(master: &MasterKey) -> Result<(), IntegrityFault> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|_| IntegrityFault::BadLength)?;
    let keys = BackupKeys::derive(master, &salt);
    let position = ChunkPosition { section: 0, chunk: 0 };
    let plaintext = b"pgbackup key rotation test chunk";
    let mut sealed = Vec::new();
    keys.seal_chunk(position, FLAG_LAST_IN_SECTION, plaintext, &mut sealed)
        .map_err(|_| IntegrityFault::BadLength)?;
    let (flags, opened) = keys.open_chunk(position, &mut sealed)?;
    if flags == FLAG_LAST_IN_SECTION && opened == plaintext {
        Ok(())
    } else {
        Err(IntegrityFault::MacMismatch)
    }
}

/// The ciphertext length recorded in a chunk prefix (unauthenticated until
/// the chunk's MAC is checked; callers bound it before allocating).
pub fn chunk_ciphertext_len(prefix: &[u8]) -> usize {
    // A prefix too short to hold a length has none: 0 is refused by callers.
    let Some(bytes) = prefix.get(1..5) else {
        return 0;
    };
    let mut length = [0u8; 4];
    length.copy_from_slice(bytes);
    u32::from_be_bytes(length) as usize
}

/// Largest ciphertext a chunk of `chunk_size` plaintext bytes can have.
pub fn max_ciphertext_len(chunk_size: u32) -> usize {
    (chunk_size as usize / AES_BLOCK_LEN + 1) * AES_BLOCK_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::KeyId;

    fn keys() -> BackupKeys {
        let master = MasterKey::from_bytes(KeyId::new("t").unwrap(), [7u8; 32]);
        BackupKeys::derive(&master, &[9u8; SALT_LEN])
    }

    const AT: ChunkPosition = ChunkPosition { section: 3, chunk: 5 };

    #[test]
    fn a_sealed_chunk_opens_only_at_its_own_position() {
        let keys = keys();
        let mut sealed = Vec::new();
        keys.seal_chunk(AT, FLAG_LAST_IN_SECTION, b"booking rows", &mut sealed)
            .unwrap();
        assert_eq!(sealed.len(), CHUNK_PREFIX_LEN + 16 + MAC_LEN);

        let mut copy = sealed.clone();
        let (flags, plaintext) = keys.open_chunk(AT, &mut copy).unwrap();
        assert_eq!((flags, plaintext), (FLAG_LAST_IN_SECTION, &b"booking rows"[..]));

        for elsewhere in [
            ChunkPosition { section: 4, chunk: 5 },
            ChunkPosition { section: 3, chunk: 6 },
        ] {
            let mut copy = sealed.clone();
            assert_eq!(
                keys.open_chunk(elsewhere, &mut copy),
                Err(IntegrityFault::MacMismatch)
            );
        }
    }

    #[test]
    fn the_same_plaintext_never_seals_to_the_same_bytes() {
        let keys = keys();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        keys.seal_chunk(AT, 0, &[0u8; 64], &mut first).unwrap();
        keys.seal_chunk(AT, 0, &[0u8; 64], &mut second).unwrap();
        assert_ne!(first, second, "a fresh random IV per chunk");
    }

    #[test]
    fn an_empty_chunk_is_one_block_of_padding() {
        let keys = keys();
        let mut sealed = Vec::new();
        keys.seal_chunk(AT, FLAG_LAST_IN_SECTION, b"", &mut sealed)
            .unwrap();
        assert_eq!(chunk_ciphertext_len(&sealed), 16);
        // too short to hold a length: no panic, and a length callers refuse
        for short in [&[][..], &[1][..], &[1, 0, 0, 0][..]] {
            assert_eq!(chunk_ciphertext_len(short), 0);
        }
        let (_, plaintext) = keys.open_chunk(AT, &mut sealed).unwrap();
        assert!(plaintext.is_empty());
    }
}
