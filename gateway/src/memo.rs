//! What the requests of one client connection can reuse from the previous one: the access
//! decision (with its counter), the header values built from the device's inventory record,
//! and the signed identity assertion.
//!
//! The certificate of a connection never changes, so for rules that do not read the request
//! the decision only depends on the route table and the status snapshot: it is kept until
//! either changes (a reload builds a new table, the status feed a new generation). This is
//! cheaper than the route table's shared decision cache — a few comparisons under an
//! uncontended lock against a hash lookup in a concurrent cache — and the shared cache still
//! serves new connections.

use portcullis_policy::Decision;
use prometheus::IntCounter;

use crate::assertion::TokenMemo;
use crate::identity_headers::RecordHeaders;

/// The decision for (route table, route, snapshot generation).
pub(crate) struct DecisionMemo {
    pub table: u64,
    pub route: usize,
    pub generation: u64,
    pub decision: Decision,
    /// `portcullis_decisions_total{decision,reason}` of `decision`, resolved once.
    pub counter: IntCounter,
}

impl DecisionMemo {
    pub fn matches(&self, table: u64, route: usize, generation: u64) -> bool {
        self.table == table && self.route == route && self.generation == generation
    }
}

#[derive(Default)]
pub(crate) struct Memo {
    pub decision: Option<DecisionMemo>,
    /// Inventory header values and the snapshot generation they were built from.
    pub record: Option<(u64, RecordHeaders)>,
    /// The identity assertion, while it may be reused.
    pub assertion: Option<TokenMemo>,
}
