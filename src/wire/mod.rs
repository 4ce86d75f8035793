//! The PostgreSQL wire protocol as far as pgsplit needs it: framing, the
//! startup packet, the messages pgsplit writes itself, and client-facing
//! authentication (SCRAM-SHA-256 and md5).

pub mod frame;
pub mod md5;
pub mod messages;
pub mod scram;
pub mod startup;
