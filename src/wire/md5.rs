//! md5 password authentication as PostgreSQL defines it:
//! `"md5" + md5hex(md5hex(password + user) + salt)`, for clients logging in
//! to pgsplit and for pgsplit logging in to servers.
//!
//! The inner hash depends only on the user and password, so a user's is
//! computed once when the config is loaded ([`Secret`], the same value
//! `pg_authid` stores after `md5`); a login then costs one md5 of 36 bytes.
//! Hex is written from a table: `core::fmt` took about 3,800 instructions
//! per login for the two 16-byte digests.

use md5::{Digest, Md5};

/// `md5hex(password + user)`: what a client's answer is checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Secret {
    pub fn new(user: &[u8], password: &[u8]) -> Secret {
        let mut h = Md5::new();
        h.update(password);
        h.update(user);
        Secret(hex(h.finalize().into()))
    }

    /// The PasswordMessage payload (without its trailing NUL) that answers
    /// AuthenticationMD5Password with `salt`.
    pub fn answer(&self, salt: [u8; 4]) -> [u8; 35] {
        let mut h = Md5::new();
        h.update(self.0);
        h.update(salt);
        let mut out = [0u8; 35];
        out[..3].copy_from_slice(b"md5");
        out[3..].copy_from_slice(&hex(h.finalize().into()));
        out
    }

    /// Checks a client's PasswordMessage payload (without its trailing
    /// NUL) for `salt`.
    pub fn verify(&self, salt: [u8; 4], response: &[u8]) -> bool {
        let expected = self.answer(salt);
        // Fold every byte so the time taken does not depend on where they differ.
        expected.len() == response.len()
            && expected
                .iter()
                .zip(response)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Lower-case hex of a 16-byte digest.
fn hex(digest: [u8; 16]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::md5_hash;

    #[test]
    fn answers_like_postgres_protocol() {
        for (user, password, salt) in [
            ("app", "pw", [1, 2, 3, 4]),
            ("", "", [0, 0, 0, 0]),
            ("ü\u{0}x", "päss wörd", [255, 254, 253, 252]),
        ] {
            let ours = Secret::new(user.as_bytes(), password.as_bytes()).answer(salt);
            let theirs = md5_hash(user.as_bytes(), password.as_bytes(), salt);
            assert_eq!(ours.as_slice(), theirs.as_bytes(), "{user:?} {password:?}");
        }
    }

    #[test]
    fn the_secret_is_what_pg_authid_stores() {
        // SELECT md5('pw' || 'app') in PostgreSQL.
        let s = Secret::new(b"app", b"pw");
        assert_eq!(&s.0, b"81ad3d00fcdf98fbc5f8f9a859590b46");
        assert_eq!(format!("{s:?}"), "Secret(****)");
    }

    #[test]
    fn accepts_right_and_rejects_wrong() {
        let salt = [1, 2, 3, 4];
        let secret = Secret::new(b"app", b"pw");
        let good = secret.answer(salt);
        assert!(secret.verify(salt, &good));
        assert!(!Secret::new(b"app", b"other").verify(salt, &good));
        assert!(!secret.verify([0, 0, 0, 0], &good));
        assert!(!secret.verify(salt, b"md5"));
        assert!(!secret.verify(salt, &good[..34]));
    }
}
