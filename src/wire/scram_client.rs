//! Client side of SCRAM-SHA-256 (RFC 5802 / RFC 7677), for pgsplit's own
//! logins to servers.
//!
//! The costly step of SCRAM is deriving the keys from the password: 4,096
//! HMACs with PostgreSQL's default, a millisecond or more of CPU. A server
//! hands out the same salt and iteration count for a role on every login,
//! so the keys are the same every time. postgres-protocol derives them
//! afresh for each connection, which on pgsplit's one event loop would
//! stall every client each time a pool grows, a failover reopens it or a
//! health probe logs in. Here the keys for (password, salt, iterations)
//! are kept in a small process-wide cache, and a miss is derived on
//! tokio's blocking pool, so the event loop never runs the derivation.
//!
//! Channel binding is not used (`n,,`), as PostgreSQL allows over plain
//! TCP and over TLS alike; the user name in the messages is empty because
//! PostgreSQL takes it from the startup packet.

use super::scram::{client_and_server_keys, hmac};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use thiserror::Error;
use tokio::sync::OnceCell;

/// The most iterations a server may ask for: PostgreSQL's default is
/// 4,096; ten million already costs seconds of CPU per derivation.
const MAX_ITERATIONS: u32 = 10_000_000;

/// Derived keys kept at most; more distinct (password, salt) pairs than
/// this means passwords or servers change, and the cache starts over.
const CACHE_LIMIT: usize = 256;

/// Why a login to a server failed in its SCRAM exchange.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramClientError {
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
    #[error("the server's SCRAM nonce does not extend pgsplit's")]
    Nonce,
    #[error("the server asks for {0} SCRAM iterations (pgsplit accepts 1 to 10000000)")]
    Iterations(u64),
    #[error("the server refused the SCRAM exchange: {0}")]
    Refused(String),
    #[error("the server's SCRAM signature is wrong: it does not know the password")]
    ServerSignature,
    #[error("SCRAM message out of order")]
    OutOfOrder,
    #[error("deriving the SCRAM keys failed: the runtime is shutting down")]
    Derivation,
}

/// What the keys are derived from, as the server-first-message gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salt {
    pub salt: Vec<u8>,
    pub iterations: u32,
}

/// ClientKey and ServerKey of one password for one [`Salt`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(****)")
    }
}

impl Keys {
    /// Derives the keys: the costly step (`salt.iterations` HMACs).
    pub fn derive(password: &str, salt: &Salt) -> Keys {
        let (client_key, server_key) =
            client_and_server_keys(password, &salt.salt, salt.iterations);
        Keys {
            client_key,
            server_key,
        }
    }
}

/// Keys by [`cache_key`]. A cell is filled once: logins that miss at the
/// same moment (a pool opening several connections) wait for one
/// derivation rather than each running their own.
#[derive(Default)]
struct KeyCache(Mutex<HashMap<[u8; 32], Arc<OnceCell<Keys>>>>);

impl KeyCache {
    /// The cell for `key`, new if there is none. A full cache starts over.
    fn cell(&self, key: [u8; 32]) -> Arc<OnceCell<Keys>> {
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(&key) {
            cache.clear();
        }
        cache.entry(key).or_default().clone()
    }
}

/// The process's cache: every server login shares it.
static CACHE: LazyLock<KeyCache> = LazyLock::new(KeyCache::default);

/// The cache's key: a digest of the password, salt and iterations, so that
/// the cache holds no copy of a password's text. (The keys it holds log in
/// to those servers as the password does, like the config pgsplit holds.)
fn cache_key(password: &str, salt: &Salt) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((password.len() as u64).to_be_bytes());
    h.update(password.as_bytes());
    h.update(salt.iterations.to_be_bytes());
    h.update(&salt.salt);
    h.finalize().into()
}

/// The keys of `password` for `salt`: from the cache, or derived on the
/// blocking pool and then cached.
pub async fn keys(password: &str, salt: &Salt) -> Result<Keys, ScramClientError> {
    keys_with(password, salt, Keys::derive).await
}

/// [`keys`] with the derivation to run on a miss.
async fn keys_with(
    password: &str,
    salt: &Salt,
    derive: fn(&str, &Salt) -> Keys,
) -> Result<Keys, ScramClientError> {
    let cell = CACHE.cell(cache_key(password, salt));
    let keys = cell
        .get_or_try_init(|| {
            let (password, salt) = (password.to_owned(), salt.clone());
            async move {
                tokio::task::spawn_blocking(move || derive(&password, &salt))
                    .await
                    .map_err(|_| ScramClientError::Derivation)
            }
        })
        .await?;
    Ok(*keys)
}

/// One login's SCRAM exchange, from pgsplit's side.
pub struct Login {
    client_first: String,
    client_nonce: String,
    /// The server-first-message and the full nonce, once received.
    server_first: Option<(String, String)>,
    /// The ServerSignature the server-final-message must carry.
    expected_signature: Option<[u8; 32]>,
}

impl Login {
    /// A fresh exchange with a random client nonce.
    pub fn new() -> Login {
        let mut nonce = [0u8; 18];
        rand::rng().fill_bytes(&mut nonce);
        Self::with_nonce("", &B64.encode(nonce))
    }

    fn with_nonce(user: &str, nonce: &str) -> Login {
        Login {
            client_first: format!("n,,n={user},r={nonce}"),
            client_nonce: nonce.to_owned(),
            server_first: None,
            expected_signature: None,
        }
    }

    /// The client-first-message, for SASLInitialResponse.
    pub fn client_first(&self) -> &[u8] {
        self.client_first.as_bytes()
    }

    /// The client-first-message without its GS2 header (`n,,`).
    fn client_first_bare(&self) -> &str {
        &self.client_first[3..]
    }

    /// Reads the server-first-message: the nonce must extend ours; returns
    /// the salt and iteration count the keys are derived for.
    pub fn server_first(&mut self, message: &[u8]) -> Result<Salt, ScramClientError> {
        let message =
            std::str::from_utf8(message).map_err(|_| ScramClientError::Malformed("not UTF-8"))?;
        let mut parts = message.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramClientError::Malformed("no nonce"))?;
        let salt = parts
            .next()
            .and_then(|p| p.strip_prefix("s="))
            .ok_or(ScramClientError::Malformed("no salt"))?;
        let iterations = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .ok_or(ScramClientError::Malformed("no iteration count"))?;
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(ScramClientError::Nonce);
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramClientError::Malformed("salt is not base64"))?;
        let iterations: u64 = iterations
            .parse()
            .map_err(|_| ScramClientError::Malformed("iteration count is not a number"))?;
        if iterations == 0 || iterations > u64::from(MAX_ITERATIONS) {
            return Err(ScramClientError::Iterations(iterations));
        }
        self.server_first = Some((message.to_owned(), nonce.to_owned()));
        Ok(Salt {
            salt,
            iterations: iterations as u32,
        })
    }

    /// Answers the server-first-message: reads it, takes the keys for
    /// `password` from the cache (or derives them) and returns the
    /// client-final-message, for SASLResponse.
    pub async fn answer(
        &mut self,
        password: &str,
        server_first: &[u8],
    ) -> Result<Vec<u8>, ScramClientError> {
        let salt = self.server_first(server_first)?;
        let keys = keys(password, &salt).await?;
        self.client_final(&keys)
    }

    /// The client-final-message with the proof made from `keys`, for
    /// SASLResponse.
    pub fn client_final(&mut self, keys: &Keys) -> Result<Vec<u8>, ScramClientError> {
        let (server_first, nonce) = self
            .server_first
            .as_ref()
            .ok_or(ScramClientError::OutOfOrder)?;
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        self.expected_signature = Some(hmac(&keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server proves it knows the
    /// password too.
    pub fn server_final(&self, message: &[u8]) -> Result<(), ScramClientError> {
        let expected = self
            .expected_signature
            .as_ref()
            .ok_or(ScramClientError::OutOfOrder)?;
        let message =
            std::str::from_utf8(message).map_err(|_| ScramClientError::Malformed("not UTF-8"))?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(ScramClientError::Refused(error.to_owned()));
        }
        let signature = message
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("v="))
            .ok_or(ScramClientError::Malformed("no server signature"))?;
        let signature = B64
            .decode(signature)
            .map_err(|_| ScramClientError::Malformed("server signature is not base64"))?;
        if signature.as_slice() != expected.as_slice() {
            return Err(ScramClientError::ServerSignature);
        }
        Ok(())
    }
}

impl Default for Login {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::scram::{Exchange, ScramError, Verifier};

    /// A whole exchange against pgsplit's own server side.
    fn exchange(server_password: &str, client_password: &str) -> Result<(), String> {
        let verifier = Verifier::from_password(server_password);
        let mut login = Login::new();
        let ex = Exchange::start(login.client_first(), &verifier).map_err(|e| e.to_string())?;
        let salt = login
            .server_first(ex.server_first())
            .map_err(|e| e.to_string())?;
        assert_eq!(salt.salt, verifier.salt);
        assert_eq!(salt.iterations, verifier.iterations);
        let keys = Keys::derive(client_password, &salt);
        let client_final = login.client_final(&keys).map_err(|e| e.to_string())?;
        let server_final = ex
            .finish(&client_final, &verifier)
            .map_err(|e| e.to_string())?;
        login.server_final(&server_final).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn answer_reads_the_server_first_and_proves_the_password() {
        let verifier = Verifier::from_password("s3cret");
        let mut login = Login::new();
        let ex = Exchange::start(login.client_first(), &verifier).unwrap();
        let client_final = login.answer("s3cret", ex.server_first()).await.unwrap();
        let server_final = ex.finish(&client_final, &verifier).unwrap();
        assert_eq!(login.server_final(&server_final), Ok(()));
        let mut other = Login::new();
        assert_eq!(
            other.answer("s3cret", b"r=elsewhere,s=AAAA,i=1").await,
            Err(ScramClientError::Nonce)
        );
    }

    #[test]
    fn logs_in_with_the_right_password() {
        assert_eq!(exchange("s3cret", "s3cret"), Ok(()));
        assert_eq!(exchange("a\u{a0}b", "a b"), Ok(()), "SASLprep applies");
    }

    #[test]
    fn the_server_rejects_a_wrong_password() {
        assert_eq!(
            exchange("s3cret", "nope"),
            Err(ScramError::Proof.to_string())
        );
    }

    #[test]
    fn known_vector_from_rfc7677() {
        let mut login = Login::with_nonce("user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(login.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let salt = login
            .server_first(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        let keys = Keys::derive("pencil", &salt);
        assert_eq!(
            login.client_final(&keys).unwrap(),
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".to_vec()
        );
        assert_eq!(
            login.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Ok(())
        );
        assert_eq!(
            login.server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramClientError::ServerSignature),
            "a server that does not know the password is not trusted"
        );
    }

    #[test]
    fn rejects_bad_server_messages() {
        let first = |msg: &[u8]| Login::with_nonce("", "abc").server_first(msg);
        assert_eq!(
            first(b"r=xyzdef,s=AAAA,i=4096"),
            Err(ScramClientError::Nonce)
        );
        assert_eq!(first(b"r=abc,s=AAAA,i=4096"), Err(ScramClientError::Nonce));
        assert_eq!(
            first(b"r=abcdef,i=4096"),
            Err(ScramClientError::Malformed("no salt"))
        );
        assert_eq!(
            first(b"r=abcdef,s=!!,i=4096"),
            Err(ScramClientError::Malformed("salt is not base64"))
        );
        assert_eq!(
            first(b"r=abcdef,s=AAAA,i=0"),
            Err(ScramClientError::Iterations(0))
        );
        assert_eq!(
            first(b"r=abcdef,s=AAAA,i=99999999999"),
            Err(ScramClientError::Iterations(99_999_999_999))
        );
        assert!(first(b"r=abcdef,s=AAAA,i=-1").is_err());
        assert!(first(&[0xff, 0xfe]).is_err());
        assert!(first(b"").is_err());
        let mut login = Login::with_nonce("", "abc");
        assert_eq!(
            login.server_final(b"v=AAAA"),
            Err(ScramClientError::OutOfOrder)
        );
        let salt = login.server_first(b"r=abcdef,s=AAAA,i=1").unwrap();
        login.client_final(&Keys::derive("x", &salt)).unwrap();
        assert_eq!(
            login.server_final(b"e=invalid-proof"),
            Err(ScramClientError::Refused("invalid-proof".into()))
        );
        assert!(login.server_final(b"garbage").is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = KeyCache::default();
        let first = cache.cell([0; 32]);
        assert!(
            Arc::ptr_eq(&first, &cache.cell([0; 32])),
            "one cell per key"
        );
        for i in 0..CACHE_LIMIT as u32 * 2 {
            let mut key = [1; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            cache.cell(key);
            assert!(cache.0.lock().unwrap().len() <= CACHE_LIMIT);
        }
    }

    static DERIVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    fn counting_derive(password: &str, salt: &Salt) -> Keys {
        DERIVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        Keys::derive(password, salt)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_are_derived_once_per_password_and_salt() {
        let salt = Salt {
            salt: b"keys_are_derived_once".to_vec(),
            iterations: 4096,
        };
        let password = "cache-test-password";
        // Eight logins at once, as when a pool opens connections, then one
        // more: one derivation serves them all.
        let logins: Vec<_> = (0..8)
            .map(|_| {
                let salt = salt.clone();
                tokio::spawn(async move { keys_with(password, &salt, counting_derive).await })
            })
            .collect();
        for login in logins {
            assert_eq!(login.await.unwrap(), Ok(Keys::derive(password, &salt)));
        }
        assert_eq!(
            keys(password, &salt).await,
            Ok(Keys::derive(password, &salt))
        );
        assert_eq!(DERIVED.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = Salt {
            iterations: 4097,
            ..salt.clone()
        };
        assert_ne!(cache_key(password, &salt), cache_key(password, &other));
        assert_ne!(cache_key(password, &salt), cache_key("other", &salt));
        assert_ne!(
            keys(password, &other).await.unwrap(),
            keys(password, &salt).await.unwrap()
        );
    }
}
