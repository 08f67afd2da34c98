//! Secrets at rest: AES-256-GCM under the deployment's master key.
//!
//! A sealed secret is `v1:` and the base64 of a fresh 12-byte nonce
//! followed by the ciphertext and its 16-byte tag. The master key comes
//! from configuration or a file in the data dir (the binary's business);
//! the store only seals and opens.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Bytes of a master key.
pub const MASTER_KEY_BYTES: usize = 32;
const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the master key must be {MASTER_KEY_BYTES} bytes, base64-encoded")]
    BadMasterKey,
    #[error("no random source")]
    Random,
    #[error("a sealed secret is damaged or was sealed under another master key")]
    Open,
}

/// Whether `stored` is a sealed secret (rather than one stored in clear
/// before sealing existed).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The key secrets are sealed under.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A key from its base64 text.
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadMasterKey)?;
        if bytes.len() != MASTER_KEY_BYTES {
            return Err(SecretError::BadMasterKey);
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretError::BadMasterKey)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// A new random key, as base64 text.
    pub fn generate() -> Result<String, SecretError> {
        let mut bytes = [0u8; MASTER_KEY_BYTES];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SecretError::Random)?;
        Ok(STANDARD.encode(bytes))
    }

    /// Seals `plaintext`; `context` (a provider id, say) is bound to it, so
    /// a sealed value copied to another row does not open.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut data = plaintext.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", STANDARD.encode(sealed)))
    }

    /// Opens what [`MasterKey::seal`] sealed with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SecretError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|text| STANDARD.decode(text).ok())
            .ok_or(SecretError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut data = data.to_vec();
        let plaintext = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| SecretError::Open)
    }
}

/// What HS256 issuer secrets of service specs are sealed under (not bound
/// to one service: an exported spec applies to another service or node
/// with the same master key).
const JWT_SECRET_CONTEXT: &str = "jwt-issuer-secret";

fn issuers_mut(
    spec: &mut domain::model::ServiceSpec,
) -> impl Iterator<Item = (usize, &mut domain::model::JwtIssuer)> {
    spec.auth
        .jwt
        .iter_mut()
        .flat_map(|jwt| jwt.issuers.iter_mut())
        .enumerate()
}

impl MasterKey {
    /// Seals the plaintext HS256 secrets of `spec` as `sealed:…` before it
    /// is stored. A secret already sealed is kept, if it opens with this
    /// key; else the error names its field.
    pub fn seal_spec_secrets(
        &self,
        spec: &mut domain::model::ServiceSpec,
    ) -> Result<(), (String, SecretError)> {
        for (index, issuer) in issuers_mut(spec) {
            let Some(secret) = issuer.secret.as_mut() else {
                continue;
            };
            let field = format!("auth.jwt.issuers[{index}].secret");
            match secret.strip_prefix(domain::model::SEALED_PREFIX) {
                Some(sealed) => {
                    self.open(sealed, JWT_SECRET_CONTEXT)
                        .map_err(|error| (field, error))?;
                }
                None => {
                    let sealed = self
                        .seal(secret, JWT_SECRET_CONTEXT)
                        .map_err(|error| (field, error))?;
                    *secret = format!("{}{sealed}", domain::model::SEALED_PREFIX);
                }
            }
        }
        Ok(())
    }

    /// Seals, anywhere in a stored JSON document (a service's spec, a
    /// release's snapshot, an audit record), the HS256 secrets still in
    /// clear: the `secret` of each item of an `issuers` array of a `jwt`
    /// object of an `auth` object. Returns whether anything was sealed.
    pub fn seal_json_secrets(&self, value: &mut serde_json::Value) -> Result<bool, SecretError> {
        use serde_json::Value;
        let mut sealed = false;
        match value {
            Value::Object(map) => {
                if let Some(issuers) = map
                    .get_mut("auth")
                    .and_then(|auth| auth.get_mut("jwt"))
                    .and_then(|jwt| jwt.get_mut("issuers"))
                    .and_then(Value::as_array_mut)
                {
                    for issuer in issuers {
                        if let Some(Value::String(secret)) = issuer.get_mut("secret")
                            && !secret.starts_with(domain::model::SEALED_PREFIX)
                        {
                            let text = self.seal(secret, JWT_SECRET_CONTEXT)?;
                            *secret = format!("{}{text}", domain::model::SEALED_PREFIX);
                            sealed = true;
                        }
                    }
                }
                for item in map.values_mut() {
                    sealed |= self.seal_json_secrets(item)?;
                }
            }
            Value::Array(items) => {
                for item in items {
                    sealed |= self.seal_json_secrets(item)?;
                }
            }
            _ => {}
        }
        Ok(sealed)
    }

    /// Opens the sealed HS256 secrets of `spec` (for the gateway). A
    /// secret that does not open is removed (its issuer then refuses every
    /// HS256 token) and named in the returned list.
    pub fn open_spec_secrets(&self, spec: &mut domain::model::ServiceSpec) -> Vec<String> {
        let mut failed = Vec::new();
        for (_, issuer) in issuers_mut(spec) {
            let Some(sealed) = issuer
                .secret
                .as_deref()
                .and_then(|s| s.strip_prefix(domain::model::SEALED_PREFIX))
            else {
                continue;
            };
            match self.open(sealed, JWT_SECRET_CONTEXT) {
                Ok(plaintext) => issuer.secret = Some(plaintext),
                Err(_) => {
                    failed.push(issuer.issuer.clone());
                    issuer.secret = None;
                }
            }
        }
        failed
    }

    /// For comparing a wanted spec with the stored one: a plaintext HS256
    /// secret of `wanted` equal to what the same issuer's sealed secret in
    /// `stored` opens to is replaced by that sealed value.
    pub fn match_sealed_secrets(
        &self,
        wanted: &mut domain::model::ServiceSpec,
        stored: &domain::model::ServiceSpec,
    ) {
        let sealed_of = |name: &str| {
            stored
                .auth
                .jwt
                .iter()
                .flat_map(|jwt| jwt.issuers.iter())
                .find(|issuer| issuer.issuer == name)
                .and_then(|issuer| issuer.secret.clone())
        };
        for (_, issuer) in issuers_mut(wanted) {
            let (Some(plaintext), Some(sealed)) =
                (issuer.secret.as_deref(), sealed_of(&issuer.issuer))
            else {
                continue;
            };
            let opened = sealed
                .strip_prefix(domain::model::SEALED_PREFIX)
                .and_then(|s| self.open(s, JWT_SECRET_CONTEXT).ok());
            if opened.as_deref() == Some(plaintext) {
                issuer.secret = Some(sealed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let key = MasterKey::from_base64(&MasterKey::generate().unwrap()).unwrap();
        let sealed = key.seal("sk-live-123", "provider-a").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("sk-live"));
        assert_eq!(key.open(&sealed, "provider-a").unwrap(), "sk-live-123");
        // A fresh nonce each time.
        assert_ne!(key.seal("sk-live-123", "provider-a").unwrap(), sealed);
        assert_eq!(key.open(&sealed, "provider-b"), Err(SecretError::Open));
        let other = MasterKey::from_base64(&MasterKey::generate().unwrap()).unwrap();
        assert_eq!(other.open(&sealed, "provider-a"), Err(SecretError::Open));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(key.open(&tampered, "provider-a"), Err(SecretError::Open));
        assert_eq!(key.open("v1:", "provider-a"), Err(SecretError::Open));
        assert_eq!(key.open("plain", "provider-a"), Err(SecretError::Open));
    }

    #[test]
    fn master_keys_are_checked() {
        assert_eq!(
            MasterKey::from_base64("c2hvcnQ=").unwrap_err(),
            SecretError::BadMasterKey
        );
        assert_eq!(
            MasterKey::from_base64("not base64!").unwrap_err(),
            SecretError::BadMasterKey
        );
    }
}
