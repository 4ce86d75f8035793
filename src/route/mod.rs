//! Where statements go: a lexer ([`lexer`]), read/write classification
//! ([`classify`], with a one-pass path for plain reads in [`quick`],
//! which compares words as numbers with [`keyword`]), the routing rules
//! ([`policy`]), the choice among replicas ([`choose`]), and the
//! recognition of statements that change session state ([`session`],
//! whose pre-check finds words fast with [`word_starts`]).

pub mod choose;
pub mod classify;
pub mod keyword;
pub mod lexer;
pub mod policy;
pub mod quick;
pub mod session;
pub mod word_starts;
