//! The journal: on a Docker host there are no annotations to keep marks in, so what this job
//! holds (and how to undo it), its attempts and its status live in one JSON file in the state
//! directory. It is rewritten atomically (temp file, fsync, rename, fsync of the directory), so
//! after a crash or `kill -9` it holds either the old or the new state, never half of one.
//!
//! Order matters: a hold is written here *before* the container is stopped (invariant 1), and
//! dropped only *after* it was started again (invariant 2). The file exists exactly while a job
//! may hold something; the next `docker run` or `docker recover` finishes whatever it names.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{CommandCoTenant, Precision, ReleaseMark, VidiJobSpec, VidiJobStatus, WorkloadKind};
use crate::plan::Termination;

use super::DockerError;

/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "journal.json";
/// 2: holds say whether their stop was seen done (`stopped`). A format-1 journal reads as "not
/// seen", which makes a restore wait for the co-tenant to be down first: the safe reading.
/// 3: holds may be in place (`released`): an older binary would "restore" such a hold by
/// finding the co-tenant running and never resume it, so it must refuse the file.
const VERSION: u32 = 3;

/// Everything needed to finish or undo one job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub version: u32,
    /// The job's `metadata.name`.
    pub job: String,
    /// The operator process that wrote it (for messages; the lock says whether it lives).
    pub pid: u32,
    /// When `docker run` accepted the job.
    pub created: Timestamp,
    /// The spec as it was run: recovery needs the command co-tenants and the output dir.
    pub spec: VidiJobSpec,
    pub status: VidiJobStatus,
    /// Host directory mounted as the Vidi container's output.
    pub output_dir: PathBuf,
    /// Co-tenants this job holds suspended.
    #[serde(default)]
    pub holds: Vec<Hold>,
    /// Vidi containers started (or about to be).
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// `docker run --stop-timeout`, so `docker recover` stops co-tenant containers the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_seconds: Option<u64>,
    /// `docker run --start-timeout`, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_seconds: Option<u64>,
}

/// A held co-tenant and how to restore it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub kind: WorkloadKind,
    pub name: String,
    /// Jobs holding it (`docker/<name>`).
    pub holders: Vec<String>,
    /// 1 if it ran before the first holder stopped it, else 0.
    pub original_replicas: i32,
    /// For command co-tenants: the commands, so a restore does not depend on the job file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandCoTenant>,
    /// The world showed it down after this job's last stop (or it was not running to begin
    /// with). False from the moment a stop is about to be sent until it is seen done: a stop
    /// that a crash interrupted may still be in flight, so it must be down before it is started
    /// again.
    #[serde(default)]
    pub stopped: bool,
    /// A command co-tenant whose latest stop ended without the world showing it down (the
    /// `stop` command failed, or `check` still passed after `stopTimeoutSeconds`): no stop of
    /// ours is in flight any more, so a restore that finds it running counts it as never
    /// stopped instead of stopping it again (a stop that always fails would never let it be
    /// restored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_failed: bool,
    /// A container that was paused (`docker pause`) when the hold began: it is stopped like a
    /// running one (it still holds its GPU memory) and paused again once restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Held in place: the release hook and how far the release got. Written (and fsync'ed)
    /// before the release call is made; restoring it means the resume call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<ReleaseMark>,
}

/// One Vidi container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub number: u32,
    /// Container name (the planner's attempt name).
    pub name: String,
    pub precision: Precision,
    /// The GPU gate's report (JSON) once it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_report: Option<String>,
    /// How it ended, once known. Kept here because the container is removed at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<AttemptEnd>,
}

/// The planner's `AttemptState::Finished`, in a form that survives a restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttemptEnd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Exit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<Exit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A serializable [`Termination`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl From<&Exit> for Termination {
    fn from(e: &Exit) -> Self {
        Termination {
            exit_code: e.exit_code,
            reason: e.reason.clone(),
            message: e.message.clone(),
        }
    }
}

impl Journal {
    pub fn new(job: &str, spec: VidiJobSpec, output_dir: PathBuf, created: Timestamp) -> Self {
        Journal {
            version: VERSION,
            job: job.to_string(),
            pid: std::process::id(),
            created,
            spec,
            status: VidiJobStatus::default(),
            output_dir,
            holds: Vec::new(),
            attempts: Vec::new(),
            stop_timeout_seconds: None,
            start_timeout_seconds: None,
        }
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// The unfinished job's journal, if there is one.
    pub fn load(state_dir: &Path) -> Result<Option<Journal>, DockerError> {
        let path = Self::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DockerError::io("reading the journal", path, e)),
        };
        let corrupt = |source| DockerError::JournalCorrupt {
            path: path.clone(),
            source,
        };
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
        upgrade(&mut value);
        let journal: Journal = serde_json::from_value(value).map_err(corrupt)?;
        if journal.version > VERSION {
            // Guessing at a newer format could restore the wrong thing; an upgrade-then-downgrade
            // must be finished by the newer binary.
            return Err(DockerError::Other(format!(
                "the journal {} was written by a newer vidi-operator (format {}, this one reads {VERSION}); \
                 run `docker recover` with that version",
                path.display(),
                journal.version
            )));
        }
        Ok(Some(journal))
    }

    /// Writes the journal atomically and durably.
    pub fn save(&self, state_dir: &Path) -> Result<(), DockerError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| DockerError::Other(format!("encoding the journal: {e}")))?;
        write_atomic(&Self::path(state_dir), &bytes)
    }

    /// Deletes the journal once nothing is held: the job is finished.
    pub fn remove(state_dir: &Path) -> Result<(), DockerError> {
        let path = Self::path(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(state_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DockerError::io("removing the journal", path, e)),
        }
    }

    pub fn hold(&self, kind: WorkloadKind, name: &str) -> Option<&Hold> {
        self.holds.iter().find(|h| h.kind == kind && h.name == name)
    }

    /// Records (or updates) a hold.
    pub fn set_hold(&mut self, hold: Hold) {
        match self
            .holds
            .iter_mut()
            .find(|h| h.kind == hold.kind && h.name == hold.name)
        {
            Some(h) => *h = hold,
            None => self.holds.push(hold),
        }
    }

    /// Records whether the world shows `kind name` down after this job's stop.
    pub fn set_stopped(&mut self, kind: WorkloadKind, name: &str, stopped: bool) {
        if let Some(h) = self.holds.iter_mut().find(|h| h.kind == kind && h.name == name) {
            h.stopped = stopped;
            h.stop_failed = false;
        }
    }

    /// The latest stop of this command co-tenant ended without the world showing it down.
    pub fn set_stop_failed(&mut self, kind: WorkloadKind, name: &str) {
        if let Some(h) = self.holds.iter_mut().find(|h| h.kind == kind && h.name == name) {
            h.stop_failed = true;
        }
    }

    pub fn drop_hold(&mut self, kind: WorkloadKind, name: &str) {
        self.holds.retain(|h| !(h.kind == kind && h.name == name));
    }

    pub fn attempt_mut(&mut self, number: u32) -> Option<&mut AttemptRecord> {
        self.attempts.iter_mut().find(|a| a.number == number)
    }
}

/// Reads a format-1 journal as format 2: its command co-tenants may lack `check` (optional
/// then), which reads as empty; restoring such a one asks for a hand (nothing can confirm it).
fn upgrade(journal: &mut serde_json::Value) {
    if journal.get("version").and_then(serde_json::Value::as_u64) != Some(1) {
        return;
    }
    let fill = |c: &mut serde_json::Value| {
        if let Some(c) = c.as_object_mut() {
            c.entry("check")
                .or_insert_with(|| serde_json::Value::String(String::new()));
        }
    };
    if let Some(list) = journal
        .pointer_mut("/spec/coTenants/commands")
        .and_then(|c| c.as_array_mut())
    {
        list.iter_mut().for_each(fill);
    }
    let holds = journal.get_mut("holds").and_then(|h| h.as_array_mut());
    for hold in holds.into_iter().flatten() {
        if let Some(c) = hold.get_mut("command") {
            fill(c);
        }
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves the old file or the new one:
/// temp file in the same directory, fsync, rename over, fsync the directory (the rename itself
/// is only durable once the directory is).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DockerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        // Every member of the state directory's group may have to finish this job.
        super::state_dir::share(&tmp, super::state_dir::JOURNAL_MODE)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(DockerError::io("writing", tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| DockerError::io("renaming the journal to", path, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), DockerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DockerError::io("syncing the directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VidiJobSpec {
        serde_json::from_value(serde_json::json!({
            "video": {"hostPath": "/v.mp4"},
            "query": "a dog",
            "model": {"weights": {"hostPath": "/w"}}
        }))
        .unwrap()
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), None);
        let mut j = Journal::new("find-dog", spec(), dir.path().join("out"), Timestamp::UNIX_EPOCH);
        j.set_hold(Hold {
            kind: WorkloadKind::Container,
            name: "tts".into(),
            holders: vec!["docker/find-dog".into()],
            original_replicas: 1,
            command: None,
            stopped: false,
            stop_failed: false,
            paused: false,
            released: None,
        });
        j.save(dir.path()).unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, j);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        Journal::remove(dir.path()).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_torn_temp_file_does_not_replace_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new("a", spec(), dir.path().into(), Timestamp::UNIX_EPOCH);
        j.save(dir.path()).unwrap();
        // A crash mid-write leaves only a partial temp file; the journal itself is intact.
        std::fs::write(dir.path().join(".journal.json.tmp-1"), b"{\"version\":").unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), Some(j));
    }

    #[test]
    fn a_corrupt_journal_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Journal::path(dir.path()), b"{not json").unwrap();
        let err = Journal::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }
}
