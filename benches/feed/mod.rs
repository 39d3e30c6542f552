//! The status feed benchmark (issue 5), see benches/status_feed.rs.

pub mod propagation;
pub mod snapshot;
pub mod util;
