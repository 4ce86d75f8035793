//! pgsplit: a PostgreSQL wire-protocol proxy and connection pooler that
//! follows the cluster's leader and splits reads from writes.
//!
//! The path of one query: [`proxy`] accepts, [`client::login`] authenticates,
//! [`client::session`] runs the request loop, [`route`] picks the target,
//! [`pool`] hands out a server connection, and the loop forwards bytes.

pub mod admin;
pub mod client;
pub mod config;
pub mod demo;
pub mod fasthash;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod route;
pub mod stream;
pub mod syscall;
pub mod tls;
pub mod topology;
pub mod wire;
