//! Secrets and their stored forms: password hashes, API tokens and session
//! tokens (ring: PBKDF2-HMAC-SHA256, SHA-256, HMAC-SHA256, the system's
//! random source).
//!
//! - A password is stored as PBKDF2-HMAC-SHA256 with a 16-byte random salt
//!   and [`PASSWORD_ITERATIONS`] iterations; it is checked in constant time.
//! - An API token is `stk_<id>_<secret>`: 8 random bytes of id (public, in
//!   listings) and 32 of secret, in hex. Only the SHA-256 of the secret is
//!   stored (a token has 256 bits of entropy: a slow hash adds nothing).
//! - A session token is `sts_<expiry ms>_<generation>_<user in hex>_<mac>`,
//!   the MAC an HMAC-SHA256 of the rest under the cluster's session key, so
//!   any node checks it without a lookup. It ends at its expiry, when the
//!   user is deleted, or when the password changes (the generation moves).

use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use strata_raft::security::UserRecord;

/// PBKDF2 iterations of a new password.
pub const PASSWORD_ITERATIONS: u32 = 100_000;
/// How long a session token is good for.
pub const SESSION_LIFETIME_MS: u64 = 60 * 60 * 1000;

const TOKEN_PREFIX: &str = "stk_";
const SESSION_PREFIX: &str = "sts_";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn random<const N: usize>() -> Result<[u8; N], ring::error::Unspecified> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out)?;
    Ok(out)
}

/// Why a secret could not be made (the system's random source failed).
#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed")]
pub struct NoRandomness;

/// The stored form of `password` for `name` (generation 0: applying sets it).
pub fn hash_password(name: &str, password: &str) -> Result<UserRecord, NoRandomness> {
    let salt: [u8; 16] = random().map_err(|_| NoRandomness)?;
    let mut key = [0u8; 32];
    let iterations = NonZeroU32::new(PASSWORD_ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &mut key);
    Ok(UserRecord {
        name: name.to_owned(),
        salt: hex(&salt),
        iterations: iterations.get(),
        hash: hex(&key),
        generation: 0,
    })
}

/// Whether `password` is `user`'s (constant time in the password).
pub fn password_matches(user: &UserRecord, password: &str) -> bool {
    let (Some(salt), Some(hash)) = (unhex(&user.salt), unhex(&user.hash)) else { return false };
    let Some(iterations) = NonZeroU32::new(user.iterations) else { return false };
    pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &hash).is_ok()
}

/// A new API token: the string to hand out once, its id, and the hash to
/// store.
pub fn new_token() -> Result<(String, String, String), NoRandomness> {
    let id: [u8; 8] = random().map_err(|_| NoRandomness)?;
    let secret: [u8; 32] = random().map_err(|_| NoRandomness)?;
    let (id, secret) = (hex(&id), hex(&secret));
    let hash = token_hash(&secret);
    Ok((format!("{TOKEN_PREFIX}{id}_{secret}"), id, hash))
}

fn token_hash(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// An API token's id and the hash of its secret, if `token` has the form.
pub fn parse_token(token: &str) -> Option<(&str, String)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64 && unhex(id).is_some() && unhex(secret).is_some())
        .then(|| (id, token_hash(secret)))
}

/// Whether two stored hashes are equal, in constant time.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new session key (hex), for the controller.
pub fn new_session_key() -> Result<String, NoRandomness> {
    let key: [u8; 32] = random().map_err(|_| NoRandomness)?;
    Ok(hex(&key))
}

fn session_mac(key_hex: &str, body: &str) -> Option<hmac::Tag> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &unhex(key_hex)?);
    Some(hmac::sign(&key, body.as_bytes()))
}

/// A session token for `user` at `generation`, good until `expires_ms`.
pub fn new_session(key_hex: &str, user: &str, generation: u64, expires_ms: u64) -> Option<String> {
    let body = format!("{SESSION_PREFIX}{expires_ms}_{generation}_{}", hex(user.as_bytes()));
    let mac = session_mac(key_hex, &body)?;
    Some(format!("{body}_{}", hex(mac.as_ref())))
}

/// A session token's user, generation and expiry, if its MAC is right.
pub fn verify_session(key_hex: &str, token: &str) -> Option<(String, u64, u64)> {
    let (body, mac) = token.rsplit_once('_')?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &unhex(key_hex)?);
    hmac::verify(&key, body.as_bytes(), &unhex(mac)?).ok()?;
    let mut parts = body.strip_prefix(SESSION_PREFIX)?.splitn(3, '_');
    let expires_ms = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    let user = String::from_utf8(unhex(parts.next()?)?).ok()?;
    Some((user, generation, expires_ms))
}

/// Whether a bearer token is a session token (else an API token).
pub fn is_session(token: &str) -> bool {
    token.starts_with(SESSION_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_tokens_and_sessions_check_out_only_when_right() {
        let user = hash_password("alice", "s3cret").expect("hash");
        assert!(password_matches(&user, "s3cret"));
        assert!(!password_matches(&user, "s3cret "));
        assert_ne!(hash_password("alice", "s3cret").expect("hash").salt, user.salt, "salted");

        let (token, id, hash) = new_token().expect("token");
        let (parsed_id, parsed_hash) = parse_token(&token).expect("parses");
        assert_eq!((parsed_id, parsed_hash.as_str()), (id.as_str(), hash.as_str()));
        assert!(same_hash(&parsed_hash, &hash));
        assert!(parse_token("stk_xyz_abc").is_none());
        let mut forged = token.clone();
        forged.replace_range(token.len() - 1.., if token.ends_with('0') { "1" } else { "0" });
        assert!(!same_hash(&parse_token(&forged).expect("form").1, &hash), "another secret, another hash");

        let key = new_session_key().expect("key");
        let session = new_session(&key, "alice", 3, 42).expect("session");
        assert!(is_session(&session));
        assert_eq!(verify_session(&key, &session), Some(("alice".into(), 3, 42)));
        let other_key = new_session_key().expect("key");
        assert_eq!(verify_session(&other_key, &session), None, "another cluster's key");
        let tampered = session.replacen("_3_", "_4_", 1);
        assert_eq!(verify_session(&key, &tampered), None, "a changed generation breaks the MAC");
    }
}
