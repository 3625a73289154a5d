//! Records are sealed before they enter the store: ChaCha20-Poly1305 with
//! a random 96-bit nonce, the client's name as associated data (a record
//! cannot be moved to another client's key), and a version byte. Pure but
//! for the nonce's randomness.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
pub const KEY_LEN: usize = 32;

/// The cluster's encryption key. `Debug` shows only a fingerprint.
#[derive(Clone)]
pub struct SealKey {
    bytes: [u8; KEY_LEN],
}

impl SealKey {
    /// From the key file's content: 32 bytes as they are, or their base64.
    pub fn from_file_content(content: &[u8]) -> Result<SealKey, String> {
        use base64::Engine;
        let bytes: Vec<u8> = if content.len() == KEY_LEN {
            content.to_vec()
        } else {
            let text = std::str::from_utf8(content).unwrap_or_default().trim();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_default()
        };
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            "must hold 32 random bytes, as they are or in base64 (e.g. `head -c 32 /dev/urandom > cluster.key`)".to_string()
        })?;
        Ok(SealKey { bytes })
    }

    /// A short public name of the key (its digest's first bytes), to tell
    /// in a message which key a record was sealed with.
    pub fn fingerprint(&self) -> String {
        let d = Sha256::digest([b"tokenkeeper-cluster-key:".as_slice(), &self.bytes].concat());
        d[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key(&self) -> Result<LessSafeKey, String> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.bytes)
            .map(LessSafeKey::new)
            .map_err(|_| "unusable encryption key".to_string())
    }

    /// `VERSION || key fingerprint (4) || nonce || ciphertext+tag`.
    pub fn seal(&self, client: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_string())?;
        let mut data = plain.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(client)),
                &mut data,
            )
            .map_err(|_| "cannot encrypt the record".to_string())?;
        let mut out = vec![VERSION];
        out.extend(self.fingerprint_bytes());
        out.extend(nonce);
        out.extend(data);
        Ok(out)
    }

    /// The plain record, or why it cannot be read with this key.
    pub fn open(&self, client: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let head = 1 + 4 + NONCE_LEN;
        if sealed.len() < head + 16 || sealed[0] != VERSION {
            return Err("is not a record this version of tokenkeeper wrote".into());
        }
        if sealed[1..5] != self.fingerprint_bytes() {
            let theirs: String = sealed[1..5].iter().map(|b| format!("{b:02x}")).collect();
            return Err(format!(
                "was encrypted with another key (key {theirs}; this member's encryption_key_file is key {})",
                self.fingerprint()
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[5..head]);
        let mut data = sealed[head..].to_vec();
        let plain = self
            .key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(client)),
                &mut data,
            )
            .map_err(|_| {
                "does not decrypt: it was altered, or belongs to another client".to_string()
            })?;
        Ok(plain.to_vec())
    }

    fn fingerprint_bytes(&self) -> [u8; 4] {
        let d = Sha256::digest([b"tokenkeeper-cluster-key:".as_slice(), &self.bytes].concat());
        [d[0], d[1], d[2], d[3]]
    }
}

impl PartialEq for SealKey {
    fn eq(&self, other: &SealKey) -> bool {
        self.fingerprint_bytes() == other.fingerprint_bytes()
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.fingerprint())
    }
}

fn aad(client: &str) -> Vec<u8> {
    format!("tokenkeeper/cluster/v1/{client}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_key_and_for_its_client() {
        let key = SealKey::from_file_content(&[7u8; 32]).unwrap();
        let sealed = key.seal("shop", b"{\"access_token\":\"abc\"}").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"abc"), "no plain text");
        assert_eq!(
            key.open("shop", &sealed).unwrap(),
            b"{\"access_token\":\"abc\"}"
        );
        assert!(
            key.open("erp", &sealed)
                .unwrap_err()
                .contains("another client")
        );
        let other = SealKey::from_file_content(&[8u8; 32]).unwrap();
        let err = other.open("shop", &sealed).unwrap_err();
        assert!(err.contains("another key"), "{err}");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key.open("shop", &altered).is_err());
        assert_ne!(
            key.seal("shop", b"x").unwrap(),
            key.seal("shop", b"x").unwrap(),
            "fresh nonces"
        );
    }

    #[test]
    fn a_key_file_holds_32_bytes_raw_or_in_base64() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]) + "\n";
        assert_eq!(
            SealKey::from_file_content(b64.as_bytes()).unwrap(),
            SealKey::from_file_content(&[1u8; 32]).unwrap()
        );
        assert!(
            SealKey::from_file_content(b"short")
                .unwrap_err()
                .contains("32 random bytes")
        );
        assert!(!format!("{:?}", SealKey::from_file_content(&[1u8; 32]).unwrap()).contains("1, 1"));
    }
}
