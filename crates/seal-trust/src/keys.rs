//! Ed25519 signing keys: PKCS#8 PEM for private keys, SPKI PEM for public
//! keys, and a stable key id.

use crate::{Result, TrustError};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer};
use std::fmt;

/// An Ed25519 private key. Its secret bytes are zeroed on drop and never
/// printed (`Debug` shows the key id only).
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    public: PublicKey,
}

/// An Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: ed25519_dalek::VerifyingKey,
    keyid: String,
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut secret = rand::random::<[u8; 32]>();
        let key = Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(&secret));
        secret.fill(0);
        key
    }

    /// The key whose secret is `seed` (a key derived elsewhere, e.g. the
    /// server's own from its master key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> Self {
        let public = PublicKey::from_dalek(inner.verifying_key());
        Self { inner, public }
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let label = pem_label(pem);
        match label.as_deref() {
            Some("PRIVATE KEY") => {}
            Some("PUBLIC KEY") => {
                return Err(TrustError::Key(
                    "this is a public key (PEM \"PUBLIC KEY\"); signing needs the private key, \
                     a PKCS#8 PEM \"PRIVATE KEY\""
                        .into(),
                ));
            }
            Some(other) => {
                return Err(TrustError::Key(format!(
                    "expected an Ed25519 PKCS#8 PEM \"PRIVATE KEY\", found PEM \"{other}\""
                )));
            }
            None => {
                return Err(TrustError::Key(
                    "not a PEM file: expected an Ed25519 PKCS#8 \"-----BEGIN PRIVATE KEY-----\""
                        .into(),
                ));
            }
        }
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| TrustError::Key(format!("not an Ed25519 PKCS#8 private key: {e}")))?;
        Ok(Self::from_dalek(inner))
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), LF line endings.
    pub fn to_pem(&self) -> String {
        let pem = self
            .inner
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding an Ed25519 key as PKCS#8 cannot fail");
        pem.as_str().to_owned()
    }

    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The key id of the public half.
    pub fn keyid(&self) -> &str {
        self.public.keyid()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.inner.sign(message)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.public.keyid)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    fn from_dalek(inner: ed25519_dalek::VerifyingKey) -> Self {
        let der = inner
            .to_public_key_der()
            .expect("encoding an Ed25519 public key as SPKI cannot fail");
        let keyid = seal_artifact::sha256_digest(der.as_bytes()).to_string();
        Self { inner, keyid }
    }

    /// Reads an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) Ed25519 key.
    pub fn from_pem(pem: &str) -> Result<Self> {
        match pem_label(pem).as_deref() {
            Some("PUBLIC KEY") => {}
            Some("PRIVATE KEY") => {
                return Err(TrustError::Key(
                    "this is a private key; give the public key (PEM \"PUBLIC KEY\") and keep \
                     the private key secret"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(TrustError::Key(format!(
                    "expected an Ed25519 PEM \"PUBLIC KEY\", found PEM \"{other}\""
                )));
            }
            None => {
                return Err(TrustError::Key(
                    "not a PEM file: expected an Ed25519 \"-----BEGIN PUBLIC KEY-----\"".into(),
                ));
            }
        }
        let inner = ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| TrustError::Key(format!("not an Ed25519 public key: {e}")))?;
        Ok(Self::from_dalek(inner))
    }

    /// The key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), LF line endings.
    pub fn to_pem(&self) -> String {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding an Ed25519 public key as SPKI cannot fail")
    }

    /// `sha256:` + hex(sha256(SPKI DER)): stable for a key, whatever its PEM
    /// formatting.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// Strict Ed25519 verification (rejects malleable and small-order cases).
    pub(crate) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        self.inner.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("keyid", &self.keyid)
            .finish()
    }
}

/// The label of the first PEM block (`-----BEGIN <label>-----`), if any.
fn pem_label(pem: &str) -> Option<String> {
    let start = pem.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &pem[start..];
    let end = rest.find("-----")?;
    let label = &rest[..end];
    (!label.contains('\n')).then(|| label.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_round_trips_through_pem() {
        let key = SigningKey::generate();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let back = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.to_pem(), pem);
        // Signatures made by the reloaded key verify with the original public key.
        let sig = back.sign(b"msg");
        assert!(key.public_key().verify(b"msg", &sig.to_bytes()));
    }

    #[test]
    fn public_key_round_trips_and_keyid_is_stable() {
        let key = SigningKey::generate();
        let public = key.public_key();
        let pem = public.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let back = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(back, public);
        assert_eq!(back.keyid(), public.keyid());
        // CRLF line endings and surrounding blank lines do not change the id.
        let crlf = format!("\n{}\n", pem.replace('\n', "\r\n"));
        assert_eq!(PublicKey::from_pem(&crlf).unwrap().keyid(), public.keyid());
        assert!(seal_artifact::Digest::parse(public.keyid()).is_ok());
        assert_eq!(key.keyid(), public.keyid());

        let other = SigningKey::generate().public_key();
        assert_ne!(other.keyid(), public.keyid());
        assert_ne!(other, public);
    }

    #[test]
    fn keyid_is_sha256_of_spki_der() {
        // RFC 8410 section 10.1 example public key.
        let pem = "-----BEGIN PUBLIC KEY-----\n\
                   MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
                   -----END PUBLIC KEY-----\n";
        let key = PublicKey::from_pem(pem).unwrap();
        let der = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
        )
        .unwrap();
        assert_eq!(
            key.keyid(),
            seal_artifact::sha256_digest(&der).as_str(),
            "keyid must hash the SPKI DER"
        );
        assert_eq!(key.to_pem(), pem);
    }

    #[test]
    fn wrong_pem_kinds_are_clear_errors() {
        let key = SigningKey::generate();
        let err = SigningKey::from_pem(&key.public_key().to_pem()).unwrap_err();
        assert!(err.to_string().contains("this is a public key"), "{err}");
        let err = PublicKey::from_pem(&key.to_pem()).unwrap_err();
        assert!(err.to_string().contains("this is a private key"), "{err}");
        let err = SigningKey::from_pem("hello").unwrap_err();
        assert!(err.to_string().contains("not a PEM file"), "{err}");
        let err = SigningKey::from_pem(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("OPENSSH PRIVATE KEY"), "{err}");
        let err =
            SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid key: not an Ed25519 PKCS#8"),
            "{err}"
        );
    }

    #[test]
    fn debug_does_not_print_secret() {
        let key = SigningKey::generate();
        let dbg = format!("{key:?}");
        assert!(dbg.contains(key.keyid()), "{dbg}");
        let secret_hex = hex::encode(key.inner.to_bytes());
        assert!(!dbg.contains(&secret_hex));
    }
}
