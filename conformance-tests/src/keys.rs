//! Keys the runner needs: client key pairs for `private_key_jwt` (ES384 and RS384, with the
//! JWKS to register), and a small OpenID issuer of its own, served on 127.0.0.1, that a server
//! under test can be told to trust. With it the runner can mint validly signed tokens that a
//! correct server must still refuse (expired, not yet valid, for another audience) — cases a
//! black box cannot produce from the server's own keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that authenticates with a signed assertion.
#[derive(Clone)]
pub struct AsymmetricClient {
    pub client_id: String,
    pub kid: String,
    pub algorithm: Algorithm,
    key: EncodingKey,
    /// The public half, as the JWKS to register for the client.
    pub jwks: Value,
}

impl std::fmt::Debug for AsymmetricClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AsymmetricClient({}, {:?})",
            self.client_id, self.algorithm
        )
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn kid() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<9>())
}

impl AsymmetricClient {
    /// A fresh P-384 key pair (ES384).
    pub fn es384(client_id: &str) -> AsymmetricClient {
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        use p384::pkcs8::EncodePrivateKey;
        let secret = loop {
            if let Ok(secret) = p384::SecretKey::from_slice(&random_bytes::<48>()) {
                break secret;
            }
        };
        let point = secret.public_key().to_encoded_point(false);
        let kid = kid();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-384", "alg": "ES384", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
            "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
        }]});
        let der = secret.to_pkcs8_der().expect("PKCS#8");
        AsymmetricClient {
            client_id: client_id.to_owned(),
            kid,
            algorithm: Algorithm::ES384,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            jwks,
        }
    }

    /// A fresh 2048-bit RSA key pair (RS384).
    pub fn rs384(client_id: &str) -> AsymmetricClient {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let public = private.to_public_key();
        let kid = kid();
        let jwks = json!({"keys": [{
            "kty": "RSA", "alg": "RS384", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]});
        let der = private.to_pkcs1_der().expect("PKCS#1");
        AsymmetricClient {
            client_id: client_id.to_owned(),
            kid,
            algorithm: Algorithm::RS384,
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwks,
        }
    }

    /// A client assertion for `token_url` (SMART Backend Services), with a fresh `jti`.
    /// A client assertion for `token_url`, valid for four minutes (SMART allows at most five).
    pub fn assertion(&self, token_url: &str) -> String {
        self.assertion_for(token_url, 240)
    }

    /// A client assertion that expires `lifetime_secs` from now.
    pub fn assertion_for(&self, token_url: &str, lifetime_secs: i64) -> String {
        let now = now();
        let claims = json!({
            "iss": self.client_id, "sub": self.client_id, "aud": token_url,
            "exp": now + lifetime_secs, "iat": now, "jti": kid(),
        });
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("an assertion")
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// An OpenID issuer run by the runner: discovery and JWKS on 127.0.0.1, ES256 tokens signed
/// with claims of the caller's choosing.
pub struct TestIssuer {
    pub url: String,
    /// Published keys, oldest first; the last one signs. `rotate` adds one.
    keys: std::sync::Arc<std::sync::RwLock<Vec<PublishedKey>>>,
    /// A key the issuer does not publish: tokens signed with it carry an unknown kid.
    stray: EncodingKey,
}

struct PublishedKey {
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

fn published_key() -> PublishedKey {
    let (key, x, y) = p256_key();
    let kid = kid();
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y});
    PublishedKey { kid, key, jwk }
}

fn p256_key() -> (EncodingKey, String, String) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let secret = loop {
        if let Ok(secret) = p256::SecretKey::from_slice(&random_bytes::<32>()) {
            break secret;
        }
    };
    let point = secret.public_key().to_encoded_point(false);
    let der = secret.to_pkcs8_der().expect("PKCS#8");
    (
        EncodingKey::from_ec_der(der.as_bytes()),
        URL_SAFE_NO_PAD.encode(point.x().expect("x")),
        URL_SAFE_NO_PAD.encode(point.y().expect("y")),
    )
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestIssuer({})", self.url)
    }
}

impl TestIssuer {
    /// Starts serving on a free port; the server runs until the process ends.
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let (stray, _, _) = p256_key();
        let keys = std::sync::Arc::new(std::sync::RwLock::new(vec![published_key()]));
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks"),
            "id_token_signing_alg_values_supported": ["ES256"]})
        .to_string();
        let served = keys.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let discovery = discovery.clone();
                let jwks = {
                    let keys = served.read().expect("the key list");
                    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
                        .to_string()
                };
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let line = String::from_utf8_lossy(&request[..n]);
                    let body = if line.starts_with("GET /.well-known/openid-configuration") {
                        Some(discovery)
                    } else if line.starts_with("GET /jwks") {
                        Some(jwks)
                    } else {
                        None
                    };
                    let response = match body {
                        Some(body) => format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        TestIssuer { url, keys, stray }
    }

    /// Publishes a new key and signs with it from now on (the old one stays published).
    pub fn rotate(&self) {
        if let Ok(mut keys) = self.keys.write() {
            keys.push(published_key());
        }
    }

    /// A token with these claims (iss defaults to this issuer), signed with its published key.
    pub fn mint(&self, claims: &Value) -> String {
        let keys = self.keys.read().expect("the key list");
        let signing = keys.last().expect("a published key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signing.kid.clone());
        jsonwebtoken::encode(&header, &self.with_issuer(claims), &signing.key).expect("a token")
    }

    /// A token signed with a key this issuer never published.
    pub fn mint_with_unknown_key(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("not-a-published-key".into());
        jsonwebtoken::encode(&header, &self.with_issuer(claims), &self.stray).expect("a token")
    }

    fn with_issuer(&self, claims: &Value) -> Value {
        let mut claims = claims.clone();
        if claims.get("iss").is_none() {
            claims["iss"] = self.url.clone().into();
        }
        claims
    }
}
