//! `[status_feed] state_file`: the last state an enforcement point heard from the status feed,
//! kept on disk so that a point restarted while the CA is unreachable starts from it instead of
//! knowing no device (and refusing everyone).
//!
//! The file is the feed's own wire form: the Server-Sent Events of a snapshot (hello, head,
//! devices, end), so it is read back by the same parser and follower as the live feed, with
//! the same checks. It counts as heard when it was written (its mtime), so `max_staleness`
//! and `mode` decide as for any silence: a strict point refuses everyone until the CA
//! answers, a best-effort one keeps that state. It is rewritten after every change, off the
//! async workers, one write at a time (the newest state wins). A revocation heard less than
//! one write before a crash can be missing from it; the CA's feed corrects it on reconnection.
//!
//! A file that cannot be read or does not parse is logged and ignored: the point starts as it
//! would without one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use portcullis_policy::feed::state_events;
use portcullis_policy::{FeedEvent, Follower, StatusSnapshot};

use crate::status_feed::SseParser;

pub struct StateFile {
    path: PathBuf,
    /// Generation of the state last written (or read), to skip unchanged states.
    written: Option<u64>,
    writing: Option<tokio::task::JoinHandle<()>>,
}

impl StateFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            written: None,
            writing: None,
        }
    }

    /// Replays the file into `follower` as heard at the file's mtime. Returns the generation
    /// restored, `None` if there was no usable file (logged).
    pub fn restore(&mut self, follower: &mut Follower) -> Option<u64> {
        let restored = read(&self.path).and_then(|(heard_at, events)| {
            for event in events {
                follower.on_event(event, heard_at)?;
            }
            follower
                .last_heard()
                .map(|(_, generation, _)| generation)
                .context("the file holds no complete snapshot")
        });
        follower.disconnected();
        match restored {
            Ok(generation) => {
                tracing::info!(path = %self.path.display(), generation, "status feed: starting from the state file");
                self.written = Some(generation);
                Some(generation)
            }
            Err(e) if is_not_found(&e) => None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "status feed: state file ignored: {e:#}");
                None
            }
        }
    }

    /// Writes the follower's last heard state if it changed since the last write and no
    /// write is under way (the next call after it ends writes the newest state).
    pub fn save(&mut self, follower: &Follower) {
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let Some((stream, generation, snapshot)) = follower.last_heard() else {
            return;
        };
        if self.written == Some(generation) {
            return;
        }
        self.written = Some(generation);
        let (path, stream, snapshot) = (self.path.clone(), stream.to_string(), snapshot.clone());
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = write(&path, &stream, generation, &snapshot) {
                tracing::warn!(path = %path.display(), "status feed: cannot write the state file: {e:#}");
            }
        }));
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

fn read(path: &Path) -> anyhow::Result<(SystemTime, Vec<FeedEvent>)> {
    let bytes = std::fs::read(path)?;
    let heard_at = std::fs::metadata(path)?.modified()?;
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    for (name, data) in parser.push(&bytes)? {
        events.push(FeedEvent::parse(&name, &data)?);
    }
    Ok((heard_at, events))
}

/// Written beside the file and renamed over it, so a crash mid-write leaves the old one.
fn write(
    path: &Path,
    stream: &str,
    generation: u64,
    snapshot: &Arc<StatusSnapshot>,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    for event in state_events(stream, generation, snapshot) {
        file.write_all(event.to_sse().as_bytes())?;
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
