//! DSSE v1 envelopes (<https://github.com/secure-systems-lab/dsse>).

use crate::keys::{PublicKey, SigningKey};
use crate::{Result, TrustError, short_id};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Media type of a DSSE envelope blob (the referrer's layer).
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// A DSSE v1 envelope in its JSON form: `payload` and `sig` are base64.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope. `keyid` is an unauthenticated hint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeSignature {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    #[serde(with = "b64")]
    pub sig: Vec<u8>,
}

/// DSSE's Pre-Authentication Encoding, the bytes actually signed:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// What the signatures of an envelope say about a set of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigCheck {
    /// A signature verifies with the key of this keyid.
    Verified(String),
    /// A signature names this trusted keyid but does not verify with it.
    Invalid(String),
    /// No signature is by a given key; the keyid of the first signature.
    Untrusted(String),
    /// The envelope has no signatures at all.
    Unsigned,
}

impl Envelope {
    /// Signs an in-toto statement: payload = its JSON, one signature by `key`.
    pub fn sign(statement: &Value, key: &SigningKey) -> Self {
        let payload = serde_json::to_vec(statement).expect("a serde_json::Value always serializes");
        let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
        Self {
            payload_type: PAYLOAD_TYPE.to_owned(),
            payload,
            signatures: vec![EnvelopeSignature {
                keyid: key.keyid().to_owned(),
                sig: sig.to_bytes().to_vec(),
            }],
        }
    }

    /// The envelope as JSON bytes (the blob stored next to the artifact).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| TrustError::Envelope(e.to_string()))
    }

    /// The decoded statement. Does **not** check signatures: use
    /// [`Envelope::verify`] or [`crate::evaluate`] before trusting it.
    pub fn statement(&self) -> Result<Value> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(TrustError::Statement(format!(
                "payloadType is {:?}, expected {PAYLOAD_TYPE}",
                self.payload_type
            )));
        }
        let value: Value = serde_json::from_slice(&self.payload)
            .map_err(|e| TrustError::Statement(format!("payload is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(TrustError::Statement("payload is not a JSON object".into()));
        }
        Ok(value)
    }

    /// Returns the keyid of the first signature that verifies with one of `keys`.
    pub fn verify(&self, keys: &[PublicKey]) -> Result<String> {
        match self.check(keys) {
            SigCheck::Verified(keyid) => Ok(keyid),
            SigCheck::Invalid(keyid) => Err(TrustError::Signature(format!(
                "signature does not verify with key {}",
                short_id(&keyid)
            ))),
            SigCheck::Untrusted(keyid) => Err(TrustError::Signature(format!(
                "signed by untrusted key {}",
                short_id(&keyid)
            ))),
            SigCheck::Unsigned => Err(TrustError::Signature(
                "the envelope has no signatures".into(),
            )),
        }
    }

    /// Checks every signature against every key. The keyid is only a hint:
    /// a signature is tried with the key it names first, then with the others.
    pub(crate) fn check(&self, keys: &[PublicKey]) -> SigCheck {
        let Some(first) = self.signatures.first() else {
            return SigCheck::Unsigned;
        };
        let message = pae(&self.payload_type, &self.payload);
        for s in &self.signatures {
            let named = keys.iter().filter(|k| k.keyid() == s.keyid);
            let others = keys.iter().filter(|k| k.keyid() != s.keyid);
            if let Some(k) = named.chain(others).find(|k| k.verify(&message, &s.sig)) {
                return SigCheck::Verified(k.keyid().to_owned());
            }
        }
        if let Some(s) = self
            .signatures
            .iter()
            .find(|s| keys.iter().any(|k| k.keyid() == s.keyid))
        {
            return SigCheck::Invalid(s.keyid.clone());
        }
        SigCheck::Untrusted(first.keyid.clone())
    }

    /// The keyid the first signature claims, or "" if none.
    pub(crate) fn claimed_keyid(&self) -> &str {
        self.signatures.first().map_or("", |s| s.keyid.as_str())
    }
}

/// Standard base64 with padding on output; on input DSSE allows standard or
/// URL-safe alphabets, padded or not.
mod b64 {
    use super::*;

    const INDIFFERENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD_ANY: GeneralPurpose =
        GeneralPurpose::new(&base64::alphabet::STANDARD, INDIFFERENT);
    const URL_SAFE_ANY: GeneralPurpose =
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, INDIFFERENT);

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD_ANY
            .decode(&text)
            .or_else(|_| URL_SAFE_ANY.decode(&text))
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn statement() -> Value {
        json!({"_type": "https://in-toto.io/Statement/v1", "subject": [], "x": "hello"})
    }

    #[test]
    fn pae_matches_the_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn sign_verify_round_trip_through_json() {
        let key = SigningKey::generate();
        let env = Envelope::sign(&statement(), &key);
        let bytes = env.to_json();
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(text["payloadType"], PAYLOAD_TYPE);
        assert!(text["payload"].is_string());
        assert_eq!(text["signatures"][0]["keyid"], key.keyid());
        assert!(text["signatures"][0]["sig"].is_string());

        let back = Envelope::from_json(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.statement().unwrap(), statement());
        let other = SigningKey::generate().public_key();
        assert_eq!(
            back.verify(&[other, key.public_key()]).unwrap(),
            key.keyid()
        );
    }

    #[test]
    fn signature_is_over_pae_not_raw_payload() {
        let key = SigningKey::generate();
        let env = Envelope::sign(&statement(), &key);
        let public = key.public_key();
        assert!(public.verify(&pae(PAYLOAD_TYPE, &env.payload), &env.signatures[0].sig));
        assert!(!public.verify(&env.payload, &env.signatures[0].sig));
    }

    #[test]
    fn tampering_fails() {
        let key = SigningKey::generate();
        let keys = [key.public_key()];
        let env = Envelope::sign(&statement(), &key);

        let mut payload = env.clone();
        let i = payload.payload.len() / 2;
        payload.payload[i] ^= 1;
        let err = payload.verify(&keys).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "signature does not verify with key {}",
                short_id(key.keyid())
            )
        );

        let mut sig = env.clone();
        sig.signatures[0].sig[0] ^= 1;
        assert!(sig.verify(&keys).is_err());

        let mut ty = env.clone();
        ty.payload_type = "application/json".into();
        assert!(ty.verify(&keys).is_err());

        let mut short = env.clone();
        short.signatures[0].sig.truncate(10);
        assert!(short.verify(&keys).is_err());

        let mut none = env;
        none.signatures.clear();
        assert_eq!(
            none.verify(&keys).unwrap_err().to_string(),
            "the envelope has no signatures"
        );
    }

    #[test]
    fn wrong_key_fails_and_keyid_is_only_a_hint() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let env = Envelope::sign(&statement(), &key);
        let err = env.verify(&[other.public_key()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("signed by untrusted key {}", short_id(key.keyid()))
        );
        assert!(env.verify(&[]).is_err());
        // A lying keyid names the other key: the signature still verifies
        // only with the real key, and reports the real key id.
        let mut lying = env.clone();
        lying.signatures[0].keyid = other.keyid().to_owned();
        assert!(lying.verify(&[other.public_key()]).is_err());
        assert_eq!(
            lying
                .verify(&[other.public_key(), key.public_key()])
                .unwrap(),
            key.keyid()
        );
        // No keyid at all (it is optional in DSSE).
        let mut anon = env;
        anon.signatures[0].keyid.clear();
        let back = Envelope::from_json(&anon.to_json()).unwrap();
        assert_eq!(back.verify(&[key.public_key()]).unwrap(), key.keyid());
    }

    #[test]
    fn statement_checks_payload_type_and_json() {
        let key = SigningKey::generate();
        let mut env = Envelope::sign(&statement(), &key);
        env.payload_type = "text/plain".into();
        assert!(
            env.statement()
                .unwrap_err()
                .to_string()
                .contains("payloadType")
        );
        env.payload_type = PAYLOAD_TYPE.into();
        env.payload = b"not json".to_vec();
        assert!(
            env.statement()
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
        env.payload = b"[1]".to_vec();
        assert!(env.statement().is_err());
    }

    #[test]
    fn from_json_accepts_url_safe_unpadded_and_rejects_garbage() {
        let key = SigningKey::generate();
        let env = Envelope::sign(&statement(), &key);
        let url = json!({
            "payloadType": PAYLOAD_TYPE,
            "payload": general_purpose::URL_SAFE_NO_PAD.encode(&env.payload),
            "signatures": [{"keyid": key.keyid(), "sig": general_purpose::URL_SAFE_NO_PAD.encode(&env.signatures[0].sig)}],
        });
        let back = Envelope::from_json(url.to_string().as_bytes()).unwrap();
        assert_eq!(back, env);
        assert!(Envelope::from_json(b"garbage").is_err());
        assert!(Envelope::from_json(b"{}").is_err());
        let bad = json!({"payloadType": PAYLOAD_TYPE, "payload": "!!", "signatures": []});
        let err = Envelope::from_json(bad.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }
}
