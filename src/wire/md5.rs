//! md5 password authentication as PostgreSQL defines it:
//! `"md5" + md5hex(md5hex(password + user) + salt)`.

use postgres_protocol::authentication::md5_hash;

/// Checks the PasswordMessage payload (without its trailing NUL) a client
/// sent in answer to AuthenticationMD5Password with `salt`.
pub fn verify(user: &str, password: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let expected = md5_hash(user.as_bytes(), password.as_bytes(), salt);
    // Fold every byte so the time taken does not depend on where they differ.
    expected.len() == response.len()
        && expected
            .as_bytes()
            .iter()
            .zip(response)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_right_and_rejects_wrong() {
        let salt = [1, 2, 3, 4];
        let good = md5_hash(b"app", b"pw", salt);
        assert!(verify("app", "pw", salt, good.as_bytes()));
        assert!(!verify("app", "other", salt, good.as_bytes()));
        assert!(!verify("app", "pw", [0, 0, 0, 0], good.as_bytes()));
        assert!(!verify("app", "pw", salt, b"md5"));
    }
}
