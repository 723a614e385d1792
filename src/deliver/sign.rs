//! Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of
//! `id.timestamp.body`, keyed with the base64-decoded `whsec_` secret.

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};

use crate::config::WebhookSecret;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// One `v1,...` signature.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(&secret.key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The `webhook-signature` header: one signature per secret, space-separated,
/// so receivers keep verifying while a secret is rotated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a WebhookSecret>,
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|secret| sign(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector published with the Standard Webhooks specification.
    #[test]
    fn matches_the_standard_webhooks_vector() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn several_secrets_sign_with_each() {
        let first: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let second: WebhookSecret = "whsec_c2Vjb25kIHNlY3JldA==".parse().unwrap();
        let header = signature_header([&first, &second], "msg_1", 1, "é".as_bytes());
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            vec![
                sign(&first, "msg_1", 1, "é".as_bytes()),
                sign(&second, "msg_1", 1, "é".as_bytes())
            ]
        );
        assert_ne!(parts[0], parts[1]);
    }
}
