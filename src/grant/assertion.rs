//! Client assertions (RFC 7523 §2.2, OpenID Connect Core §9): instead of
//! sending a secret, the client sends a short-lived JWT it signed —
//! `private_key_jwt` with its private key (RS256, PS256, ES256, EdDSA),
//! `client_secret_jwt` with its secret (HS256). `iss` and `sub` are the
//! client id, `aud` the token endpoint (or `assertion_audience`), a fresh
//! `jti` for each request, `exp` a minute after `iat`.
//!
//! Signed with ring (already the TLS provider's): a JWT is two base64url
//! JSON objects and a signature, and no JOSE crate adds what a client
//! needs without a second crypto stack.

use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// How long an assertion is valid: long enough for a slow request, short
/// enough that a captured one is soon worthless.
pub const LIFETIME: Duration = Duration::from_secs(60);

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A JWS algorithm a client signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum Alg {
    RS256,
    PS256,
    ES256,
    EdDSA,
    HS256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }
}

enum Signer {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Hmac(ring::hmac::Key),
}

/// A client's signing key and how it signs; compared by what it was made
/// from (a reload with the same key file changes nothing).
pub struct AssertionKey {
    signer: Signer,
    alg: Alg,
    kid: Option<String>,
    /// The certificate's thumbprints (`x5t`, `x5t#S256`), for providers
    /// that name the key by its certificate (Microsoft Entra ID).
    x5t: Option<(String, String)>,
    /// A digest of the key material, for comparison (never the key).
    digest: [u8; 32],
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PartialEq for AssertionKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.alg == other.alg && self.kid == other.kid
    }
}

impl AssertionKey {
    /// A private key from a PEM file's content (PKCS#8, or PKCS#1 for
    /// RSA). `alg` defaults to the key's kind (RSA: RS256, P-256: ES256,
    /// Ed25519: EdDSA); one that does not fit the key is an error. `kid`
    /// defaults to the key's JWK thumbprint (RFC 7638).
    pub fn private(pem: &[u8], alg: Option<Alg>, kid: Option<String>) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            "holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\")".to_string()
        })?;
        let rng = SystemRandom::new();
        let (signer, kind) = match &der {
            PrivateKeyDer::Pkcs1(k) => (
                Signer::Rsa(
                    RsaKeyPair::from_der(k.secret_pkcs1_der())
                        .map_err(|e| format!("is not a usable RSA key: {e}"))?,
                ),
                "an RSA key",
            ),
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                if let Ok(rsa) = RsaKeyPair::from_pkcs8(bytes) {
                    (Signer::Rsa(rsa), "an RSA key")
                } else if let Ok(ec) = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    bytes,
                    &rng,
                ) {
                    (Signer::Ecdsa(ec), "an EC P-256 key")
                } else if let Ok(ed) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                    (Signer::Ed25519(ed), "an Ed25519 key")
                } else {
                    return Err("is a PKCS#8 key of a kind that cannot sign here: use RSA (2048 bits or more), EC P-256 or Ed25519".into());
                }
            }
            PrivateKeyDer::Sec1(_) => {
                return Err("is an EC key in SEC1 form (\"BEGIN EC PRIVATE KEY\"): convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`".into());
            }
            _ => return Err("is a private key of an unknown form".into()),
        };
        let fits = |a: Alg| {
            matches!(
                (&signer, a),
                (Signer::Rsa(_), Alg::RS256 | Alg::PS256)
                    | (Signer::Ecdsa(_), Alg::ES256)
                    | (Signer::Ed25519(_), Alg::EdDSA)
            )
        };
        let alg = match alg {
            Some(a) if fits(a) => a,
            Some(a) => {
                return Err(format!(
                    "is {kind}, which cannot sign {} (signing_alg)",
                    a.name()
                ));
            }
            None => match signer {
                Signer::Rsa(_) => Alg::RS256,
                Signer::Ecdsa(_) => Alg::ES256,
                _ => Alg::EdDSA,
            },
        };
        let mut key = AssertionKey {
            signer,
            alg,
            kid,
            x5t: None,
            digest: Sha256::digest(pem).into(),
        };
        if key.kid.is_none() {
            key.kid = Some(key.thumbprint());
        }
        Ok(key)
    }

    /// `client_secret_jwt`: HS256 with the client secret.
    pub fn secret(secret: &Secret) -> Self {
        AssertionKey {
            signer: Signer::Hmac(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                secret.expose().as_bytes(),
            )),
            alg: Alg::HS256,
            kid: None,
            x5t: None,
            digest: Sha256::digest(secret.expose().as_bytes()).into(),
        }
    }

    /// Names the key by its certificate too (`der`: the certificate, DER).
    pub fn with_certificate(mut self, der: &[u8]) -> Self {
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        self.x5t = Some((B64URL.encode(sha1), B64URL.encode(Sha256::digest(der))));
        self
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The public key as a JWK (RFC 7517), for registering it with the
    /// provider (`tokenkeeper check` prints nothing secret).
    pub fn public_jwk(&self) -> Option<serde_json::Value> {
        let mut jwk = match &self.signer {
            Signer::Rsa(k) => {
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                serde_json::json!({"kty": "RSA", "e": B64URL.encode(&c.e), "n": B64URL.encode(&c.n)})
            }
            Signer::Ecdsa(k) => {
                // the uncompressed point: 0x04, x, y
                let p = k.public_key().as_ref();
                serde_json::json!({"crv": "P-256", "kty": "EC",
                    "x": B64URL.encode(&p[1..33]), "y": B64URL.encode(&p[33..65])})
            }
            Signer::Ed25519(k) => serde_json::json!({"crv": "Ed25519", "kty": "OKP",
                "x": B64URL.encode(k.public_key().as_ref())}),
            Signer::Hmac(_) => return None,
        };
        if let Some(kid) = &self.kid {
            jwk["kid"] = serde_json::json!(kid);
        }
        jwk["alg"] = serde_json::json!(self.alg.name());
        jwk["use"] = serde_json::json!("sig");
        Some(jwk)
    }

    /// The public JWK's required members alone (RFC 7638 §3.2), in
    /// lexicographic order (serde_json's map keeps keys sorted): what a
    /// thumbprint digests, and what a DPoP proof's header carries.
    fn required_jwk(&self) -> Option<serde_json::Value> {
        let jwk = self.public_jwk()?;
        let members: &[&str] = match jwk["kty"].as_str() {
            Some("RSA") => &["e", "kty", "n"],
            Some("EC") => &["crv", "kty", "x", "y"],
            _ => &["crv", "kty", "x"],
        };
        Some(serde_json::Value::Object(
            members
                .iter()
                .map(|m| (m.to_string(), jwk[*m].clone()))
                .collect(),
        ))
    }

    /// RFC 7638: the SHA-256 of the public JWK's required members, in
    /// lexicographic order, base64url (a DPoP token's `cnf.jkt`).
    pub fn thumbprint(&self) -> String {
        let Some(required) = self.required_jwk() else {
            return String::new();
        };
        B64URL.encode(Sha256::digest(required.to_string().as_bytes()))
    }

    /// The signed JWT for `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<Secret, String> {
        let mut header = serde_json::json!({"alg": self.alg.name(), "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = serde_json::json!(kid);
        }
        if let Some((sha1, sha256)) = &self.x5t {
            header["x5t"] = serde_json::json!(sha1);
            header["x5t#S256"] = serde_json::json!(sha256);
        }
        self.sign_jws(&header, claims)
    }

    /// A DPoP proof (RFC 9449 §4.2) for a request `htm` `htu` at `now`:
    /// the public key in its header, a fresh `jti`, the server's `nonce`
    /// when it asked for one, and `ath` (the access token's SHA-256) when
    /// the proof goes with a token to a resource. `htu` without its query
    /// and fragment.
    pub fn dpop_proof(
        &self,
        htm: &str,
        htu: &url::Url,
        now: SystemTime,
        nonce: Option<&str>,
        access_token: Option<&Secret>,
    ) -> Result<Secret, String> {
        let jwk = self
            .required_jwk()
            .ok_or("a DPoP proof is signed with a private key, not a secret")?;
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": self.alg.name(), "jwk": jwk});
        let mut htu = htu.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let mut claims = serde_json::json!({
            "jti": jti(),
            "htm": htm,
            "htu": htu.as_str(),
            "iat": now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = serde_json::json!(nonce);
        }
        if let Some(token) = access_token {
            claims["ath"] = serde_json::json!(B64URL.encode(Sha256::digest(token.expose())));
        }
        self.sign_jws(&header, &claims)
    }

    /// `header` and `claims` signed: a compact JWS.
    fn sign_jws(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<Secret, String> {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(k) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, input.as_bytes(), &mut sig)
                    .map_err(|_| "cannot sign the client assertion".to_string())?;
                sig
            }
            Signer::Ecdsa(k) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "cannot sign the client assertion".to_string())?
                .as_ref()
                .to_vec(),
            Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Hmac(k) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
        };
        Ok(Secret::new(format!("{input}.{}", B64URL.encode(sig))))
    }

    /// The JWT bearer grant's assertion (RFC 7523 §2.1): `sub` if given,
    /// and the scopes as a `scope` claim if they go there (Google).
    pub fn grant_assertion(
        &self,
        issuer: &str,
        subject: Option<&str>,
        audience: &str,
        scope: Option<&str>,
        now: SystemTime,
    ) -> Result<Secret, String> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": issuer,
            "aud": audience,
            "jti": jti(),
            "iat": iat,
            "exp": iat + LIFETIME.as_secs(),
        });
        if let Some(sub) = subject {
            claims["sub"] = serde_json::json!(sub);
        }
        if let Some(scope) = scope {
            claims["scope"] = serde_json::json!(scope);
        }
        self.sign(&claims)
    }

    /// A client assertion for `client_id` to `audience` at `now`: `iss`
    /// and `sub` the client id (RFC 7523 §3).
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Secret, String> {
        self.grant_assertion(client_id, Some(client_id), audience, None, now)
    }
}

/// A new EC P-256 private key, as a PKCS#8 PEM file's content (what
/// [`AssertionKey::private`] reads; ES256, the algorithm every DPoP server
/// accepts).
pub fn generate_p256() -> Result<Secret, String> {
    use base64::engine::general_purpose::STANDARD;
    let der = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .map_err(|_| "cannot generate an EC P-256 key".to_string())?;
    let body = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(Secret::new(pem))
}

/// 128 random bits, base64url: an assertion's id, never used twice.
fn jti() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut b);
    B64URL.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str, dir: &std::path::Path) {
        let ok = std::process::Command::new("sh")
            .args(["-c", cmd])
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cmd}");
    }

    /// Each kind of key signs what openssl verifies with its public half,
    /// and names its algorithm; a key that does not fit the algorithm is
    /// refused, saying why.
    #[test]
    fn keys_sign_what_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run(
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem && openssl genpkey -algorithm ED25519 -out ed.pem && openssl ecparam -name prime256v1 -genkey -noout -out sec1.pem",
            d,
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (file, alg, verify) in [
            ("rsa.pem", None, "-sha256"),
            (
                "rsa.pem",
                Some(Alg::PS256),
                "-sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1",
            ),
            ("ec.pem", None, ""),
            ("ed.pem", None, ""),
        ] {
            let key =
                AssertionKey::private(&std::fs::read(d.join(file)).unwrap(), alg, None).unwrap();
            let jwt = key.assertion("my-app", "https://idp/token", now).unwrap();
            let parts: Vec<&str> = jwt.expose().split('.').collect();
            let header: serde_json::Value =
                serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
            let claims: serde_json::Value =
                serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
            assert_eq!(header["alg"], key.alg().name());
            assert_eq!(header["kid"].as_str(), key.kid());
            assert_eq!(claims["aud"], "https://idp/token");
            assert_eq!(claims["iss"], "my-app");
            assert_eq!(claims["exp"], 1_800_000_060u64);
            let mut sig = B64URL.decode(parts[2]).unwrap();
            if key.alg() == Alg::ES256 {
                // JWS: r || s; openssl: DER
                let der = |x: &[u8]| {
                    let x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
                    let mut v = if x[0] & 0x80 != 0 { vec![0] } else { vec![] };
                    v.extend(x);
                    let mut out = vec![2, v.len() as u8];
                    out.extend(v);
                    out
                };
                let (r, s) = (der(&sig[..32]), der(&sig[32..]));
                sig = vec![0x30, (r.len() + s.len()) as u8];
                sig.extend(r);
                sig.extend(s);
            }
            std::fs::write(d.join("input"), format!("{}.{}", parts[0], parts[1])).unwrap();
            std::fs::write(d.join("sig"), sig).unwrap();
            run(&format!("openssl pkey -in {file} -pubout -out pub.pem"), d);
            let check = if file == "ed.pem" {
                "openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in input -sigfile sig"
                    .to_string()
            } else {
                format!("openssl dgst {verify} -verify pub.pem -signature sig input")
            };
            run(&check, d);
            assert_eq!(key.public_jwk().unwrap()["kid"].as_str(), key.kid());
        }
        let ec = std::fs::read(d.join("ec.pem")).unwrap();
        let err = AssertionKey::private(&ec, Some(Alg::RS256), None).unwrap_err();
        assert_eq!(
            err,
            "is an EC P-256 key, which cannot sign RS256 (signing_alg)"
        );
        let err = AssertionKey::private(&std::fs::read(d.join("sec1.pem")).unwrap(), None, None)
            .unwrap_err();
        assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
        let err = AssertionKey::private(b"not a key", None, None).unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
    }

    /// A key named by its certificate: `x5t#S256` and `x5t` in the header
    /// are the certificate's SHA-256 and SHA-1, as openssl computes them.
    #[test]
    fn a_certificate_names_the_key_by_its_thumbprints() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run(
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k.pem && openssl req -x509 -key k.pem -out c.crt -days 1 -subj /CN=app && openssl x509 -in c.crt -outform DER -out c.der",
            d,
        );
        let thumb = |alg: &str| {
            let out = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "openssl dgst -{alg} -binary c.der | base64 | tr '+/' '-_' | tr -d '=\\n'"
                    ),
                ])
                .current_dir(d)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let key = AssertionKey::private(
            &std::fs::read(d.join("k.pem")).unwrap(),
            Some(Alg::PS256),
            None,
        )
        .unwrap()
        .with_certificate(&std::fs::read(d.join("c.der")).unwrap());
        let jwt = key
            .assertion("app", "https://login.example/token", SystemTime::UNIX_EPOCH)
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &B64URL
                .decode(jwt.expose().split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["x5t#S256"], thumb("sha256"));
        assert_eq!(header["x5t"], thumb("sha1"));
        assert_eq!(header["alg"], "PS256");
    }

    /// RFC 7638 §3.1's example key has the thumbprint the RFC gives.
    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = serde_json::json!({"e": "AQAB", "kty": "RSA", "n": n});
        let got = B64URL.encode(Sha256::digest(jwk.to_string().as_bytes()));
        assert_eq!(got, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn client_secret_jwt_is_hs256_with_the_secret() {
        let key = AssertionKey::secret(&Secret::new("s3cret"));
        let jwt = key
            .assertion("app", "https://idp/token", SystemTime::UNIX_EPOCH)
            .unwrap();
        let parts: Vec<&str> = jwt.expose().rsplitn(2, '.').collect();
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let sig = B64URL.decode(parts[0]).unwrap();
        assert!(ring::hmac::verify(&k, parts[1].as_bytes(), &sig).is_ok());
        assert!(key.public_jwk().is_none());
        assert!(!format!("{key:?}").contains("s3cret"));
    }
}
