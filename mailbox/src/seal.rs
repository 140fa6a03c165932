//! Signatures and sealed secrets: Ed25519 signs documents, X25519 + XChaCha20-Poly1305
//! seals secrets to one agent. The store is never trusted with either.

use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ferry_model::protocol::{SCHEMA, Sealed, Signed};
use x25519_dalek::{PublicKey, StaticSecret};

/// Domain tag of command signatures: a signature over a message can never pass as a command.
pub const COMMAND_TAG: &[u8] = b"ferry command v1\0";
/// Domain tag of message signatures.
pub const MESSAGE_TAG: &[u8] = b"ferry message v1\0";

/// Why a signed or sealed document was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A base64 field does not decode.
    #[error("{field} is not valid base64")]
    Encoding {
        /// Which field.
        field: &'static str,
    },
    /// The signature does not verify against the expected key.
    #[error("signature does not match the expected key")]
    BadSignature,
    /// A sealed secret does not open with this agent's key.
    #[error("sealed secret does not open with this agent's key")]
    BadSeal,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS random source failing is not recoverable and never happens on Linux ≥ 3.17.
    getrandom::getrandom(&mut b).expect("the OS random source is unavailable");
    b
}

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    random()
}

/// Encodes bytes as standard base64.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(field: &'static str, s: &str) -> Result<Vec<u8>, SealError> {
    B64.decode(s).map_err(|_| SealError::Encoding { field })
}

/// Parses a base64 Ed25519 public key.
pub fn verifying_key(b64_key: &str) -> Result<VerifyingKey> {
    let bytes = unb64("public key", b64_key)?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("an Ed25519 public key is 32 bytes"))?;
    VerifyingKey::from_bytes(&arr).context("not a valid Ed25519 public key")
}

/// Parses a base64 X25519 public key.
pub fn seal_key(b64_key: &str) -> Result<PublicKey> {
    let bytes = unb64("public key", b64_key)?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("an X25519 public key is 32 bytes"))?;
    Ok(PublicKey::from(arr))
}

/// A signing key pair (Ed25519) plus a sealing key pair (X25519), kept in one file.
pub struct KeyPair {
    sign: SigningKey,
    seal: StaticSecret,
}

impl KeyPair {
    /// Makes fresh keys from the OS random source.
    pub fn generate() -> Self {
        KeyPair {
            sign: SigningKey::from_bytes(&random()),
            seal: StaticSecret::from(random::<32>()),
        }
    }

    /// Reads keys from `path`, or makes and saves new ones (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Self::load(path);
        }
        let keys = Self::generate();
        keys.save(path)?;
        Ok(keys)
    }

    /// Reads keys written by [`KeyPair::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?;
        let mut lines = text.lines();
        let (Some(sign), Some(seal)) = (lines.next(), lines.next()) else {
            bail!(
                "key file {} is damaged: expected two lines; restore it from backup",
                path.display()
            );
        };
        let parse = |s: &str| -> Result<[u8; 32]> {
            B64.decode(s.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .with_context(|| format!("key file {} is damaged", path.display()))
        };
        Ok(KeyPair {
            sign: SigningKey::from_bytes(&parse(sign)?),
            seal: StaticSecret::from(parse(seal)?),
        })
    }

    /// Writes the secret keys to `path`, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = format!(
            "{}\n{}\n",
            b64(&self.sign.to_bytes()),
            b64(&self.seal.to_bytes())
        );
        crate::store::folder::write_atomic(path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing key file {}", path.display()))
    }

    /// Base64 of the Ed25519 public key.
    pub fn sign_public(&self) -> String {
        b64(self.sign.verifying_key().as_bytes())
    }

    /// Base64 of the X25519 public key.
    pub fn seal_public(&self) -> String {
        b64(PublicKey::from(&self.seal).as_bytes())
    }

    /// Signs `payload` under a domain tag into an envelope.
    pub fn sign(&self, tag: &[u8], payload: &[u8]) -> Signed {
        let sig = self.sign.sign(&[tag, payload].concat());
        Signed {
            schema: SCHEMA,
            payload: b64(payload),
            signature: b64(&sig.to_bytes()),
        }
    }

    /// Opens a secret sealed to this key pair; `context` must equal the sealer's.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, SealError> {
        let eph: [u8; 32] = unb64("ephemeral", &sealed.ephemeral)?
            .try_into()
            .map_err(|_| SealError::BadSeal)?;
        let nonce: [u8; 24] = unb64("nonce", &sealed.nonce)?
            .try_into()
            .map_err(|_| SealError::BadSeal)?;
        let ct = unb64("ciphertext", &sealed.ciphertext)?;
        let eph = PublicKey::from(eph);
        let key = seal_cipher_key(
            self.seal.diffie_hellman(&eph).as_bytes(),
            &eph,
            &PublicKey::from(&self.seal),
        );
        XChaCha20Poly1305::new(&key.into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: context,
                },
            )
            .map_err(|_| SealError::BadSeal)
    }
}

fn seal_cipher_key(shared: &[u8; 32], eph: &PublicKey, to: &PublicKey) -> [u8; 32] {
    let mut material = Vec::with_capacity(96);
    material.extend_from_slice(shared);
    material.extend_from_slice(eph.as_bytes());
    material.extend_from_slice(to.as_bytes());
    blake3::derive_key("ferry seal v1 xchacha20poly1305 key", &material)
}

/// Seals `secret` to the holder of the X25519 key `to`; `context` is bound as associated data.
pub fn seal(to: &PublicKey, secret: &[u8], context: &[u8]) -> Sealed {
    let eph = StaticSecret::from(random::<32>());
    let eph_pub = PublicKey::from(&eph);
    let key = seal_cipher_key(eph.diffie_hellman(to).as_bytes(), &eph_pub, to);
    let nonce: [u8; 24] = random();
    let ct = XChaCha20Poly1305::new(&key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: context,
            },
        )
        // Encryption of an in-memory buffer only fails for absurd lengths (> 256 GiB).
        .expect("sealing a secret");
    Sealed {
        ephemeral: b64(eph_pub.as_bytes()),
        nonce: b64(&nonce),
        ciphertext: b64(&ct),
    }
}

/// Checks an envelope's signature and returns the payload bytes it vouches for.
pub fn verify(tag: &[u8], env: &Signed, key: &VerifyingKey) -> Result<Vec<u8>, SealError> {
    let payload = unb64("payload", &env.payload)?;
    let sig: [u8; 64] = unb64("signature", &env.signature)?
        .try_into()
        .map_err(|_| SealError::BadSignature)?;
    key.verify(&[tag, &payload[..]].concat(), &Signature::from_bytes(&sig))
        .map_err(|_| SealError::BadSignature)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_tag_and_bytes() {
        let k = KeyPair::generate();
        let other = KeyPair::generate();
        let env = k.sign(COMMAND_TAG, b"hello");
        let vk = verifying_key(&k.sign_public()).expect("key");
        assert_eq!(verify(COMMAND_TAG, &env, &vk).expect("verifies"), b"hello");
        assert_eq!(verify(MESSAGE_TAG, &env, &vk), Err(SealError::BadSignature));
        let ovk = verifying_key(&other.sign_public()).expect("key");
        assert_eq!(
            verify(COMMAND_TAG, &env, &ovk),
            Err(SealError::BadSignature)
        );
        let mut tampered = env.clone();
        tampered.payload = b64(b"hellO");
        assert_eq!(
            verify(COMMAND_TAG, &tampered, &vk),
            Err(SealError::BadSignature)
        );
    }

    #[test]
    fn sealed_secret_opens_only_for_its_agent_and_context() {
        let agent = KeyPair::generate();
        let other = KeyPair::generate();
        let to = seal_key(&agent.seal_public()).expect("key");
        let s = seal(&to, b"library password", b"ctx");
        assert_eq!(agent.open(&s, b"ctx").expect("opens"), b"library password");
        assert_eq!(agent.open(&s, b"other ctx"), Err(SealError::BadSeal));
        assert_eq!(other.open(&s, b"ctx"), Err(SealError::BadSeal));
    }

    #[test]
    fn key_file_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let a = KeyPair::load_or_create(&path).expect("create");
        let b = KeyPair::load_or_create(&path).expect("load");
        assert_eq!(a.sign_public(), b.sign_public());
        assert_eq!(a.seal_public(), b.seal_public());
        std::fs::write(&path, "junk").expect("write");
        let err = KeyPair::load(&path).err().expect("damaged").to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
