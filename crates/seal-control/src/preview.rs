//! Preview tokens: what lets a request pinned to a version (`seal-version`,
//! the preview host) count in that deployment's gates, and, in a protected
//! environment, be served at all.
//!
//! A token is an HMAC of the deployment (environment, function, id and
//! candidate version) under a key derived from the master key: the server
//! can recompute it from a route alone (after a restart, on any node with
//! the same key), nothing is stored, and a token ends with its deployment.
//! Hooks send it; `seal deployments show` prints it to whoever may deploy
//! to that environment.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Derives a 32-byte key for one use from `secret`.
pub(crate) fn derive_key(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Makes the preview token of a deployment.
#[derive(Clone)]
pub struct PreviewTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for PreviewTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreviewTokens(..)")
    }
}

impl PreviewTokens {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The token of deployment `deployment` of `function` in `environment`
    /// previewing `version`: 32 hex characters (128 bits).
    pub fn token(
        &self,
        environment: &str,
        function: &str,
        deployment: u64,
        version: u64,
    ) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(
            format!("seal-preview-v1\0{environment}\0{function}\0{deployment}\0{version}")
                .as_bytes(),
        );
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_one_deployment_under_one_key() {
        let t = PreviewTokens::new(derive_key(&[7; 32], "seal preview tokens v1"));
        let a = t.token("production", "api", 4, 2);
        assert_eq!(a.len(), 32);
        assert_eq!(a, t.token("production", "api", 4, 2), "recomputable");
        for other in [
            t.token("staging", "api", 4, 2),
            t.token("production", "web", 4, 2),
            t.token("production", "api", 5, 2),
            t.token("production", "api", 4, 3),
        ] {
            assert_ne!(a, other);
        }
        let other_key = PreviewTokens::new(derive_key(&[8; 32], "seal preview tokens v1"));
        assert_ne!(a, other_key.token("production", "api", 4, 2));
        // The derived key is not the master key, and depends on the purpose.
        assert_ne!(derive_key(&[7; 32], "a"), [7; 32]);
        assert_ne!(derive_key(&[7; 32], "a"), derive_key(&[7; 32], "b"));
    }
}
