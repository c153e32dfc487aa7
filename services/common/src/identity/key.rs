//! API keys: `dk_<id>_<secret><checksum>`, shaped like the keys people know (Stripe's `sk_live_`,
//! GitHub's `ghp_`): a readable prefix, an id that may appear in logs and lists, a high-entropy
//! secret, and a CRC32 checksum so a mistyped key is refused without a lookup. Only the SHA-256
//! of a key is stored; it is compared in constant time.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with.
pub const KEY_PREFIX: &str = "dk_";
/// Characters of the id part.
pub const KEY_ID_LENGTH: usize = 12;
/// Characters of the secret part (base62: about 190 bits).
pub const KEY_SECRET_LENGTH: usize = 32;
/// Characters of the checksum (base62 of a CRC32).
const CHECKSUM_LENGTH: usize = 6;
/// The whole key's length.
pub const KEY_LENGTH: usize = KEY_PREFIX.len() + KEY_ID_LENGTH + 1 + KEY_SECRET_LENGTH + CHECKSUM_LENGTH;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented key was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not shaped like `dk_<id>_<secret><checksum>`.
    #[error("the API key is malformed (expected dk_<id>_<secret>)")]
    Malformed,
    /// Shaped right, but the checksum does not match: a typo or a truncated copy.
    #[error("the API key's checksum does not match (mistyped or truncated?)")]
    Checksum,
}

/// A key whose shape and checksum are right; whether it exists is the directory's question.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    id: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PresentedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PresentedKey {
    /// Checks a key's shape and checksum.
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let text = text.trim();
        if text.len() != KEY_LENGTH || !text.starts_with(KEY_PREFIX) {
            return Err(KeyFormatError::Malformed);
        }
        let body = &text[KEY_PREFIX.len()..];
        let (id, rest) = body.split_at(KEY_ID_LENGTH);
        let Some(rest) = rest.strip_prefix('_') else {
            return Err(KeyFormatError::Malformed);
        };
        if !id.bytes().chain(rest.bytes()).all(|byte| byte.is_ascii_alphanumeric()) {
            return Err(KeyFormatError::Malformed);
        }
        let (secret, checksum) = rest.split_at(KEY_SECRET_LENGTH);
        let unsummed = &text[..text.len() - CHECKSUM_LENGTH];
        if checksum_of(unsummed).as_bytes().ct_eq(checksum.as_bytes()).unwrap_u8() != 1 {
            return Err(KeyFormatError::Checksum);
        }
        let _ = secret;
        Ok(PresentedKey {
            id: id.to_string(),
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// The key's id (safe to log).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this key is the one whose SHA-256 (hex) is `stored_sha256`, in constant time.
    pub fn matches(&self, stored_sha256: &str) -> bool {
        let presented = hex(&self.digest);
        presented.as_bytes().ct_eq(stored_sha256.as_bytes()).into()
    }
}

/// The id part of a key shaped like one (no checksum or digest computed: for deciding cheaply
/// whether checking it will need a lookup).
pub fn id_of(text: &str) -> Option<&str> {
    let text = text.trim();
    let id = text.strip_prefix(KEY_PREFIX)?.get(..KEY_ID_LENGTH)?;
    (text.len() == KEY_LENGTH && id.bytes().all(|byte| byte.is_ascii_alphanumeric())).then_some(id)
}

/// A newly generated key: the text to show once, and what is stored.
pub struct NewKey {
    /// The whole key, shown once.
    pub text: secrecy::SecretString,
    /// Its id.
    pub id: String,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    /// Its last four characters (for lists).
    pub last4: String,
}

/// Generates a key from the operating system's random source.
pub fn generate() -> NewKey {
    let mut random = rand::rng();
    let mut part = |length: usize| -> String {
        (0..length)
            .map(|_| BASE62[random.random_range(0..BASE62.len())] as char)
            .collect()
    };
    let id = part(KEY_ID_LENGTH);
    let secret = part(KEY_SECRET_LENGTH);
    let unsummed = format!("{KEY_PREFIX}{id}_{secret}");
    let text = format!("{unsummed}{}", checksum_of(&unsummed));
    NewKey {
        sha256: hex(&Sha256::digest(text.as_bytes())),
        last4: text[text.len() - 4..].to_string(),
        id,
        text: text.into(),
    }
}

fn checksum_of(unsummed: &str) -> String {
    let mut value = u64::from(crc32fast::hash(unsummed.as_bytes()));
    let mut digits = [b'0'; CHECKSUM_LENGTH];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits.to_vec()).unwrap_or_default()
}

/// Lowercase hex of bytes (on every authenticated request: one allocation, not one per byte).
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    text
}

/// Appends the lowercase hex of bytes to `text`.
pub fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn a_generated_key_parses_and_matches_its_stored_digest_only() {
        let key = generate();
        let text = key.text.expose_secret();
        assert_eq!(text.len(), KEY_LENGTH);
        assert!(text.starts_with("dk_"));
        let presented = PresentedKey::parse(text).unwrap();
        assert_eq!(presented.id(), key.id);
        assert!(presented.matches(&key.sha256));
        assert_eq!(id_of(text), Some(key.id.as_str()));
        assert_eq!(id_of("dk_short"), None);
        assert!(!presented.matches(&generate().sha256));
        assert!(text.ends_with(&key.last4));
    }

    #[test]
    fn a_typo_fails_the_checksum_without_a_lookup() {
        let key = generate();
        let text = key.text.expose_secret().to_string();
        let position = KEY_PREFIX.len() + KEY_ID_LENGTH + 5;
        let replaced = if &text[position..=position] == "a" { "b" } else { "a" };
        let typo = format!("{}{replaced}{}", &text[..position], &text[position + 1..]);
        assert_eq!(PresentedKey::parse(&typo), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn malformed_keys_are_named_as_such() {
        let key = generate();
        let text = key.text.expose_secret();
        for bad in [
            "",
            "dk_",
            "sk_live_abc",
            &text[..text.len() - 1],
            &format!("{text}x"),
            &text.replace("dk_", "dx_"),
            &format!("dk_{}-{}", &text[3..15], &text[16..]),
        ] {
            assert_eq!(PresentedKey::parse(bad), Err(KeyFormatError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_debug_form_shows_the_id_and_never_the_secret() {
        let key = generate();
        let presented = PresentedKey::parse(key.text.expose_secret()).unwrap();
        let shown = format!("{presented:?}");
        assert!(shown.contains(&key.id));
        assert!(!shown.contains(&key.text.expose_secret()[16..]));
    }
}
