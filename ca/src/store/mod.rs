//! CA storage. The embedded default is SQLite in WAL mode in the data directory; the schema is
//! versioned by numbered migrations. Writes that matter (issuing a certificate, a status change
//! with its history row) are single transactions, so a crash leaves either all or nothing.

mod acme;
mod inventory;
mod revocations;
mod sqlite;

pub use acme::{
    AccountRecord, AcmeStore, AuthzRecord, CertRecord, ChallengeRecord, NewCert, NewOrder,
    OrderRecord,
};
pub use inventory::{
    revocation_reason, Device, DeviceChange, HistoryEntry, NewDevice, StatusChange,
};
pub use sqlite::{SqliteStore, StoreError};
