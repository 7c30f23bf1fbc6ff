//! The state directory: the host lock, the journal, command logs and default output folders.
//!
//! One default for everyone, root or not: the lock only keeps two jobs off one GPU if both
//! take the same lock. `/var/lib/vidi-operator` (a system service's state, kept across reboots,
//! as the journal must be). vidi-operator creates it, and every directory in it, with mode
//! `2775` and, where the local group `docker` exists, that group; files in it are `0664`
//! (the journal `0660`). So every member of `docker` shares it: they may already do anything
//! through the Docker engine, including what the journal's commands do, so the group adds no
//! trust that was not there. Someone without the group gets an error that names the path and
//! says what to do, never a silent second lock elsewhere.
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Where the lock and journal live when `--state-dir` / `VIDI_STATE_DIR` do not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vidi-operator";
/// The group that shares the state directory, where it exists.
pub const SHARED_GROUP: &str = "docker";
/// Directories vidi-operator creates in the state directory: group-writable, and setgid so
/// what is created inside keeps the group.
const DIR_MODE: u32 = 0o2775;
/// The lock file and command logs.
pub const FILE_MODE: u32 = 0o664;
/// The journal (it holds the co-tenants' commands).
pub const JOURNAL_MODE: u32 = 0o660;

/// The one default state directory (the same for root and other users).
pub fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// The per-user default of earlier builds (`$XDG_STATE_HOME/vidi-operator`, else
/// `~/.local/state/vidi-operator`), where an unfinished journal may still be.
pub fn legacy_state_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("vidi-operator"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state/vidi-operator"))
}

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create the state directory {}: {source}; {hint}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error("the state directory {} is not writable by {who}; {hint}", path.display())]
    NotWritable { path: PathBuf, who: String, hint: String },
    #[error("the state directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
}

/// Makes sure `dir` exists and this user may create and replace files in it. One it creates
/// is shared (see the module docs); an existing one is left as it is.
pub fn prepare(dir: &Path) -> Result<(), StateDirError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(StateDirError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_shared(dir).map_err(|source| StateDirError::Create {
                path: dir.to_path_buf(),
                hint: if source.kind() == std::io::ErrorKind::PermissionDenied {
                    format!("create it once as root: {}", setup_command(dir))
                } else {
                    alternative()
                },
                source,
            })?;
        }
        Err(source) => {
            return Err(StateDirError::Create {
                path: dir.to_path_buf(),
                hint: alternative(),
                source,
            });
        }
    }
    if rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK).is_err() {
        return Err(StateDirError::NotWritable {
            path: dir.to_path_buf(),
            who: format!("you (uid {})", effective_uid()),
            hint: not_writable_hint(dir),
        });
    }
    Ok(())
}

fn setup_command(dir: &Path) -> String {
    match shared_gid() {
        Some(_) => format!("`sudo install -d -m 2775 -g {SHARED_GROUP} {}`", dir.display()),
        None => format!("`sudo install -d -m 2775 {}`", dir.display()),
    }
}

fn alternative() -> String {
    "or pass --state-dir (VIDI_STATE_DIR): every user of this GPU must use the same one".to_string()
}

fn not_writable_hint(dir: &Path) -> String {
    let meta = std::fs::metadata(dir).ok();
    let owner = meta
        .as_ref()
        .map(|m| {
            format!(
                "it is owned by uid {} gid {}, mode {:o}",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )
        })
        .unwrap_or_default();
    let shared = meta
        .as_ref()
        .is_some_and(|m| Some(m.gid()) == shared_gid() && m.mode() & 0o020 != 0);
    let what = if shared {
        format!(
            "it is shared with the {SHARED_GROUP} group, which you are not in: ask an administrator to add you to \
             that group (`sudo usermod -aG {SHARED_GROUP} $USER`, then log in again), "
        )
    } else if shared_gid().is_some() {
        format!(
            "ask an administrator to share it with the {SHARED_GROUP} group (`sudo chgrp -R {SHARED_GROUP} {d} && \
             sudo chmod -R g+rwX {d} && sudo find {d} -type d -exec chmod g+s {{}} +`) and to add you to that group, ",
            d = dir.display()
        )
    } else {
        "run as its owner (e.g. with sudo), ".to_string()
    };
    format!("{owner}: {what}{}", alternative())
}

/// Creates `dir` and any missing parents; each directory created gets [`DIR_MODE`] and the
/// shared group.
pub fn create_shared(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_shared(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => share(dir, DIR_MODE),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Gives something this user just created its mode regardless of the umask, and the shared
/// group where there is one. Only the owner may, so something of someone else's is left alone.
pub fn share(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.uid() != effective_uid() {
        return Ok(());
    }
    if let Some(gid) = shared_gid().filter(|g| *g != meta.gid()) {
        // Not a member (and not root): the file keeps this user's group; mode still applies.
        let _ = std::os::unix::fs::chown(path, None, Some(gid));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The shared group's id from `/etc/group`, if the group exists there.
pub fn shared_gid() -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    gid_of(&text, SHARED_GROUP)
}

fn gid_of(group_file: &str, name: &str) -> Option<u32> {
    group_file.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// The effective uid, read from `/proc/self` (owned by the process's euid) so no libc call is
/// needed; `u32::MAX` (treated as not root) when it cannot be read.
pub fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

pub fn is_root() -> bool {
    effective_uid() == 0
}

/// The user who ran this through sudo (`SUDO_UID`, `SUDO_GID`), when not root themselves.
pub fn sudo_invoker() -> Option<(u32, u32)> {
    let id = |name: &str| std::env::var(name).ok()?.trim().parse::<u32>().ok();
    match (id("SUDO_UID")?, id("SUDO_GID")?) {
        (0, _) => None,
        ids => Some(ids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_other_users_share_one_default() {
        // No per-user part: the same path whoever asks (the old default depended on HOME).
        assert_eq!(default_state_dir(), PathBuf::from("/var/lib/vidi-operator"));
        assert!(!DEFAULT_STATE_DIR.contains("home") && !DEFAULT_STATE_DIR.contains(".local"));
    }

    #[test]
    fn the_group_id_is_read_from_the_group_file() {
        let file = "root:x:0:\nsudo:x:27:ann\ndocker:x:105:ann,bob\n";
        assert_eq!(gid_of(file, "docker"), Some(105));
        assert_eq!(gid_of(file, "dock"), None);
        assert_eq!(gid_of("docker:x:notanumber:\n", "docker"), None);
    }

    #[test]
    fn a_created_state_dir_is_group_writable_and_setgid_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        prepare(&dir).unwrap();
        for d in [tmp.path().join("a"), tmp.path().join("a/b"), dir.clone()] {
            let m = std::fs::metadata(&d).unwrap();
            assert_eq!(m.mode() & 0o7777, DIR_MODE, "{}", d.display());
            if let Some(gid) = shared_gid().filter(|_| is_root()) {
                assert_eq!(m.gid(), gid, "{}", d.display());
            }
        }
        // A second prepare of an existing directory changes nothing.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn a_file_where_the_state_dir_should_be_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        std::fs::write(&file, "").unwrap();
        let e = prepare(&file).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is not a directory", file.display())), "{e}");
    }
}
