//! The current configuration, replaced whole: readers take an `Arc` snapshot and keep it for
//! as long as their request lives, so a reload never changes a request half-way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::error::ConfigError;
use crate::load::load_file;
use crate::model::Config;

pub struct ConfigHandle {
    path: PathBuf,
    current: ArcSwap<Config>,
    generation: AtomicU64,
}

impl ConfigHandle {
    /// Loads `path`; fails if the file is not a valid config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = load_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(config),
            generation: AtomicU64::new(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// How many configs have been accepted, the first load included.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the file. A file that fails validation is refused and the current config stays.
    pub fn reload(&self) -> Result<Arc<Config>, ConfigError> {
        let next = Arc::new(load_file(&self.path)?);
        self.current.store(next.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(next)
    }

    /// Reads and validates the file without installing it, so a caller can build what depends
    /// on it first and `install` only when that also succeeded.
    pub fn prepare(&self) -> Result<Config, ConfigError> {
        load_file(&self.path)
    }

    pub fn install(&self, config: Config) -> Arc<Config> {
        let next = Arc::new(config);
        self.current.store(next.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        next
    }
}
