//! Webhook signatures per the Standard Webhooks specification: `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! with `whsec_<base64 key>` secrets. Several space-separated signatures are sent while secrets
//! rotate; receivers accept any one that verifies. [`verify`] is the function receivers use.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of webhook secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a timestamp may be from the receiver's clock.
pub const TIMESTAMP_TOLERANCE_SECONDS: i64 = 5 * 60;

/// A signing secret could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("webhook secrets look like whsec_<base64>, this one does not")]
pub struct BadSecret;

/// Why a delivery was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The timestamp is not a number.
    #[error("webhook-timestamp is not a unix timestamp")]
    BadTimestamp,
    /// The timestamp is too old or too far in the future (replay protection).
    #[error("webhook-timestamp is outside the tolerance")]
    StaleTimestamp,
    /// No signature matched.
    #[error("no webhook-signature matches")]
    NoMatch,
    /// A configured secret is malformed.
    #[error(transparent)]
    Secret(#[from] BadSecret),
}

fn key_of(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(BadSecret)?;
    let key = STANDARD.decode(encoded).map_err(|_| BadSecret)?;
    if key.is_empty() { Err(BadSecret) } else { Ok(key) }
}

/// Checks that a secret is usable (for configuration).
pub fn check_secret(secret: &str) -> Result<(), BadSecret> {
    key_of(secret).map(|_| ())
}

/// The `v1,<signature>` of one message with one secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, BadSecret> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(secret)?).map_err(|_| BadSecret)?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[String], id: &str, timestamp: i64, body: &[u8]) -> Result<String, BadSecret> {
    let signatures: Result<Vec<String>, BadSecret> =
        secrets.iter().map(|secret| sign(secret, id, timestamp, body)).collect();
    Ok(signatures?.join(" "))
}

/// Verifies a delivery as a receiver: the timestamp is within tolerance of `now` and one of the
/// signatures in `signature_header` matches one of `secrets` (compared in constant time).
pub fn verify(
    secrets: &[&str],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now - timestamp).abs() > TIMESTAMP_TOLERANCE_SECONDS {
        return Err(VerifyError::StaleTimestamp);
    }
    for secret in secrets {
        let key = key_of(secret)?;
        for candidate in signature_header.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(signature) = STANDARD.decode(encoded) else {
                continue;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| BadSecret)?;
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            if mac.verify_slice(&signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_receiver_accepts_a_signed_delivery_and_refuses_tampering() {
        let header = signature_header(&[SECRET.to_string()], "id-1", 1_700_000_000, b"{}").unwrap();
        assert_eq!(
            verify(&[SECRET], "id-1", "1700000000", &header, b"{}", 1_700_000_010),
            Ok(())
        );
        assert_eq!(
            verify(&[SECRET], "id-1", "1700000000", &header, b"{ }", 1_700_000_010),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&[SECRET], "id-2", "1700000000", &header, b"{}", 1_700_000_010),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&[SECRET], "id-1", "1700000000", &header, b"{}", 1_700_001_000),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            verify(&[SECRET], "id-1", "soon", &header, b"{}", 1_700_000_000),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn during_rotation_either_secret_verifies() {
        let new_secret = format!("{SECRET_PREFIX}{}", STANDARD.encode(b"a brand new key"));
        let header = signature_header(&[new_secret.clone(), SECRET.to_string()], "id", 100, b"x").unwrap();
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(verify(&[SECRET], "id", "100", &header, b"x", 100), Ok(()));
        assert_eq!(verify(&[new_secret.as_str()], "id", "100", &header, b"x", 100), Ok(()));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(check_secret("nope"), Err(BadSecret));
        assert_eq!(check_secret("whsec_!!!"), Err(BadSecret));
        assert_eq!(check_secret(SECRET), Ok(()));
    }
}
