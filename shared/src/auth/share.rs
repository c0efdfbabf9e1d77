//! Share links: a token that reads one job, and nothing else, until it expires or the
//! job's links are revoked.
//!
//! **Design.** A share token is signed, not stored: `lss1.{job}.{generation}.{exp}.{mac}`,
//! where `mac` is HMAC-SHA256 under the deployment's `LOGSTREAM_SHARE_SECRET` of
//! everything before it, base64url. Any function verifies it with the secret alone, no
//! shared state; a token names its job, so it cannot be replayed against another job,
//! and another deployment (another secret) cannot verify it. Revocation is a counter:
//! each job has a share generation in Redis (`job:{ID}:share`, 0 until first revoked),
//! a token carries the generation it was issued under, and revoking increments it, so
//! every earlier token of the job fails at once. That key lives 8 days after it was
//! last touched, longer than any token (at most 7 days) and independent of the job's
//! own keys, so a revocation holds after Redis has forgotten the job. The only read it
//! costs is one `GET`, and only for requests that carry a share token.
//!
//! Chosen over tokens stored hashed in Redis: no write per link, no set of tokens per
//! job to clean up, and verification needs no lookup beyond the generation.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use logstream_core::ids::JobId;

/// What every share token starts with: how a read route tells one from a JWT.
pub const PREFIX: &str = "lss1.";
/// The longest life of a share link.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// A share link's life when none is asked for.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// Why a share token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("malformed share token")]
    Malformed,
    #[error("share token signature is not valid")]
    BadSignature,
    #[error("share link expired")]
    Expired,
}

/// A verified share token: it reads `job` while the job's share generation is still
/// `generation`, until `expires_at` (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub job: JobId,
    pub generation: u64,
    pub expires_at: u64,
}

/// Signs and verifies share tokens with the deployment's secret. Cheap to clone.
#[derive(Clone)]
pub struct ShareSigner {
    key: Arc<[u8]>,
}

impl std::fmt::Debug for ShareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareSigner(<secret>)")
    }
}

impl ShareSigner {
    pub fn new(secret: &str) -> Self {
        Self {
            key: Arc::from(secret.as_bytes()),
        }
    }

    /// A token for `grant`.
    pub fn issue(&self, grant: &Grant) -> String {
        let mut token = String::with_capacity(96);
        // Writing to a String cannot fail.
        let _ = write!(
            token,
            "{PREFIX}{}.{}.{}",
            grant.job, grant.generation, grant.expires_at
        );
        let mac = hmac_sha256(&self.key, token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(mac));
        token
    }

    /// The grant `token` carries, if it was signed with this secret and has not
    /// expired at `now` (seconds). Whether the job's links were revoked since is the
    /// caller's to check against the job's share generation.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, ShareError> {
        let (signed, mac) = token.rsplit_once('.').ok_or(ShareError::Malformed)?;
        let fields = signed.strip_prefix(PREFIX).ok_or(ShareError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| ShareError::Malformed)?;
        let expected = hmac_sha256(&self.key, signed.as_bytes());
        if !bool::from(expected.as_slice().ct_eq(&mac)) {
            return Err(ShareError::BadSignature);
        }
        let mut parts = fields.split('.');
        let (Some(job), Some(generation), Some(expires_at), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ShareError::Malformed);
        };
        let grant = Grant {
            job: JobId::parse(job).map_err(|_| ShareError::Malformed)?,
            generation: generation.parse().map_err(|_| ShareError::Malformed)?,
            expires_at: expires_at.parse().map_err(|_| ShareError::Malformed)?,
        };
        if grant.expires_at <= now {
            return Err(ShareError::Expired);
        }
        Ok(grant)
    }
}

/// HMAC-SHA256 (RFC 2104): `H((K ^ opad) || H((K ^ ipad) || message))`, the key
/// hashed first when it is longer than SHA-256's 64-byte block.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (test case 6).
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn grant(job: &str, generation: u64, expires_at: u64) -> Grant {
        Grant {
            job: JobId::parse(job).unwrap(),
            generation,
            expires_at,
        }
    }

    #[test]
    fn a_token_carries_its_grant_until_it_expires() {
        let signer = ShareSigner::new("deployment secret");
        let g = grant("build-7", 3, 2_000);
        let token = signer.issue(&g);
        assert!(token.starts_with("lss1.build-7.3.2000."), "{token}");
        assert_eq!(signer.verify(&token, 1_999), Ok(g));
        assert_eq!(signer.verify(&token, 2_000), Err(ShareError::Expired));
    }

    #[test]
    fn another_secret_or_any_changed_field_is_refused() {
        let signer = ShareSigner::new("deployment secret");
        let token = signer.issue(&grant("build-7", 0, 2_000));
        assert_eq!(
            ShareSigner::new("another deployment").verify(&token, 1),
            Err(ShareError::BadSignature)
        );
        let (signed, mac) = token.rsplit_once('.').unwrap();
        for forged in [
            signed.replace("build-7", "build-8"),
            signed.replace(".0.", ".1."),
            signed.replace("2000", "9999"),
        ] {
            assert_eq!(
                signer.verify(&format!("{forged}.{mac}"), 1),
                Err(ShareError::BadSignature),
                "{forged}"
            );
        }
        for malformed in [
            "",
            "lss1.",
            "lss1.a.b",
            "x.y.z.w.v",
            "lss1.build-7.0.2000.%%%",
        ] {
            assert!(signer.verify(malformed, 1).is_err(), "{malformed:?}");
        }
    }
}
