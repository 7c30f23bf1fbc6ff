//! Where the lock and journal live when `--state-dir` / `VIDI_STATE_DIR` do not say.
use std::path::PathBuf;

/// `/var/lib/vidi-operator` for root (a system service's state), else
/// `$XDG_STATE_HOME/vidi-operator` or `~/.local/state/vidi-operator` (XDG base directories).
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/vidi-operator");
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("vidi-operator");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/vidi-operator"),
        // No home: a per-user directory under /tmp is better than failing.
        None => std::env::temp_dir().join(format!("vidi-operator-{}", effective_uid())),
    }
}

/// The effective uid, read from `/proc/self` (owned by the process's euid) so no libc call is
/// needed; `u32::MAX` (treated as not root) when it cannot be read.
pub fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

pub fn is_root() -> bool {
    effective_uid() == 0
}
