//! Signed capabilities for people without API keys: the magic link of a task email, the
//! sign-in link of the task list, and the session cookie that sign-in sets.
//!
//! Pure: a token is `base64url(claims JSON) "." base64url(HMAC-SHA256(node secret, "axp-link-v1." + claims))`.
//! This module signs and checks tokens and the per-form CSRF tokens of a session; it does not
//! decide whether a token was already used (`crate::store::people` keeps that) or who may
//! answer a task.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

const DOMAIN: &[u8] = b"axp-link-v1.";

/// What a token lets its bearer do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Purpose {
    /// Answer the human task of one intent, once.
    Task { intent_id: Uuid },
    /// Sign in to the task list, once.
    SignIn,
    /// Stay signed in (the session cookie).
    Session,
}

/// The signed content of a token. `nonce` makes each token single-use: the store records the
/// nonces that were spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(flatten)]
    pub purpose: Purpose,
    pub email: String,
    /// Expiry, unix milliseconds.
    pub exp: u64,
    pub nonce: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is incomplete or not a link of this node")]
    Malformed,
    #[error("the link's signature does not match: it was altered or cut")]
    BadSignature,
    #[error("the link expired")]
    Expired,
}

impl LinkError {
    pub fn code(&self) -> &'static str {
        match self {
            LinkError::Malformed => "link_malformed",
            LinkError::BadSignature => "link_tampered",
            LinkError::Expired => "link_expired",
        }
    }
}

/// The node's signing key for links and sessions.
#[derive(Clone)]
pub struct LinkKey(Vec<u8>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    pub fn new(secret: &[u8]) -> LinkKey {
        LinkKey(secret.to_vec())
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let tag = self.mac(&[DOMAIN, body.as_bytes()]).finalize().into_bytes();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks the signature, then the expiry against `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, LinkError> {
        let (body, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| LinkError::Malformed)?;
        self.mac(&[DOMAIN, body.as_bytes()]).verify_slice(&tag).map_err(|_| LinkError::BadSignature)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| LinkError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| LinkError::Malformed)?;
        if claims.exp <= now_ms {
            return Err(LinkError::Expired);
        }
        Ok(claims)
    }

    /// The token a session's form for `intent_id` carries, so that another site cannot post
    /// answers with the person's cookie.
    pub fn csrf(&self, session: &Claims, intent_id: Uuid) -> String {
        let tag = self.mac(&[b"csrf.", session.nonce.as_bytes(), intent_id.as_bytes()]).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(tag)
    }

    pub fn csrf_matches(&self, session: &Claims, intent_id: Uuid, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else { return false };
        self.mac(&[b"csrf.", session.nonce.as_bytes(), intent_id.as_bytes()]).verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(purpose: Purpose) -> Claims {
        Claims { purpose, email: "ann@example.com".into(), exp: 2_000, nonce: Uuid::now_v7() }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = LinkKey::new(b"secret");
        let claims = claims(Purpose::Task { intent_id: Uuid::now_v7() });
        let token = key.sign(&claims);
        assert_eq!(key.verify(&token, 1_999), Ok(claims));
        assert_eq!(key.verify(&token, 2_000), Err(LinkError::Expired));
    }

    #[test]
    fn altered_cut_or_foreign_tokens_are_refused() {
        let key = LinkKey::new(b"secret");
        let token = key.sign(&claims(Purpose::SignIn));
        let (body, tag) = token.split_once('.').unwrap();
        // Another email in the claims, the old signature.
        let forged = String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap().replace("ann@", "eve@");
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(forged));
        assert_eq!(key.verify(&forged, 0), Err(LinkError::BadSignature));
        assert_eq!(key.verify(&token[..token.len() - 3], 0), Err(LinkError::BadSignature));
        assert_eq!(key.verify(body, 0), Err(LinkError::Malformed));
        assert_eq!(key.verify("", 0), Err(LinkError::Malformed));
        assert_eq!(LinkKey::new(b"other").verify(&token, 0), Err(LinkError::BadSignature));
    }

    #[test]
    fn csrf_tokens_bind_a_session_to_one_intent() {
        let key = LinkKey::new(b"secret");
        let session = claims(Purpose::Session);
        let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
        let token = key.csrf(&session, one);
        assert!(key.csrf_matches(&session, one, &token));
        assert!(!key.csrf_matches(&session, two, &token));
        assert!(!key.csrf_matches(&claims(Purpose::Session), one, &token), "another session");
        assert!(!key.csrf_matches(&session, one, "not base64!"));
    }
}
