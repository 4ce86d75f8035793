//! The configured users and client authentication against them.
//!
//! SCRAM verifiers and md5 secrets are derived once per user when the
//! config is loaded. Unknown users go through the same exchange against a
//! verifier nothing matches, so a wrong password and an unknown user look
//! alike: both end in the same 28P01 error.

use bytes::{Buf, BytesMut};
use rand::RngExt;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{AuthType, Config, UserConfig};
use crate::wire::frame::{peek_header, read_cstr, read_i32};
use crate::wire::messages::{self, ProxyError};
use crate::wire::{md5, scram};

/// Authentication messages are small; bound them well below max_message_size.
const MAX_AUTH_MESSAGE: usize = 8192;

/// A configured user with its derived SCRAM verifier and md5 secret.
pub struct User {
    pub config: UserConfig,
    verifier: scram::Verifier,
    md5: md5::Secret,
}

/// Every configured user, by name.
pub struct UserDirectory {
    users: HashMap<String, Arc<User>>,
    auth_type: AuthType,
}

impl UserDirectory {
    pub fn new(config: &Config) -> UserDirectory {
        let users = config
            .users
            .iter()
            .map(|u| {
                let user = User {
                    config: u.clone(),
                    verifier: scram::Verifier::from_password(u.password()),
                    md5: md5::Secret::new(u.name.as_bytes(), u.password().as_bytes()),
                };
                (u.name.clone(), Arc::new(user))
            })
            .collect();
        UserDirectory {
            users,
            auth_type: config.proxy.auth_type,
        }
    }

    /// Runs the configured authentication exchange on `stream` for `name`.
    /// `buf` holds bytes the client sent ahead and keeps what follows.
    pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        name: &str,
    ) -> Result<Arc<User>, ProxyError> {
        let user = self.users.get(name);
        let ok = match self.auth_type {
            AuthType::ScramSha256 => {
                let impossible;
                let verifier = match user {
                    Some(u) => &u.verifier,
                    None => {
                        impossible = scram::Verifier::impossible();
                        &impossible
                    }
                };
                scram_exchange(stream, buf, verifier).await?
            }
            AuthType::Md5 => {
                let salt: [u8; 4] = rand::rng().random();
                let mut out = BytesMut::new();
                messages::auth_md5(&mut out, salt);
                write(stream, &out).await?;
                let response = read_password_message(stream, buf).await?;
                let response = read_cstr(&response)
                    .map(|(s, _)| s.to_vec())
                    .unwrap_or_default();
                user.is_some_and(|u| u.md5.verify(salt, &response))
            }
        };
        match (ok, user) {
            (true, Some(u)) => Ok(u.clone()),
            _ => Err(auth_failed(name)),
        }
    }
}

/// The one error for a wrong password and for an unknown user.
fn auth_failed(name: &str) -> ProxyError {
    ProxyError::fatal(
        "28P01",
        format!("password authentication failed for user \"{name}\""),
    )
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), ProxyError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| ProxyError::fatal("08006", format!("client connection lost: {e}")))
}

/// Reads one PasswordMessage ('p') body.
async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, ProxyError> {
    loop {
        match peek_header(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(h)) if buf.len() >= h.total_len => {
                if h.tag != b'p' {
                    return Err(ProxyError::fatal(
                        "08P01",
                        format!(
                            "expected password response, got message type '{}'",
                            char::from(h.tag)
                        ),
                    ));
                }
                let mut msg = buf.split_to(h.total_len);
                msg.advance(5);
                return Ok(msg);
            }
            Ok(_) => {}
            Err(e) => return Err(ProxyError::fatal("08P01", e.to_string())),
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| ProxyError::fatal("08006", format!("client connection lost: {e}")))?;
        if n == 0 {
            return Err(ProxyError::fatal(
                "08006",
                "client closed the connection during authentication",
            ));
        }
    }
}

/// SASLInitialResponse, server-first, SASLResponse, server-final. Returns
/// whether the proof matched; malformed messages are errors.
async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    verifier: &scram::Verifier,
) -> Result<bool, ProxyError> {
    let malformed =
        |what: &str| ProxyError::fatal("08P01", format!("malformed SCRAM message: {what}"));
    let mut out = BytesMut::new();
    messages::auth_sasl(&mut out);
    write(stream, &out).await?;

    let initial = read_password_message(stream, buf).await?;
    let (mechanism, rest) = read_cstr(&initial).ok_or_else(|| malformed("mechanism"))?;
    if mechanism != b"SCRAM-SHA-256" {
        return Err(ProxyError::fatal(
            "28000",
            "only SCRAM-SHA-256 is supported",
        ));
    }
    let (len, data) = read_i32(rest).ok_or_else(|| malformed("length"))?;
    if len < 0 || len as usize != data.len() {
        return Err(malformed("length"));
    }
    let exchange = scram::Exchange::start(data, verifier).map_err(|e| match e {
        scram::ScramError::ChannelBinding => {
            ProxyError::fatal("28000", "channel binding is not supported")
        }
        other => malformed(&other.to_string()),
    })?;
    out.clear();
    messages::auth_sasl_continue(&mut out, exchange.server_first());
    write(stream, &out).await?;

    let final_msg = read_password_message(stream, buf).await?;
    match exchange.finish(&final_msg, verifier) {
        Ok(server_final) => {
            out.clear();
            messages::auth_sasl_final(&mut out, &server_final);
            write(stream, &out).await?;
            Ok(true)
        }
        Err(scram::ScramError::Proof) => Ok(false),
        Err(e) => Err(malformed(&e.to_string())),
    }
}
