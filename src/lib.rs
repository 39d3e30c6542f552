//! The `portcullis` binary's library: the runtime wiring behind the subcommands, and the dev
//! tooling (`devpki`, `demo_upstream`) that `portcullis up`, the end-to-end tests and the
//! benchmarks share.

pub mod agent_cli;
pub mod attest_cli;
pub mod demo_upstream;
pub mod devpki;
pub mod feed_state;
pub mod inspect;
pub mod inventory_cli;
pub mod node_cli;
pub mod quickstart;
pub mod serve;
pub mod status_feed;
