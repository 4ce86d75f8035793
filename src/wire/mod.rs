//! The PostgreSQL wire protocol as far as pgsplit needs it: framing, the
//! startup packet, the messages pgsplit writes itself, and client-facing
//! authentication (SCRAM-SHA-256 and md5), and SCRAM's client side for
//! pgsplit's own logins to servers.

pub mod frame;
pub mod md5;
pub mod messages;
pub mod scram;
pub mod scram_client;
pub mod startup;
