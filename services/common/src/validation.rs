//! Validation rules shared by every entry point: file ids, callback URLs and user ids.

use std::ops::RangeInclusive;

/// File ids the system accepts.
pub const FILE_ID_RANGE: RangeInclusive<u64> = 10_000..=100_000_000;
/// How many file ids one job may request.
pub const FILE_IDS_PER_JOB: RangeInclusive<usize> = 1..=1000;
/// Longest accepted callback URL, in bytes.
pub const CALLBACK_URL_MAX_BYTES: usize = 2048;
/// Longest accepted user id, in bytes.
pub const USER_ID_MAX_BYTES: usize = 128;

/// Checks a file id's range.
pub fn check_file_id(file_id: i64) -> Result<u64, String> {
    u64::try_from(file_id)
        .ok()
        .filter(|id| FILE_ID_RANGE.contains(id))
        .ok_or_else(|| {
            format!(
                "file id {file_id} is out of range {}..={}",
                FILE_ID_RANGE.start(),
                FILE_ID_RANGE.end()
            )
        })
}

/// De-duplicates file ids, keeping the first occurrence's order.
pub fn dedupe_file_ids(file_ids: &[u64]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::with_capacity(file_ids.len());
    file_ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// The callback URLs the document promises to accept (a subset of what [`check_callback_url`]
/// takes: lower-case http(s), a host name of letter-led labels, an optional port, a path of
/// URL characters), so that anything a client generates from the pattern is accepted.
pub const CALLBACK_URL_PATTERN: &str = "^https?://[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:\\.[a-z][a-z0-9]*(?:-[a-z0-9]+)*)*(?::[1-9][0-9]{0,3})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$";

/// Checks a callback URL: absolute http(s), with a host, no credentials, at most 2048 bytes.
/// Where it may point (SSRF rules) is checked again on the resolved address when it is called.
pub fn check_callback_url(text: &str) -> Result<url::Url, String> {
    if text.len() > CALLBACK_URL_MAX_BYTES {
        return Err(format!("callbackUrl is longer than {CALLBACK_URL_MAX_BYTES} bytes"));
    }
    let parsed = url::Url::parse(text).map_err(|error| format!("callbackUrl is not an absolute URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("callbackUrl must use http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("callbackUrl must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("callbackUrl must not carry credentials".into());
    }
    Ok(parsed)
}

/// Checks a user id given by the trusted gateway: 1-128 bytes of `[A-Za-z0-9._@:+-]`.
pub fn check_user_id(text: &str) -> Result<&str, String> {
    let valid_bytes = text
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'@' | b':' | b'+' | b'-'));
    if text.is_empty() || text.len() > USER_ID_MAX_BYTES || !valid_bytes {
        return Err(format!(
            "X-User-Id must be 1-{USER_ID_MAX_BYTES} characters of letters, digits and . _ @ : + -"
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_bounds_are_inclusive() {
        assert_eq!(check_file_id(10_000), Ok(10_000));
        assert_eq!(check_file_id(100_000_000), Ok(100_000_000));
        assert!(check_file_id(9_999).unwrap_err().contains("9999"));
        assert!(check_file_id(100_000_001).is_err());
        assert!(check_file_id(-1).is_err());
    }

    #[test]
    fn duplicates_count_once_in_first_seen_order() {
        assert_eq!(
            dedupe_file_ids(&[30000, 10000, 30000, 20000, 10000]),
            vec![30000, 10000, 20000]
        );
    }

    #[test]
    fn callback_urls_must_be_absolute_http() {
        assert!(check_callback_url("https://hooks.example.com/x?y=1").is_ok());
        assert!(check_callback_url("ftp://example.com/").is_err());
        assert!(check_callback_url("/relative").is_err());
        assert!(check_callback_url("javascript:alert(1)").is_err());
        assert!(check_callback_url("http://user:pw@example.com/").is_err());
        let long = format!("https://example.com/{}", "a".repeat(CALLBACK_URL_MAX_BYTES));
        assert!(check_callback_url(&long).unwrap_err().contains("2048"));
    }

    #[test]
    fn user_ids_are_restricted_to_safe_characters() {
        assert!(check_user_id("alice@example.com").is_ok());
        assert!(check_user_id("").is_err());
        assert!(check_user_id("a b").is_err());
        assert!(check_user_id("a.>").is_err());
        assert!(check_user_id(&"a".repeat(129)).is_err());
    }
}
