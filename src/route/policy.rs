//! Where a request goes, from what its statements are (DESIGN "Routing
//! rules"). Hints and session overrides are applied by the caller before
//! this; what is left is the classification.

use super::classify::{Class, Summary, Target};
use crate::config::{RoutingConfig, TransactionRouting};

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    To(Target),
    /// A lone BEGIN: pgsplit answers it and decides with the first
    /// statement of the transaction.
    DeferBegin,
}

/// Where a request whose statements are summed up by `s` goes.
/// `can_defer` is false for the extended protocol, where a BEGIN cannot
/// be answered ahead of the server.
pub fn decide(s: &Summary, routing: &RoutingConfig, can_defer: bool) -> Decision {
    let to = Decision::To;
    match s.first {
        Some(Class::Begin { read_only: true }) => to(Target::Replica),
        Some(Class::Begin { read_only: false }) => match s.second {
            Some(Class::SetTransactionReadOnly) => to(Target::Replica),
            None if can_defer => Decision::DeferBegin,
            Some(Class::Read)
                if routing.transaction_routing == TransactionRouting::FirstStatement
                    && s.rest_reads_only =>
            {
                to(Target::Replica)
            }
            _ => to(Target::Leader),
        },
        Some(Class::Read) if s.rest_reads_only => to(Target::Replica),
        _ => to(Target::Leader),
    }
}

/// Where a transaction opened by a deferred BEGIN goes, given the first
/// request inside it.
pub fn after_begin(s: &Summary, routing: &RoutingConfig) -> Target {
    match s.first {
        Some(Class::SetTransactionReadOnly) => Target::Replica,
        _ if routing.transaction_routing == TransactionRouting::FirstStatement
            && s.reads_only() =>
        {
            Target::Replica
        }
        _ => Target::Leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::classify::Classifier;

    fn go(sql: &str, routing: &RoutingConfig) -> Decision {
        decide(&Classifier::default().classify(sql, true), routing, true)
    }

    #[test]
    fn autocommit_reads_and_writes() {
        let r = RoutingConfig::default();
        assert_eq!(go("SELECT 1", &r), Decision::To(Target::Replica));
        assert_eq!(go("SELECT 1; SELECT 2", &r), Decision::To(Target::Replica));
        assert_eq!(
            go("SELECT 1; DELETE FROM t", &r),
            Decision::To(Target::Leader)
        );
        assert_eq!(go("UPDATE t SET x = 1", &r), Decision::To(Target::Leader));
    }

    #[test]
    fn transactions() {
        let mut r = RoutingConfig::default();
        assert_eq!(go("BEGIN READ ONLY", &r), Decision::To(Target::Replica));
        assert_eq!(go("BEGIN", &r), Decision::DeferBegin);
        assert_eq!(
            go("BEGIN; SET TRANSACTION READ ONLY; SELECT 1", &r),
            Decision::To(Target::Replica)
        );
        assert_eq!(
            go("BEGIN; SELECT 1; COMMIT", &r),
            Decision::To(Target::Leader)
        );
        let c = Classifier::default();
        assert_eq!(
            after_begin(&c.classify("SELECT 1", true), &r),
            Target::Leader
        );
        assert_eq!(
            after_begin(&c.classify("SET TRANSACTION READ ONLY", true), &r),
            Target::Replica
        );
        r.transaction_routing = TransactionRouting::FirstStatement;
        assert_eq!(
            go("BEGIN; SELECT 1; COMMIT", &r),
            Decision::To(Target::Replica)
        );
        assert_eq!(
            go("BEGIN; SELECT 1; INSERT INTO t VALUES (1)", &r),
            Decision::To(Target::Leader)
        );
        assert_eq!(
            after_begin(&c.classify("SELECT 1", true), &r),
            Target::Replica
        );
        assert_eq!(
            after_begin(&c.classify("INSERT INTO t VALUES (1)", true), &r),
            Target::Leader
        );
        assert_eq!(
            decide(&c.classify("BEGIN", true), &r, false),
            Decision::To(Target::Leader),
            "extended protocol BEGIN is not deferred"
        );
    }
}
