//! One job per GPU host (invariant 3): an exclusive `flock` on `<state-dir>/lock`.
//!
//! flock belongs to the open file description, so the kernel drops it when the process dies in
//! any way, `kill -9` included: a stale lock cannot exist. The file is opened close-on-exec (std
//! does that), so a co-tenant started by a `start` command does not inherit it and keep the lock
//! alive after the operator exits. Whoever holds it writes `{job, pid, since}` into the file so a
//! waiting run can say whom it waits for.
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

/// How often a waiting run tries the lock again (polling keeps the wait cancellable by Ctrl-C).
const RETRY: Duration = Duration::from_millis(200);

/// Who holds the lock, as written into the lock file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub job: String,
    pub pid: u32,
    pub since: Timestamp,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} (pid {})", self.job, self.pid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} holds this host's GPU (lock {}); not waiting because of --no-wait", owner_text(.owner), .path.display())]
    Busy { owner: Option<Owner>, path: PathBuf },
    #[error("cannot use the lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn owner_text(owner: &Option<Owner>) -> String {
    owner
        .as_ref()
        .map_or_else(|| "another job".to_string(), Owner::to_string)
}

/// The held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("lock")
}

impl HostLock {
    /// Takes the lock now, or says who has it.
    pub fn try_acquire(state_dir: &Path, job: &str) -> Result<Result<HostLock, Option<Owner>>, LockError> {
        let path = lock_path(state_dir);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // Whoever creates it lets the state directory's group take it too.
        super::state_dir::share(&path, super::state_dir::FILE_MODE).map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(Err(read_owner(&path))),
            Err(e) => return Err(io(e.into())),
        }
        let owner = Owner {
            job: job.to_string(),
            pid: std::process::id(),
            since: Timestamp::now(),
        };
        let text = serde_json::to_string(&owner).unwrap_or_default();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .map_err(io)?;
        Ok(Ok(HostLock { _file: file }))
    }

    /// Takes the lock, waiting while another job has it (`on_wait` is told whom it waits for,
    /// again whenever that changes), or failing at once when `wait` is false.
    pub async fn acquire(
        state_dir: &Path,
        job: &str,
        wait: bool,
        mut on_wait: impl FnMut(Option<&Owner>),
    ) -> Result<HostLock, LockError> {
        let mut told: Option<Option<Owner>> = None;
        loop {
            match Self::try_acquire(state_dir, job)? {
                Ok(lock) => return Ok(lock),
                Err(owner) if !wait => {
                    return Err(LockError::Busy {
                        owner,
                        path: lock_path(state_dir),
                    });
                }
                Err(owner) => {
                    // A holder that has just truncated the file shows as unknown: not a change.
                    if owner.is_some() && told.as_ref() != Some(&owner) || told.is_none() {
                        on_wait(owner.as_ref());
                        told = Some(owner);
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

fn read_owner(path: &Path) -> Option<Owner> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_told_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let first = HostLock::try_acquire(dir.path(), "one").unwrap().unwrap();
        let owner = HostLock::try_acquire(dir.path(), "two").unwrap().unwrap_err().unwrap();
        assert_eq!(owner.job, "one");
        assert_eq!(owner.pid, std::process::id());
        drop(first);
        assert!(HostLock::try_acquire(dir.path(), "two").unwrap().is_ok());
    }
}
