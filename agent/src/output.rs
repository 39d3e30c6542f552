//! The output directory: what the agent leaves for curl, git, browsers and itself.
//!
//! | file | mode | what |
//! |---|---|---|
//! | `cert.pem` | 0644 | the certificate chain, leaf first (RFC 8555 §7.4.2 PEM chain) |
//! | `key.ref` | 0644 | one line: `handle:0x81000101` (the key URI of the OpenSSL 3 tpm2 provider: `openssl … -provider tpm2 -provider default -key handle:0x81000101`), or the software key file's path |
//! | `key.json` | 0644 | the same, machine-readable: mode, handle, TCTI |
//! | `key.pem` | 0600 | software mode only: the private key |
//! | `ak.pem` | 0644 | TPM mode: the AK certificate from open enrollment (`x5c[0]`) |
//! | `account.json` | 0600 | the ACME account credentials (RFC 8555 §7.3) |
//!
//! Files are written whole to a temporary name and renamed, so a reader never sees half a
//! chain.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{io, Result};

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_REF_FILE: &str = "key.ref";
pub const KEY_JSON_FILE: &str = "key.json";
pub const AK_CERT_FILE: &str = "ak.pem";
pub const ACCOUNT_FILE: &str = "account.json";

pub struct OutDir(PathBuf);

impl OutDir {
    pub fn new(path: &Path) -> Self {
        Self(path.to_path_buf())
    }

    /// Creates the directory (0755) if needed.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.0).map_err(io(&self.0))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn read(&self, name: &str) -> Result<Option<String>> {
        let p = self.path(name);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(p)(e)),
        }
    }

    /// Writes `name` atomically with `mode`.
    pub fn write(&self, name: &str, contents: &[u8], mode: u32) -> Result<()> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(contents).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn output_writes_atomically_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::new(&dir.path().join("out"));
        out.create().unwrap();
        assert_eq!(out.read(CERT_FILE).unwrap(), None);
        out.write(CERT_FILE, b"a", 0o644).unwrap();
        out.write(CERT_FILE, b"b", 0o644).unwrap();
        out.write(ACCOUNT_FILE, b"{}", 0o600).unwrap();
        assert_eq!(out.read(CERT_FILE).unwrap().as_deref(), Some("b"));
        let mode = |n| std::fs::metadata(out.path(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CERT_FILE), 0o644);
        assert_eq!(mode(ACCOUNT_FILE), 0o600);
        assert!(!out.path(".cert.pem.tmp").exists());
    }
}
