//! JWT authentication (HS256, RS256, ES256): a service trusts issuers; a
//! token from one of them stands for the app that claims its
//! `(iss, <app_claim>)` pair. Keys come from the service's configuration
//! (secret or PEM, parsed when the snapshot is compiled) or from a JWKS
//! document that the control plane fetches and refreshes ([`JwksCache`]).
//! Verification never waits on the network.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use domain::code::Code;
use domain::model::{JwtAlgorithm, JwtAuth};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::refusal::Refusal;

/// One trusted issuer, compiled.
pub struct IssuerRt {
    pub issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    secret: Option<DecodingKey>,
    public_key: Option<DecodingKey>,
    /// The configured public key's PEM body ([`domain::access::pem_body`]).
    public_key_body: Option<String>,
    pub jwks_url: Option<String>,
    leeway_s: u64,
}

/// Where the key that verified a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The issuer's HS256 secret, set by the service's team.
    Secret,
    /// The public key configured on the service (its PEM body).
    PublicKey(&'a str),
    /// A key of the JWKS document at this URL.
    Jwks(&'a str),
}

/// A verified token: its `iss`, the value of the app claim, and the
/// source of the key that verified it.
#[derive(Debug)]
pub struct Verified<'a> {
    pub issuer: String,
    pub subject: String,
    pub source: KeySource<'a>,
}

impl std::fmt::Debug for IssuerRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerRt")
            .field("issuer", &self.issuer)
            .field("algorithms", &self.algorithms)
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

/// A service's JWT settings, compiled.
#[derive(Debug)]
pub struct JwtRt {
    pub issuers: Vec<IssuerRt>,
    pub app_claim: String,
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

impl JwtRt {
    pub fn compile(auth: &JwtAuth) -> Result<Self, String> {
        let mut issuers = Vec::with_capacity(auth.issuers.len());
        for issuer in &auth.issuers {
            let algorithms: Vec<Algorithm> =
                issuer.algorithms.iter().copied().map(algorithm).collect();
            let public_key = match &issuer.public_key_pem {
                None => None,
                Some(pem) => {
                    let pem = pem.as_bytes();
                    let key = if algorithms.contains(&Algorithm::RS256) {
                        DecodingKey::from_rsa_pem(pem)
                    } else {
                        DecodingKey::from_ec_pem(pem)
                    };
                    Some(key.map_err(|e| format!("issuer {}: public_key_pem: {e}", issuer.issuer))?)
                }
            };
            issuers.push(IssuerRt {
                issuer: issuer.issuer.clone(),
                audiences: issuer.audiences.clone(),
                // A secret still sealed (not opened by the binary) is
                // never a key: its text is visible through the admin API.
                secret: issuer
                    .secret
                    .as_ref()
                    .filter(|s| !s.starts_with(domain::model::SEALED_PREFIX))
                    .map(|s| DecodingKey::from_secret(s.as_bytes())),
                public_key,
                public_key_body: issuer
                    .public_key_pem
                    .as_deref()
                    .map(domain::access::pem_body),
                jwks_url: issuer.jwks_url.clone(),
                leeway_s: issuer.leeway_s,
                algorithms,
            });
        }
        Ok(Self {
            issuers,
            app_claim: auth.app_claim.clone(),
        })
    }
}

/// The usable keys of one JWKS document: (key id, key).
type KeySet = Arc<Vec<(Option<String>, DecodingKey)>>;

/// Keys fetched from JWKS documents, by URL. Replaced whole on refresh.
#[derive(Default)]
pub struct JwksCache {
    sets: ArcSwap<HashMap<String, KeySet>>,
    /// Signalled when a token names a key id the cache does not hold, so
    /// the control plane refreshes early.
    pub wanted: tokio::sync::Notify,
}

impl JwksCache {
    /// Stores the keys of `url`; keys that cannot be used are skipped.
    pub fn set(&self, url: &str, set: &JwkSet) -> usize {
        let keys: Vec<(Option<String>, DecodingKey)> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                DecodingKey::from_jwk(jwk)
                    .ok()
                    .map(|key| (jwk.common.key_id.clone(), key))
            })
            .collect();
        let count = keys.len();
        let mut sets = HashMap::clone(&self.sets.load());
        sets.insert(url.to_owned(), Arc::new(keys));
        self.sets.store(Arc::new(sets));
        count
    }

    fn keys(&self, url: &str) -> Option<KeySet> {
        self.sets.load().get(url).cloned()
    }
}

fn refuse(code: Code, detail: impl Into<String>) -> Refusal {
    Refusal::new(code, detail)
}

fn decode_part(part: &str) -> Option<serde_json::Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `token` looks like a JWT: three dot-separated parts, or a
/// JSON header's base64 start (`eyJ`, `{"`) with other parts, which is
/// then refused as a malformed token rather than as an unknown key.
pub fn looks_like_jwt(token: &str) -> bool {
    !token.starts_with("tg_")
        && (token.split('.').count() == 3 || (token.starts_with("eyJ") && token.contains('.')))
}

/// A `NumericDate` claim (`exp`, `nbf`) that the verifier cannot read:
/// the refusal saying so (an `exp` before 1970 has expired).
fn unreadable_date(payload: &serde_json::Value, claim: &str) -> Option<Refusal> {
    let value = payload.get(claim)?;
    if value.as_u64().is_some() {
        return None;
    }
    if claim == "exp" && value.as_f64().is_some_and(|seconds| seconds < 0.0) {
        return Some(refuse(
            Code::TokenExpired,
            "The token has expired (its 'exp' is before 1970); get a new one from its issuer.",
        ));
    }
    Some(refuse(
        Code::TokenClaims,
        format!(
            "The token's '{claim}' claim is {value}, not a NumericDate: whole seconds since 1970 as a JSON number."
        ),
    ))
}

/// Verifies `token`.
pub fn verify<'j>(jwt: &'j JwtRt, token: &str, jwks: &JwksCache) -> Result<Verified<'j>, Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(
            Code::TokenMalformed,
            "The token is not a JWT (header.payload.signature).",
        ));
    };
    let (Some(header), Some(payload)) = (decode_part(header), decode_part(payload)) else {
        return Err(refuse(
            Code::TokenMalformed,
            "The token's header or payload is not base64url-encoded JSON.",
        ));
    };
    if header.get("crit").is_some() {
        // RFC 7515 §4.1.11: extensions marked critical that the recipient
        // does not understand (it understands none) make the token invalid.
        return Err(refuse(
            Code::TokenMalformed,
            "The token's header marks extensions as critical ('crit'), which this gateway does not support.",
        ));
    }
    let alg = header["alg"].as_str().unwrap_or_default();
    let Some(iss) = payload["iss"].as_str() else {
        return Err(refuse(Code::TokenClaims, "The token has no 'iss' claim."));
    };
    if let Some(refusal) = ["exp", "nbf"]
        .iter()
        .find_map(|claim| unreadable_date(&payload, claim))
    {
        return Err(refusal);
    }
    let Some(issuer) = jwt.issuers.iter().find(|i| i.issuer == iss) else {
        return Err(refuse(
            Code::TokenClaims,
            format!("This service does not trust tokens issued by '{iss}'."),
        ));
    };
    let algorithm = match alg {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
    .filter(|a| issuer.algorithms.contains(a));
    let Some(algorithm) = algorithm else {
        let allowed: Vec<String> = issuer.algorithms.iter().map(|a| format!("{a:?}")).collect();
        return Err(refuse(
            Code::TokenAlgorithm,
            format!(
                "Tokens from '{iss}' must be signed with {}; this one says '{alg}'.",
                allowed.join(" or ")
            ),
        ));
    };
    let fetched;
    let mut source = KeySource::Secret;
    let key = if algorithm == Algorithm::HS256 {
        issuer.secret.as_ref()
    } else if let Some(key) = &issuer.public_key {
        source = KeySource::PublicKey(issuer.public_key_body.as_deref().unwrap_or_default());
        Some(key)
    } else if let Some(url) = &issuer.jwks_url {
        source = KeySource::Jwks(url);
        let kid = header["kid"].as_str();
        fetched = jwks.keys(url);
        let found = fetched.as_ref().and_then(|keys| {
            keys.iter()
                .find(|(id, _)| kid.is_none() || id.as_deref() == kid)
                .map(|(_, key)| key)
        });
        if found.is_none() {
            jwks.wanted.notify_one();
        }
        found
    } else {
        None
    };
    let Some(key) = key else {
        return Err(refuse(
            Code::InvalidCredentials,
            format!(
                "No key of '{iss}' matches this token's key id; if the issuer just rotated its keys, retry in a few seconds."
            ),
        ));
    };
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[iss]);
    validation.leeway = issuer.leeway_s;
    validation.validate_nbf = true;
    if issuer.audiences.is_empty() {
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_aud = false;
    } else {
        // An issuer with audiences needs the token to name one: a missing
        // or unreadable `aud` is refused, not let through.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_audience(&issuer.audiences);
    }
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
        .map_err(|error| match error.kind() {
            ErrorKind::ExpiredSignature => refuse(
                Code::TokenExpired,
                "The token has expired; get a new one from its issuer.",
            ),
            ErrorKind::ImmatureSignature => refuse(
                Code::TokenNotYetValid,
                "The token is not valid yet (nbf); check the clocks.",
            ),
            ErrorKind::InvalidAudience => refuse(
                Code::TokenClaims,
                "The token's audience ('aud') is not one this service accepts.",
            ),
            ErrorKind::InvalidIssuer => {
                refuse(Code::TokenClaims, "The token's issuer is not trusted.")
            }
            ErrorKind::MissingRequiredClaim(claim) => refuse(
                Code::TokenClaims,
                format!("The token lacks the '{claim}' claim."),
            ),
            ErrorKind::InvalidClaimFormat(claim) => refuse(
                Code::TokenClaims,
                format!("The token's '{claim}' claim is not of the right type."),
            ),
            // Claims of the wrong type (`nbf` as a string…): the JSON
            // itself was read above.
            ErrorKind::Json(_) => refuse(
                Code::TokenClaims,
                format!("The token's claims cannot be read ({error})."),
            ),
            // A key of another family than the token's algorithm (an ES256
            // token naming an RSA key).
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_) => refuse(
                Code::TokenAlgorithm,
                "The token's algorithm does not match its issuer's key.",
            ),
            ErrorKind::InvalidSignature => refuse(
                Code::InvalidCredentials,
                "The token's signature does not verify.",
            ),
            _ => refuse(
                Code::TokenMalformed,
                format!("The token cannot be read ({error})."),
            ),
        })?
        .claims;
    let Some(subject) = claims.get(&jwt.app_claim).and_then(|v| v.as_str()) else {
        let why = if claims.get(&jwt.app_claim).is_some() {
            "is not a string"
        } else {
            "is missing"
        };
        return Err(refuse(
            Code::TokenClaims,
            format!(
                "The token's '{}' claim, which names the app, {why}.",
                jwt.app_claim
            ),
        ));
    };
    Ok(Verified {
        issuer: iss.to_owned(),
        subject: subject.to_owned(),
        source,
    })
}
