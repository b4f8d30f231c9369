//! Known-answer tests: the primitives we build on produce the published
//! vectors, configured exactly as the envelope uses them.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.split_whitespace().collect::<String>()).unwrap()
}

#[test]
fn aes_256_cbc_matches_nist_sp_800_38a_f_2_5_and_f_2_6() {
    // Given the CBC-AES256 example of NIST SP 800-38A, appendix F.2.5/F.2.6
    let key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
    let iv = unhex("000102030405060708090a0b0c0d0e0f");
    let plaintext = unhex(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
         30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let ciphertext = unhex(
        "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
         39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
    );
    let key: [u8; 32] = key.try_into().unwrap();
    let iv: [u8; 16] = iv.try_into().unwrap();

    // When we encrypt and decrypt with the same cipher types as the envelope
    let encrypted = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec::<NoPadding>(&plaintext);
    let decrypted = cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .decrypt_padded_vec::<NoPadding>(&ciphertext)
        .unwrap();

    // Then both directions give the published blocks
    assert_eq!(encrypted, ciphertext);
    assert_eq!(decrypted, plaintext);
}

#[test]
fn hmac_sha256_matches_rfc_4231_test_cases_1_to_7() {
    let long_key = vec![0xaa; 131];
    let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        (
            (1u8..=25).collect(),
            vec![0xcd; 50],
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
        (
            vec![0x0c; 20],
            b"Test With Truncation".to_vec(),
            "a3b6167473100ee06e0c796c2955552b", // truncated to 128 bits
        ),
        (
            long_key.clone(),
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            long_key,
            b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];
    for (number, (key, data, expected)) in cases.into_iter().enumerate() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(&data);
        let tag = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            &tag[..expected.len()],
            expected,
            "RFC 4231 test case {}",
            number + 1
        );
    }
}

#[test]
fn sha256_of_abc_matches_fips_180_2() {
    assert_eq!(
        hex::encode(Sha256::digest(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        backup_core::checksum::sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn hkdf_sha256_matches_rfc_5869_test_case_1() {
    let ikm = vec![0x0b; 22];
    let salt = unhex("000102030405060708090a0b0c");
    let info = unhex("f0f1f2f3f4f5f6f7f8f9");
    let mut okm = [0u8; 42];
    Hkdf::<Sha256>::new(Some(&salt), &ikm)
        .expand(&info, &mut okm)
        .unwrap();
    assert_eq!(
        hex::encode(okm),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
}

// The project's own derivation and sealing, checked against answers that
// `openssl` 3 computed on its own (`openssl kdf … HKDF`, `openssl enc
// -aes-256-cbc`, `openssl dgst -mac HMAC`), exactly as docs/FORMAT.md's
// recovery recipe does:
//   master key 000102…1f, salt 202122…3f, info "pgbackup/v1 keys"
//   OKM = 22100d77…779b ‖ 4b97c1d1…7be9 (AES key ‖ HMAC key)
const KAT_MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KAT_SALT: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
const KAT_ENCRYPTION_KEY: &str = "22100d77dc5e4bf0399db00b011c1f7fff1c5c38d692527105a70b5762a6779b";
const KAT_AUTHENTICATION_KEY: &str = "4b97c1d196b6f748286b874032bc43ac74dfa112e6a61bb6c8f23644d5ed7be9";

fn kat_keys() -> backup_core::envelope::BackupKeys {
    let master =
        backup_core::MasterKey::from_hex(backup_core::KeyId::new("kat").unwrap(), KAT_MASTER, "test")
            .unwrap();
    let salt: [u8; 32] = unhex(KAT_SALT).try_into().unwrap();
    backup_core::envelope::BackupKeys::derive(&master, &salt)
}

#[test]
fn backup_keys_derive_the_header_tag_openssl_computes() {
    // Given the derived keys, Then the header tag is HMAC-SHA256 under the
    // second half of the OKM, as openssl computes it
    let tag = kat_keys().header_tag(b"pgbackup header");
    assert_eq!(
        hex::encode(tag),
        "0deae12276a0f2ebb3e03bc90177d561b0e7b935bd2f33ef4d75fa0798660d72"
    );
}

#[test]
fn a_chunk_sealed_by_openssl_opens_and_a_chunk_we_seal_opens_with_openssl_s_keys() {
    use backup_core::envelope::{CHUNK_PREFIX_LEN, ChunkPosition, MAC_LEN};
    let position = ChunkPosition { section: 3, chunk: 5 };
    // Given a chunk built by openssl: flags 03, length, IV, AES-256-CBC of a
    // COPY row, HMAC over (section ‖ chunk ‖ frame)
    let mut sealed = unhex(
        "03 00000010 f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff 946aadb699326cc7ee5c337c88d3fda7
         9012c5825ca118ee46de10b0518570af5eb1205a7328304c79db33ede4971e12",
    );
    // When our keys open it, Then the row and flags come back
    let keys = kat_keys();
    let (flags, plaintext) = keys.open_chunk(position, &mut sealed).unwrap();
    assert_eq!((flags, plaintext), (0x03, &b"1\tWash\t25.00\n"[..]));

    // And a chunk we seal is what the spec says under openssl's keys:
    // the tag verifies with the HMAC key, the body decrypts with the AES key
    let mut ours = Vec::new();
    keys.seal_chunk(position, 0x01, b"2\tPolish\t40.00\n", &mut ours)
        .unwrap();
    let (frame, tag) = ours.split_at(ours.len() - MAC_LEN);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&unhex(KAT_AUTHENTICATION_KEY)).unwrap();
    mac.update(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 5]);
    mac.update(frame);
    mac.verify_slice(tag).unwrap();
    let key: [u8; 32] = unhex(KAT_ENCRYPTION_KEY).try_into().unwrap();
    let iv: [u8; 16] = frame[5..CHUNK_PREFIX_LEN].try_into().unwrap();
    let plaintext = cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .decrypt_padded_vec::<aes::cipher::block_padding::Pkcs7>(&frame[CHUNK_PREFIX_LEN..])
        .unwrap();
    assert_eq!(plaintext, b"2\tPolish\t40.00\n");
    assert_eq!(frame[0], 0x01);
}
