//! A fake identity provider: signs JWTs (HS256, RS256, ES256) and serves
//! its ES256 public keys as a JWKS document (RFC 7517) on loopback, with
//! key rotation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

struct EcKey {
    kid: String,
    private_pem: String,
    /// Uncompressed point: 0x04 ‖ X ‖ Y.
    public_point: Vec<u8>,
}

fn ec_key(kid: &str) -> EcKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    EcKey {
        kid: kid.to_owned(),
        private_pem: pair.serialize_pem(),
        public_point: pair.public_key_raw().to_vec(),
    }
}

struct State {
    ec_keys: Mutex<Vec<EcKey>>,
    jwks_fetches: AtomicUsize,
}

pub struct FakeIdp {
    pub addr: SocketAddr,
    pub issuer: String,
    /// HS256 shared secret.
    pub secret: String,
    rsa_private_pem: String,
    /// RS256 public key (SPKI PEM), for `public_key_pem`.
    pub rsa_public_pem: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl FakeIdp {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            ec_keys: Mutex::new(vec![ec_key("k1")]),
            jwks_fetches: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                            let keys: Vec<Value> = state
                                .ec_keys
                                .lock()
                                .unwrap()
                                .iter()
                                .map(|key| {
                                    json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
                                        "kid": key.kid,
                                        "x": b64(&key.public_point[1..33]),
                                        "y": b64(&key.public_point[33..65])})
                                })
                                .collect();
                            let body = json!({"keys": keys}).to_string();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        Self {
            addr,
            issuer: format!("http://{addr}/"),
            secret: "an-hs256-secret-of-at-least-32-bytes!!".into(),
            rsa_private_pem: rsa.serialize_pem(),
            rsa_public_pem: rsa.public_key_pem(),
            state,
            task,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Adds a new ES256 key (`kid`) and signs with it from now on.
    pub fn rotate(&self, kid: &str) {
        self.state.ec_keys.lock().unwrap().push(ec_key(kid));
    }

    /// Standard claims for `subject`, valid for an hour, from this issuer.
    pub fn claims(&self, subject: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({"iss": self.issuer, "sub": subject, "aud": "weather-api", "iat": now, "exp": now + 3600})
    }

    /// Signs `claims` with `alg` (ES256 with the newest key, RS256, HS256).
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(self.secret.as_bytes()),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.rsa_private_pem.as_bytes()).unwrap(),
            Algorithm::ES256 => {
                let keys = self.state.ec_keys.lock().unwrap();
                let newest = keys.last().unwrap();
                header.kid = Some(newest.kid.clone());
                EncodingKey::from_ec_pem(newest.private_pem.as_bytes()).unwrap()
            }
            other => panic!("the fake IdP does not sign {other:?}"),
        };
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A token whose header says `alg` but that is not signed by any real
    /// key (for `none` and algorithm-confusion tests).
    pub fn forge(&self, alg: &str, claims: &Value, signature: &[u8]) -> String {
        let header = json!({"alg": alg, "typ": "JWT"});
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(signature)
        )
    }
}
