//! Stream tokens: short-lived capabilities that let a browser's `EventSource` (which cannot send
//! headers) open one job's event stream. A token is a compact JWT (HS256) with the tenant as
//! `sub`, the job as `job`, audience `downloads-stream` and a required `exp`, signed with
//! `STREAM_TOKEN_SECRET`, which the intake (issuer) and the notifier (verifier) share. Like
//! Mercure's subscriber JWT it travels in the URL, so it is scoped to one job and expires soon.
//!
//! Only HS256 with a fixed header is issued and accepted (no `alg` negotiation, so neither
//! `none` nor key confusion can apply). It is written here rather than taken from `jsonwebtoken`
//! because that crate's HMAC backend brings RSA, ECDSA and EdDSA code this service never uses;
//! any JWT library verifies these tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The audience of stream tokens.
pub const STREAM_AUDIENCE: &str = "downloads-stream";
/// Shortest accepted signing secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The one header tokens carry, `{"alg":"HS256","typ":"JWT"}`, base64url-encoded as every token
/// begins.
const ENCODED_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// What a stream token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamClaims {
    /// The tenant owning the job.
    pub sub: String,
    /// The job.
    pub job: String,
    /// Always [`STREAM_AUDIENCE`].
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours: wrong shape, header, audience, or signature.
    #[error("the stream token is invalid")]
    Invalid,
    /// It was ours, and it expired.
    #[error("the stream token expired; ask the job's status for a fresh streamUrl")]
    Expired,
}

/// Issues and verifies stream tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    /// The MAC keyed with the secret, cloned per token (keying it costs two SHA-256 blocks).
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer with `secret` (at least [`MIN_SECRET_BYTES`] bytes; checked by the settings).
    pub fn new(secret: SecretString) -> Self {
        // HMAC takes keys of any length.
        let mac =
            Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("hmac accepts any key length");
        TokenSigner { mac }
    }

    /// A token for `job` of `tenant`, valid until `expires_at` (unix seconds).
    pub fn issue(&self, tenant: &str, job: &str, expires_at: i64) -> String {
        /// [`StreamClaims`], borrowed: what a token says, without copying it first.
        #[derive(Serialize)]
        struct Claims<'a> {
            sub: &'a str,
            job: &'a str,
            aud: &'a str,
            exp: i64,
        }
        let claims = Claims {
            sub: tenant,
            job,
            aud: STREAM_AUDIENCE,
            exp: expires_at,
        };
        // `{"sub":"…","job":"…","aud":"…","exp":…}`: 35 bytes of keys and punctuation and at
        // most 20 of `exp`; more only when a tenant or job needs escaping.
        let mut payload = Vec::with_capacity(55 + tenant.len() + job.len() + STREAM_AUDIENCE.len());
        serde_json::to_writer(&mut payload, &claims).expect("claims serialize");
        // One buffer, grown once: header, payload and signature appended in place.
        let signature_length = base64::encoded_len(32, false).unwrap_or_default();
        let payload_length = base64::encoded_len(payload.len(), false).unwrap_or_default();
        let mut token = String::with_capacity(ENCODED_HEADER.len() + 1 + payload_length + 1 + signature_length);
        token.push_str(ENCODED_HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
        token
    }

    /// The claims of a token signed with this secret, unexpired at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<StreamClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac.clone();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::Invalid)?;
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Invalid)?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| TokenError::Invalid)?;
        if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(TokenError::Invalid);
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Invalid)?;
        let claims: StreamClaims = serde_json::from_slice(&payload).map_err(|_| TokenError::Invalid)?;
        if claims.aud != STREAM_AUDIENCE {
            return Err(TokenError::Invalid);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(secret: &str) -> TokenSigner {
        TokenSigner::new(SecretString::from(secret.to_string()))
    }

    const SECRET: &str = "a-stream-token-secret-of-32-bytes!!";
    const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn a_token_verifies_until_it_expires() {
        let token = signer(SECRET).issue("acme", "job-1", 1_000);
        let claims = signer(SECRET).verify(&token, 999).unwrap();
        assert_eq!((claims.sub.as_str(), claims.job.as_str()), ("acme", "job-1"));
        assert_eq!(signer(SECRET).verify(&token, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn another_secret_a_tampered_payload_or_alg_none_is_invalid() {
        let token = signer(SECRET).issue("acme", "job-1", 1_000);
        assert_eq!(
            signer("another-secret-of-at-least-32-bytes").verify(&token, 0),
            Err(TokenError::Invalid)
        );
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"victim","job":"job-1","aud":"downloads-stream","exp":1000}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(signer(SECRET).verify(&forged, 0), Err(TokenError::Invalid));
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            signer(SECRET).verify(&format!("{none_header}.{}.", parts[1]), 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(signer(SECRET).verify("garbage", 0), Err(TokenError::Invalid));
    }

    #[test]
    fn the_token_is_a_standard_hs256_jwt() {
        let token = signer(SECRET).issue("acme", "job-1", 1_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), HEADER.as_bytes());
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub": "acme", "job": "job-1", "aud": STREAM_AUDIENCE, "exp": 1_000})
        );
        // HMAC-SHA256 of `header.payload` under the secret, computed afresh.
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            mac.finalize().into_bytes().as_slice()
        );
    }
}
