//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks
//! it, used to authenticate clients against the configured users.
//!
//! PostgreSQL ignores the user name inside the SCRAM messages and uses the
//! startup packet's; so do we. Channel binding is not offered, even over
//! TLS, so only the `n,,` and `y,,` GS2 headers are accepted. The key
//! derivation here also serves the client side (`scram_client`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// PostgreSQL's default iteration count.
pub const ITERATIONS: u32 = 4096;

/// Why a SCRAM exchange failed. Every variant ends the login with 28P01 or
/// 08P01; the details go to the log, never to the client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("nonce mismatch")]
    Nonce,
    #[error("wrong proof")]
    Proof,
}

/// What a server stores for a password: salt, iterations and the two keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(****)")
    }
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with a 32-byte output ("Hi" in RFC 5802). The key
/// is set up once and its state copied for each of the `iterations`
/// rounds, which halves the hashing of keying every round afresh.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let keyed = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    let round = |data: &[u8]| -> [u8; 32] {
        let mut mac = keyed.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    let mut block = Vec::with_capacity(salt.len() + 4);
    block.extend_from_slice(salt);
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = round(&block);
    let mut out = u;
    for _ in 1..iterations {
        u = round(&u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// The password as SCRAM hashes it: SASLprep-normalised (RFC 4013) when it
/// is valid UTF-8 and SASLprep accepts it, as is otherwise, which is what
/// PostgreSQL and libpq do on their sides.
fn normalize(password: &str) -> std::borrow::Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

/// ClientKey and ServerKey of a password for a salt and iteration count:
/// the costly part of SCRAM on either side of an exchange.
pub(crate) fn client_and_server_keys(
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> ([u8; 32], [u8; 32]) {
    let salted = hi(normalize(password).as_bytes(), salt, iterations);
    (hmac(&salted, b"Client Key"), hmac(&salted, b"Server Key"))
}

impl Verifier {
    /// Derives a verifier from a plain password with a fresh random salt.
    /// Costs `ITERATIONS` HMACs, so it is computed once per user at config
    /// load, not per login.
    pub fn from_password(password: &str) -> Verifier {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self::with_salt(password, &salt, ITERATIONS)
    }

    /// Derives a verifier with a given salt and iteration count.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let (client_key, server_key) = client_and_server_keys(password, salt, iterations);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        Verifier {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// A verifier that no proof matches, used for unknown users so that the
    /// exchange looks the same and fails the same way.
    pub fn impossible() -> Verifier {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let mut stored_key = [0u8; 32];
        rand::rng().fill_bytes(&mut stored_key);
        Verifier {
            salt,
            iterations: ITERATIONS,
            stored_key,
            server_key: [0u8; 32],
        }
    }
}

/// One SCRAM exchange in progress, after the client-first-message.
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header_b64: &'static str,
}

impl Exchange {
    /// Takes the client-first-message and returns the exchange plus the
    /// server-first-message to send.
    pub fn start(client_first: &[u8], verifier: &Verifier) -> Result<Exchange, ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf8"))?;
        let (gs2_header_b64, bare) = if let Some(rest) = msg.strip_prefix("n,,") {
            ("biws", rest)
        } else if let Some(rest) = msg.strip_prefix("y,,") {
            ("eSws", rest)
        } else if msg.starts_with("p=") {
            return Err(ScramError::ChannelBinding);
        } else {
            return Err(ScramError::Malformed("gs2 header"));
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(Exchange {
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
            gs2_header_b64,
        })
    }

    /// The server-first-message.
    pub fn server_first(&self) -> &[u8] {
        self.server_first.as_bytes()
    }

    /// Checks the client-final-message; on success returns the
    /// server-final-message to send.
    pub fn finish(&self, client_final: &[u8], verifier: &Verifier) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("utf8"))?;
        let (without_proof, proof_b64) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if channel != Some(self.gs2_header_b64) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison: fold all differences before deciding.
        let diff = computed
            .iter()
            .zip(verifier.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs a whole exchange against the client side of postgres-protocol.
    fn exchange(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let verifier = Verifier::from_password(server_password);
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let ex = Exchange::start(client.message(), &verifier)?;
        client
            .update(ex.server_first())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let server_final = ex.finish(client.message(), &verifier)?;
        client
            .finish(&server_final)
            .map_err(|_| ScramError::Malformed("client rejected server signature"))
    }

    #[test]
    fn right_password_passes_both_ways() {
        assert_eq!(exchange("s3cret", "s3cret"), Ok(()));
    }

    #[test]
    fn passwords_are_saslprep_normalised_like_libpq_does() {
        // A no-break space maps to a space; postgres-protocol's client
        // normalises the same way.
        assert_eq!(exchange("a\u{a0}b", "a b"), Ok(()));
        assert_eq!(exchange("a b", "a\u{a0}b"), Ok(()));
        // Not valid for SASLprep (a control character): used as is.
        assert_eq!(exchange("a\u{7}b", "a\u{7}b"), Ok(()));
    }

    #[test]
    fn wrong_password_fails() {
        assert_eq!(exchange("s3cret", "nope"), Err(ScramError::Proof));
    }

    #[test]
    fn impossible_verifier_never_matches() {
        let v = Verifier::impossible();
        let mut client = ScramSha256::new(b"", ChannelBinding::unsupported());
        let ex = Exchange::start(client.message(), &v).unwrap();
        client.update(ex.server_first()).unwrap();
        assert_eq!(ex.finish(client.message(), &v), Err(ScramError::Proof));
    }

    #[test]
    fn rejects_garbage() {
        let v = Verifier::with_salt("x", b"salt", 1);
        assert!(Exchange::start(b"p=tls-server-end-point,,n=,r=abc", &v).is_err());
        assert!(Exchange::start(b"zz", &v).is_err());
        assert!(Exchange::start(b"n,,n=,r=", &v).is_err());
        let ex = Exchange::start(b"n,,n=,r=abc", &v).unwrap();
        assert!(ex.finish(b"c=biws,r=abc", &v).is_err());
        assert_eq!(
            ex.finish(b"c=biws,r=wrong,p=AAAA", &v),
            Err(ScramError::Nonce)
        );
        assert!(ex.finish(&[0xff, 0xfe], &v).is_err());
    }

    #[test]
    fn known_vector_from_rfc7677() {
        // RFC 7677 section 3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::with_salt("pencil", &salt, 4096);
        let ex = Exchange {
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            gs2_header_b64: "biws",
        };
        let fin = ex
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", &v)
            .unwrap();
        assert_eq!(
            fin,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
    }
}
