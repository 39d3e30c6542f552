//! Portcullis configuration: one TOML file, typed, validated with errors that name the file,
//! line and key, and swapped whole on reload.

mod ca;
mod error;
mod load;
mod locate;
mod model;
mod reload;
mod status_feed;
mod validate;

pub use ca::*;
pub use error::{ConfigError, Problem};
pub use load::{load_file, parse_str};
pub use model::*;
pub use reload::ConfigHandle;
pub use status_feed::{StaleMode, StatusFeedConfig};
