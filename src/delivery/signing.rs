//! `Upstash-Signature`: an HS256 JWT over the exact bytes sent, keyed with the tenant's
//! current signing key (the key string's UTF-8 bytes, `sig_` prefix included).
//!
//! Claims: `iss` "Upstash", `sub` the destination URL, `exp` (+5 min), `nbf`, `iat`,
//! `jti`, and `body` = base64url(SHA-256(body)). Receivers (`@upstash/qstash` and PyPI
//! `qstash` `Receiver`) verify with the current key, then the next one.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Lifetime of a signature, in seconds.
pub const LIFETIME_SECS: i64 = 300;

pub fn sign(key: &str, url: &str, body: &[u8], now_secs: i64, jti: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "Upstash",
        "sub": url,
        "exp": now_secs + LIFETIME_SECS,
        "nbf": now_secs,
        "iat": now_secs,
        "jti": jti,
        "body": URL_SAFE.encode(Sha256::digest(body)),
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_and_binds_the_body() {
        let token = sign(
            "sig_test",
            "https://example.com/hook",
            b"hello",
            1_700_000_000,
            "jwt_1",
        );
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"sig_test").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .expect("signature must verify with the key");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "Upstash");
        assert_eq!(claims["sub"], "https://example.com/hook");
        assert_eq!(claims["exp"], 1_700_000_300);
        assert_eq!(claims["nbf"], 1_700_000_000);
        // base64url(SHA-256("hello")), padded.
        assert_eq!(
            claims["body"],
            "LPJNul-wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
        let other = sign(
            "sig_test",
            "https://example.com/hook",
            b"hello!",
            1_700_000_000,
            "jwt_1",
        );
        assert_ne!(token, other);
    }
}
