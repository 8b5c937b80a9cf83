//! Config values and secrets: per function, per environment, never in the
//! artifact.
//!
//! Secrets are encrypted at rest with XChaCha20-Poly1305 under the server's
//! master key (`SEAL_MASTER_KEY`, else `<data-dir>/master.key`, created with
//! mode 0600 on first start), with the function, environment and key as
//! associated data so a ciphertext cannot be moved to another slot. They
//! are decrypted only into the gateway's settings for guests; the API
//! returns their names, never their values, and no error, log line, audit
//! entry or metric carries a value.
//!
//! Every change is one revision (who, when, which keys), and the revision
//! a guest ran with is on its invocation's log record.

use crate::error::{ControlError, ControlResult};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use seal_api_types::access::{SecretName, SettingsView};
use seal_serving::Serving;
use seal_serving::Settings;
use seal_state::{SettingChange, StateStore};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Largest config value or secret (bytes).
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most keys a function may have in one environment.
pub const MAX_KEYS: usize = 256;

const NONCE_LEN: usize = 24;

/// The master key's cipher. `Debug` never shows the key.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    /// The key preview tokens are derived with (never the master key
    /// itself: one key, one use).
    preview_key: [u8; 32],
    /// The seed of the server's own signing key (its attestations: a
    /// passed verification), the same on every node of one master key.
    server_seed: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A key given as 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32).ok_or(
            "the master key must be 32 bytes written as 64 hex characters (e.g. `openssl rand -hex 32`)",
        )?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|e| e.to_string())?;
        let preview_key = crate::preview::derive_key(&bytes, "seal preview tokens v1");
        let server_seed = crate::preview::derive_key(&bytes, "seal server signing key v1");
        Ok(Self {
            cipher,
            preview_key,
            server_seed,
        })
    }

    /// The server's own Ed25519 signing key (`seal trust server-key`).
    pub fn server_key(&self) -> seal_trust::SigningKey {
        seal_trust::SigningKey::from_seed(&self.server_seed)
    }

    /// What the deployments' preview tokens are made with.
    pub fn preview_tokens(&self) -> crate::preview::PreviewTokens {
        crate::preview::PreviewTokens::new(self.preview_key)
    }

    /// `SEAL_MASTER_KEY` when given; else `<data-dir>/master.key`, created
    /// (random, mode 0600) if it does not exist.
    pub fn load_or_create(data_dir: &Path, from_env: Option<&str>) -> anyhow::Result<Self> {
        if let Some(k) = from_env {
            return Self::from_hex(k).map_err(|e| anyhow::anyhow!("SEAL_MASTER_KEY: {e}"));
        }
        let path = data_dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Self::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                crate::files::write_private(&path, format!("{}\n", hex::encode(key)).as_bytes())
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                Self::from_hex(&hex::encode(key)).map_err(|e| anyhow::anyhow!(e))
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    fn aad(function: &str, environment: &str, key: &str) -> Vec<u8> {
        format!("seal-secret-v1\0{function}\0{environment}\0{key}").into_bytes()
    }

    /// Nonce followed by the ciphertext and tag.
    pub fn seal(&self, function: &str, environment: &str, key: &str, value: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = Self::aad(function, environment, key);
        // Encryption fails only for messages beyond the cipher's limit
        // (~256 GiB); values are capped at MAX_VALUE_BYTES.
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(ct);
        out
    }

    /// The plaintext, or `None` if the stored bytes were not sealed by this
    /// key for this slot (wrong master key, tampered row, moved row).
    pub fn open(
        &self,
        function: &str,
        environment: &str,
        key: &str,
        stored: &[u8],
    ) -> Option<Vec<u8>> {
        if stored.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = stored.split_at(NONCE_LEN);
        let aad = Self::aad(function, environment, key);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .ok()
    }
}

/// What a settings change answers: the new revision and the keys (never
/// values), and which serving versions will not see which keys because
/// their manifests do not declare them.
#[derive(Debug, Serialize)]
pub struct SettingsChanged {
    pub function: String,
    pub environment: String,
    pub revision: i64,
    pub set: Vec<String>,
    pub unset: Vec<String>,
    pub undeclared: Vec<Undeclared>,
}

#[derive(Debug, Serialize)]
pub struct Undeclared {
    pub version: u64,
    pub keys: Vec<String>,
}

/// The settings service: config and secrets per function and environment,
/// from the state store (secrets sealed) into the serving layer's slots.
pub struct SettingsService {
    state: Arc<dyn StateStore>,
    serving: Arc<Serving>,
    /// Encrypts and decrypts secrets at rest.
    secrets: SecretBox,
    /// Serialises changes from commit to hand-over, so the serving layer
    /// never gets an older revision after a newer one.
    lock: tokio::sync::Mutex<()>,
}

impl SettingsService {
    pub fn new(state: Arc<dyn StateStore>, serving: Arc<Serving>, secrets: SecretBox) -> Self {
        Self {
            state,
            serving,
            secrets,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Sets and unsets config values (`secret = false`) or secrets of a
    /// function in an environment, as one revision, then hands the new
    /// settings to the gateway.
    pub async fn change_settings(
        &self,
        function: &str,
        environment: &str,
        secret: bool,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        actor: &str,
    ) -> ControlResult<SettingsChanged> {
        crate::lookup::function_must_exist(&*self.state, function).await?;
        crate::lookup::environment_must_exist(&*self.state, environment).await?;
        if set.is_empty() && unset.is_empty() {
            return Err(ControlError::bad_request(
                "nothing to change: give keys to set or unset",
            ));
        }
        for key in set.keys().chain(&unset) {
            seal_artifact::capabilities::validate_config_key(key)
                .map_err(ControlError::bad_request)?;
        }
        if let Some(k) = unset.iter().find(|k| set.contains_key(*k)) {
            return Err(ControlError::bad_request(format!(
                "{k} is both set and unset"
            )));
        }
        for (key, value) in &set {
            if value.len() > MAX_VALUE_BYTES {
                // The message names the key and sizes, never the value.
                return Err(ControlError::bad_request(format!(
                    "the value of {key} is {} bytes; the limit is {MAX_VALUE_BYTES}",
                    value.len()
                )));
            }
        }
        let (_, existing) = self.state.settings(function, environment).await?;
        let after = existing
            .iter()
            .filter(|r| !unset.contains(&r.key))
            .map(|r| r.key.as_str())
            .chain(set.keys().map(String::as_str))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if after > MAX_KEYS {
            return Err(ControlError::bad_request(format!(
                "{function} would have {after} keys in {environment}; the limit is {MAX_KEYS}"
            )));
        }
        let stored = set
            .iter()
            .map(|(k, v)| {
                let bytes = if secret {
                    self.secrets.seal(function, environment, k, v.as_bytes())
                } else {
                    v.as_bytes().to_vec()
                };
                (k.clone(), bytes)
            })
            .collect();
        // Commit and hand-over under one lock, so a slower change cannot
        // put an older revision into the gateway after a newer one.
        let _guard = self.lock.lock().await;
        let revision = self
            .state
            .change_settings(SettingChange {
                function,
                environment,
                secret,
                set: stored,
                unset: unset.clone(),
                actor,
            })
            .await?;
        self.apply_settings(function, environment).await?;
        drop(_guard);
        let set: Vec<String> = set.into_keys().collect();
        let undeclared = self
            .serving
            .table()
            .get(environment, function)
            .map(|route| {
                route
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let declared = &b.function.limits().config_keys;
                        let keys: Vec<String> = set
                            .iter()
                            .filter(|k| !seal_runtime::config_key_allowed(declared, k))
                            .cloned()
                            .collect();
                        (!keys.is_empty()).then_some(Undeclared {
                            version: b.version,
                            keys,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(function, environment, revision, kind = if secret { "secrets" } else { "config" },
            keys = ?set, unset = ?unset, "settings changed");
        Ok(SettingsChanged {
            function: function.to_owned(),
            environment: environment.to_owned(),
            revision,
            set,
            unset,
            undeclared,
        })
    }

    /// Reads the settings of a function in an environment from the store,
    /// decrypts the secrets, and gives them to the gateway. A secret that
    /// does not decrypt (another master key, a tampered row) is left out
    /// and logged by key name.
    pub(crate) async fn apply_settings(
        &self,
        function: &str,
        environment: &str,
    ) -> ControlResult<()> {
        let (revision, rows) = self.state.settings(function, environment).await?;
        let mut vars = Vec::with_capacity(rows.len());
        for r in rows {
            let value = if r.secret {
                match self.secrets.open(function, environment, &r.key, &r.value) {
                    Some(v) => v,
                    None => {
                        tracing::error!(function, environment, key = %r.key,
                            "cannot decrypt a secret (was the master key changed?); it is left out");
                        continue;
                    }
                }
            } else {
                r.value
            };
            match String::from_utf8(value) {
                Ok(v) => vars.push((r.key, v)),
                Err(_) => {
                    tracing::error!(function, environment, key = %r.key, "a setting is not UTF-8; it is left out")
                }
            }
        }
        self.serving
            .set_settings(environment, function, Settings { revision, vars });
        Ok(())
    }

    /// At start: every function's settings in every environment.
    pub async fn apply_all_settings(&self) -> ControlResult<()> {
        for (function, environment) in self.state.setting_scopes().await? {
            self.apply_settings(&function, &environment).await?;
        }
        Ok(())
    }

    /// Config values in clear, secrets by name only.
    pub async fn settings_view(
        &self,
        function: &str,
        environment: &str,
    ) -> ControlResult<SettingsView> {
        crate::lookup::function_must_exist(&*self.state, function).await?;
        let (revision, rows) = self.state.settings(function, environment).await?;
        let mut config = BTreeMap::new();
        let mut secrets = Vec::new();
        for r in rows {
            if r.secret {
                secrets.push(SecretName {
                    key: r.key,
                    revision: r.revision,
                });
            } else {
                config.insert(r.key, String::from_utf8_lossy(&r.value).into_owned());
            }
        }
        Ok(SettingsView {
            function: function.to_owned(),
            environment: environment.to_owned(),
            revision,
            config,
            secrets,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_only_in_their_slot_and_key() {
        let k = SecretBox::from_hex(&"11".repeat(32)).unwrap();
        let sealed = k.seal("f", "production", "API_KEY", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            k.open("f", "production", "API_KEY", &sealed).unwrap(),
            b"hunter2"
        );
        // Another slot, another key, a flipped byte: nothing.
        assert!(k.open("f", "staging", "API_KEY", &sealed).is_none());
        assert!(k.open("f", "production", "OTHER", &sealed).is_none());
        let other = SecretBox::from_hex(&"22".repeat(32)).unwrap();
        assert!(other.open("f", "production", "API_KEY", &sealed).is_none());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(k.open("f", "production", "API_KEY", &bad).is_none());
        // Two seals of one value differ (random nonces).
        assert_ne!(sealed, k.seal("f", "production", "API_KEY", b"hunter2"));
        assert!(format!("{k:?}") == "SecretBox(..)");
    }

    #[test]
    fn master_keys_are_checked_and_created_private() {
        assert!(SecretBox::from_hex("abc").is_err());
        assert!(SecretBox::from_hex(&"zz".repeat(32)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load_or_create(dir.path(), None).unwrap();
        let sealed = a.seal("f", "e", "K", b"v");
        let b = SecretBox::load_or_create(dir.path(), None).unwrap();
        assert_eq!(b.open("f", "e", "K", &sealed).unwrap(), b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = SecretBox::load_or_create(dir.path(), Some("nope")).unwrap_err();
        assert!(err.to_string().starts_with("SEAL_MASTER_KEY"));
    }
}
