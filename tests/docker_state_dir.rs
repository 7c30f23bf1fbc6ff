//! One state directory for everyone: root and a non-root member of the `docker` group use the
//! same lock and journal (so their jobs wait for each other, and either can finish the other's
//! crashed job), and someone who may not use it is told which path and what to do. The other
//! user is `nobody` (uid 65534), entered with `setpriv`; that needs root, so as another user the
//! tests say so and return (and fail under CI=true, which runs as root).
mod docker_support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

use docker_support::BIN;
use vidi_operator::docker::state_dir;

const NOBODY: &str = "65534";

/// The `docker` group's id, when this test can switch users (root, setpriv, the group exists).
fn can_switch_users() -> Option<u32> {
    let why = if !state_dir::is_root() {
        "not root"
    } else if Command::new("setpriv").arg("--version").output().is_err() {
        "no setpriv (util-linux)"
    } else {
        match state_dir::shared_gid() {
            Some(gid) => return Some(gid),
            None => "no docker group",
        }
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but this test cannot switch users: {why}");
    }
    eprintln!("SKIPPED: cannot switch users ({why}); set CI=true to make this a failure");
    None
}

/// `vidi-operator ARGS…` as `nobody`, in the docker group or in no group at all.
fn as_nobody(home: &Path, docker_gid: Option<u32>, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY]);
    match docker_gid {
        Some(gid) => cmd.arg(format!("--groups={gid}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg("--")
        .arg(BIN)
        .args(args)
        .env("HOME", home)
        .env_remove("VIDI_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .output()
        .expect("setpriv")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temp dir other users may enter.
fn open_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    tmp
}

#[test]
fn the_default_is_one_path_for_everyone() {
    let out = Command::new(BIN)
        .args(["docker", "run", "--help"])
        .output()
        .expect("run vidi-operator");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: /var/lib/vidi-operator]"), "{help}");
    assert!(!help.contains(".local/state"), "no per-user default any more:\n{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_a_docker_group_member_share_the_lock_and_the_journal() {
    let Some(_engine) = docker_support::engine().await else {
        return;
    };
    let Some(gid) = can_switch_users() else { return };
    let tmp = open_tempdir();
    let dir = tmp.path().join("state");
    let d = dir.to_str().expect("utf-8 path");

    // Root uses it first: it is created shared.
    let out = Command::new(BIN)
        .args(["docker", "recover", "--state-dir", d])
        .output()
        .expect("recover as root");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m = std::fs::metadata(&dir).expect("state dir");
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o2775, gid), "the state dir is shared");
    let lock = std::fs::metadata(dir.join("lock")).expect("lock");
    assert_eq!((lock.mode() & 0o777, lock.gid()), (0o664, gid), "the lock is shared");

    // Root's crashed job (nothing held, to keep it small); nobody in the docker group takes the
    // same lock and finishes it.
    let journal = serde_json::json!({
        "version": 1, "job": "roots-job", "pid": 999_999, "created": "2026-01-01T00:00:00Z",
        "spec": {"video": {"hostPath": "/v.mp4"}, "query": "q", "model": {"weights": {"hostPath": "/w"}}},
        "status": {"phase": "Running", "attempts": 0},
        "outputDir": format!("{d}/jobs/roots-job/output"),
        "holds": [], "attempts": []
    });
    std::fs::write(dir.join("journal.json"), journal.to_string()).expect("journal");
    let out = as_nobody(tmp.path(), Some(gid), &["docker", "recover", "--state-dir", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("recovered the unfinished job roots-job"),
        "{}",
        text(&out)
    );
    assert!(!dir.join("journal.json").exists(), "nobody removed root's journal");
    // And the lock nobody held is still root's to take.
    let out = Command::new(BIN)
        .args(["docker", "recover", "--no-wait", "--state-dir", d])
        .output()
        .expect("recover as root");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn someone_who_may_not_use_it_is_told_which_path_and_what_to_do() {
    let Some(_gid) = can_switch_users() else { return };
    let tmp = open_tempdir();
    // Exists, shared with the docker group; nobody is not in it.
    let dir = tmp.path().join("state");
    state_dir::prepare(&dir).expect("prepare as root");
    let d = dir.to_str().expect("utf-8 path");
    let out = as_nobody(tmp.path(), None, &["docker", "recover", "--state-dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.starts_with(&format!(
            "error: the state directory {d} is not writable by you (uid 65534); it is owned by uid 0"
        )),
        "{err}"
    );
    assert!(
        err.contains("ask an administrator to add you to that group (`sudo usermod -aG docker"),
        "{err}"
    );
    assert!(err.contains("or pass --state-dir"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");

    // Root's alone (as earlier builds created it): how to share it.
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).expect("private dir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let p = private.to_str().expect("utf-8 path");
    let out = as_nobody(tmp.path(), None, &["docker", "recover", "--state-dir", p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains(&format!(
            "mode 755: ask an administrator to share it with the docker group (`sudo chgrp -R docker {p}"
        )),
        "{err}"
    );

    // Not there, and its parent is root's: how to create it once.
    let parent = tmp.path().join("roots");
    std::fs::create_dir(&parent).expect("parent");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let missing = parent.join("vidi-operator");
    let m = missing.to_str().expect("utf-8 path");
    let out = as_nobody(tmp.path(), None, &["docker", "recover", "--state-dir", m]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.starts_with(&format!(
            "error: cannot create the state directory {m}: Permission denied"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "create it once as root: `sudo install -d -m 2775 -g docker {m}`"
        )),
        "{err}"
    );
    assert!(!missing.exists());
}

/// An unfinished journal in the per-user directory earlier builds defaulted to is not silently
/// forgotten. (A dry run, so the default /var/lib/vidi-operator is not created here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_left_in_the_old_per_user_default_is_pointed_out() {
    let Some(fx) = docker_support::Fixture::new("legacy").await else {
        return;
    };
    let home = open_tempdir();
    let old = home.path().join(".local/state/vidi-operator");
    std::fs::create_dir_all(&old).expect("old state dir");
    std::fs::write(old.join("journal.json"), "{}").expect("journal");
    let file = fx.job_file(&fx.job("a"), "find", "", "");
    let out = Command::new(BIN)
        .args(["docker", "run", "--gpus", "none", "--dry-run", "-f", &file])
        .env("HOME", home.path())
        .env_remove("VIDI_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .output()
        .expect("run vidi-operator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: an unfinished job's journal is in {}, the per-user state directory of earlier builds; \
             finish it with `vidi-operator docker recover --state-dir {}`",
            old.display(),
            old.display()
        )),
        "{}",
        text(&out)
    );
}
