//! What operators look at: the admin HTTP server ([`http`]: `/metrics`,
//! `/healthz`, `/readyz`, `/topology`) and the figures behind it
//! ([`status`]). Admin code only reads the state the proxy keeps.

pub mod console;
pub mod http;
pub mod reload;
pub mod resultset;
pub mod show;
pub mod status;
