//! Ed25519 keys of the registry: root keys, org keys, node device keys.
//!
//! Owns key text formats (unpadded standard base64, the form Matrix and vodozemac use), key ids,
//! signing, signature checks and the secret-key file format. It does not read or write files —
//! the CLI does, with mode 0600 — and does not know what is being signed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use vodozemac::{Ed25519PublicKey, Ed25519SecretKey, Ed25519Signature};

/// The `format` tag of a secret-key file.
pub const KEY_FILE_FORMAT: &str = "axp.registry.secret_key.v1";

/// Prefix of every key id.
const KEY_ID_PREFIX: &str = "ed25519:";

/// How many bytes of the public key's SHA-256 a key id keeps: enough to tell a registry's handful
/// of keys apart; the id only selects a key, it is never trusted on its own.
const KEY_ID_HASH_BYTES: usize = 8;

/// Why a key, a signature or a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not unpadded standard base64: {0}")]
    NotBase64(String),
    #[error("decodes to {actual} bytes, expected {expected}")]
    WrongLength { expected: usize, actual: usize },
    #[error("not a valid Ed25519 public key (not a curve point)")]
    NotACurvePoint,
    #[error("the signature does not match the signed content and key")]
    SignatureMismatch,
    #[error("not a registry secret-key file: {0}")]
    BadKeyFile(String),
    #[error("the key file is inconsistent: its {0} does not belong to its secret key")]
    KeyFileMismatch(&'static str),
}

impl KeyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotBase64(_) | Self::WrongLength { .. } | Self::NotACurvePoint => "invalid_key",
            Self::SignatureMismatch => "bad_signature",
            Self::BadKeyFile(_) | Self::KeyFileMismatch(_) => "bad_key_file",
        }
    }
}

/// A public Ed25519 key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(Ed25519PublicKey);

impl PublicKey {
    /// Parses unpadded standard base64. Exactly one text is accepted per key, so keys compare as
    /// strings too (for instance against the device keys Matrix reports).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes: [u8; Ed25519PublicKey::LENGTH] = decode_fixed(text)?;
        Ed25519PublicKey::from_slice(&bytes).map(Self).map_err(|_| KeyError::NotACurvePoint)
    }

    pub fn to_base64(&self) -> String {
        self.0.to_base64()
    }

    /// The key's id: `ed25519:` and the first 8 bytes of SHA-256 over the key, in hex.
    pub fn key_id(&self) -> String {
        let hash = Sha256::digest(self.0.as_bytes());
        format!("{KEY_ID_PREFIX}{}", hex::encode(&hash[..KEY_ID_HASH_BYTES]))
    }

    /// Checks a base64 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &str) -> Result<(), KeyError> {
        let bytes: [u8; Ed25519Signature::LENGTH] = decode_fixed(signature)?;
        let signature = Ed25519Signature::from_slice(&bytes).map_err(|_| KeyError::SignatureMismatch)?;
        self.0.verify(message, &signature).map_err(|_| KeyError::SignatureMismatch)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// A secret Ed25519 key that signs endorsements or records.
pub struct SigningKey(Ed25519SecretKey);

/// On-disk form of a secret key. The public half and id are stored too, so an operator can see
/// which key a file holds without tools, and so a corrupted file is detected on load.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    key_id: String,
    public_key: String,
    secret_key: String,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self(Ed25519SecretKey::new())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.public_key())
    }

    /// Signs `message`, returning the signature in unpadded base64.
    pub fn sign(&self, message: &[u8]) -> String {
        self.0.sign(message).to_base64()
    }

    /// The text of a secret-key file holding this key. It is secret: write it with mode 0600.
    pub fn to_key_file(&self) -> String {
        let public_key = self.public_key();
        let file = serde_json::json!({
            "format": KEY_FILE_FORMAT,
            "key_id": public_key.key_id(),
            "public_key": public_key.to_base64(),
            "secret_key": self.0.to_base64(),
        });
        format!("{file:#}\n")
    }

    /// Reads the text of a secret-key file written by [`SigningKey::to_key_file`].
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| KeyError::BadKeyFile(e.to_string()))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(KeyError::BadKeyFile(format!("format is `{}`, expected `{KEY_FILE_FORMAT}`", file.format)));
        }
        let secret: [u8; Ed25519SecretKey::LENGTH] = decode_fixed(&file.secret_key)?;
        let key = Self(Ed25519SecretKey::from_slice(&secret));
        let public_key = key.public_key();
        if public_key.to_base64() != file.public_key {
            return Err(KeyError::KeyFileMismatch("public_key"));
        }
        if public_key.key_id() != file.key_id {
            return Err(KeyError::KeyFileMismatch("key_id"));
        }
        Ok(key)
    }
}

impl fmt::Debug for SigningKey {
    /// Shows only the key id: secrets never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key().key_id())
    }
}

/// Decodes unpadded standard base64 into exactly `N` bytes. Checking the length here, before
/// vodozemac sees the bytes, matters: its own base64 parsers panic on some wrong lengths.
fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], KeyError> {
    let bytes = STANDARD_NO_PAD.decode(text).map_err(|e| KeyError::NotBase64(e.to_string()))?;
    let actual = bytes.len();
    bytes.try_into().map_err(|_| KeyError::WrongLength { expected: N, actual })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let key = SigningKey::generate();
        let public_key = key.public_key();
        let signature = key.sign(b"message");
        assert_eq!(public_key.verify(b"message", &signature), Ok(()));
        assert_eq!(public_key.verify(b"messagE", &signature), Err(KeyError::SignatureMismatch));
        let other = SigningKey::generate().public_key();
        assert_eq!(other.verify(b"message", &signature), Err(KeyError::SignatureMismatch));
    }

    #[test]
    fn malformed_signatures_are_refused_not_panicking() {
        let public_key = SigningKey::generate().public_key();
        assert!(matches!(public_key.verify(b"m", "not base64!"), Err(KeyError::NotBase64(_))));
        assert!(matches!(public_key.verify(b"m", "AAAA"), Err(KeyError::WrongLength { expected: 64, actual: 3 })));
    }

    #[test]
    fn public_keys_round_trip_and_have_one_text() {
        let public_key = SigningKey::generate().public_key();
        let text = public_key.to_base64();
        assert_eq!(text.len(), 43);
        assert_eq!(PublicKey::from_base64(&text), Ok(public_key));
        // Padded and over-long forms used to panic inside vodozemac; here they are errors.
        assert!(PublicKey::from_base64(&format!("{text}=")).is_err());
        assert!(PublicKey::from_base64(&format!("{text}A")).is_err());
        assert!(matches!(PublicKey::from_base64("AAAA"), Err(KeyError::WrongLength { expected: 32, actual: 3 })));
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let public_key = SigningKey::generate().public_key();
        let id = public_key.key_id();
        assert!(id.starts_with("ed25519:"));
        assert_eq!(id.len(), "ed25519:".len() + 16);
        assert_eq!(id, public_key.key_id());
        assert_ne!(id, SigningKey::generate().public_key().key_id());
    }

    #[test]
    fn key_files_round_trip() {
        let key = SigningKey::generate();
        let loaded = SigningKey::from_key_file(&key.to_key_file()).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(!format!("{loaded:?}").contains(&key.0.to_base64()));
    }

    #[test]
    fn inconsistent_key_files_are_refused() {
        let key = SigningKey::generate();
        let mut file: serde_json::Value = serde_json::from_str(&key.to_key_file()).unwrap();
        file["public_key"] = SigningKey::generate().public_key().to_base64().into();
        assert_eq!(SigningKey::from_key_file(&file.to_string()).unwrap_err(), KeyError::KeyFileMismatch("public_key"));
        file["format"] = "something-else".into();
        assert_eq!(SigningKey::from_key_file(&file.to_string()).unwrap_err().code(), "bad_key_file");
    }
}
