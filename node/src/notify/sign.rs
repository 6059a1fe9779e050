//! Standard Webhooks 1.0 signatures: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one
//! per signing secret, space-separated (several while a secret is being rotated out).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use statusmesh_crdt::webhooks::secret_key;

/// The `webhook-signature` header for `body` sent as message `id` at `timestamp_s`, signed
/// with every secret of `secrets` (ones that do not decode are skipped: validation keeps
/// them out of the document).
pub fn signature<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    id: &str,
    timestamp_s: u64,
    body: &[u8],
) -> String {
    let mut out = Vec::new();
    for secret in secrets {
        let Ok(key) = secret_key(secret) else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push(format!(
            "v1,{}",
            STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    out.join(" ")
}

/// A fresh `whsec_` secret of 32 random bytes.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_specifications_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature([secret], id, 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_secret_signs_and_a_generated_one_is_valid() {
        let generated = generate_secret();
        assert!(secret_key(&generated).is_ok());
        let both = signature(
            [generated.as_str(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "m",
            1,
            b"{}",
        );
        assert_eq!(both.split(' ').count(), 2);
        assert!(both.split(' ').all(|s| s.starts_with("v1,")));
    }
}
