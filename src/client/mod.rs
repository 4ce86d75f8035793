//! One client connection: [`login`] (startup, authentication, first server
//! parameters) and [`session`] (the request loop), with the pieces they
//! use: [`auth`] (configured users), [`params`] (tracked session
//! parameters), [`tracker`] (what the server still owes) and [`outq`]
//! (write queues).

pub mod acquire;
pub mod answers;
pub mod auth;
pub mod close;
pub mod ending;
pub mod idle;
pub mod login;
pub mod outq;
pub mod params;
pub mod recycle;
pub mod registry;
pub mod replay;
pub mod rewrite;
pub mod routing;
pub mod session;
pub mod settings;
pub mod spare;
pub mod statements;
pub mod tracker;
