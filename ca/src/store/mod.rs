//! CA storage. The embedded default is SQLite in WAL mode in the data directory; the schema is
//! versioned by numbered migrations. Writes that matter (issuing a certificate, a status change
//! with its history row) are single transactions, so a crash leaves either all or nothing.

mod acme;
mod enroll;
mod inventory;
mod nodes;
mod revocations;
mod sqlite;

pub use acme::{
    AccountRecord, AcmeStore, AuthzRecord, CertRecord, ChallengeRecord, DeviceAttestation, NewCert,
    NewOrder, OrderRecord,
};
pub use enroll::{EkBinding, EkConflict, EkOrigin, EnrollmentRecord};
pub use inventory::{
    revocation_reason, Device, DeviceChange, HistoryEntry, NewDevice, StatusChange,
    REASON_CERTIFICATE_HOLD, REASON_CESSATION_OF_OPERATION,
};
pub use nodes::{NodeCert, NodeRevocationReason};
pub use revocations::{CertStatus, RevokedCert};
pub use sqlite::{SqliteStore, StoreError};
