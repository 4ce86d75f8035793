//! Understanding statements: a lexer ([`lexer`]) and the recognition of
//! statements that change session state ([`session`]). Read/write
//! classification and the routing policy will live here too.

pub mod lexer;
pub mod session;
