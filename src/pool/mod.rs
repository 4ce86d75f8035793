//! Backend connections: opening them ([`server`]), pooling them per
//! (server node, database, user) ([`pools`]) and routing cancel requests to
//! the server a client holds right now ([`cancel`]); whether a server is
//! shutting down ([`stopping`]).

pub mod cancel;
pub mod group;
pub mod pools;
pub mod server;
pub mod slots;
pub mod stopping;
