//! Crashes, signals and the host lock, against the real Docker engine: `kill -9` then
//! `docker recover`, Ctrl-C / SIGTERM mid-run, a half-done journal finished by the next run,
//! and two runs on one host serializing.
mod docker_support;

use std::time::Duration;

use docker_support::{Fixture, Proc, eventually};

/// Starts a long job and waits until its co-tenants are down and Vidi runs.
async fn start_long_job(fx: &Fixture, suffix: &str) -> (Proc, String, String) {
    let job = fx.job(suffix);
    let tts = fx.cotenant(&format!("{suffix}-tts"), true).await;
    let file = fx.job_file(&job, "find wait=never", &fx.command_yaml(), "");
    let run = fx.run(&file, &[]);
    fx.vidi_running(&job).await;
    assert_eq!(fx.running(&tts).await, Some(false));
    assert!(!fx.command_running());
    (run, tts, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_recover_restores_everything() {
    let Some(fx) = Fixture::new("kill").await else { return };
    let (mut run, tts, job) = start_long_job(&fx, "a").await;

    run.signal("KILL");
    assert_eq!(run.wait().await, None, "killed by a signal");
    // Nothing ran the restore: the co-tenants stay down and the journal says what to undo.
    assert_eq!(fx.running(&tts).await, Some(false));
    assert!(fx.journal_exists());

    let mut recover = Proc::spawn(&["docker", "recover", "--state-dir", &fx.state_dir()]);
    let code = recover.wait().await;
    let out = recover.stdout();
    assert_eq!(code, Some(0), "{}", recover.stderr());
    assert!(out.contains(&format!("recovered the unfinished job {job}")), "{out}");
    assert!(
        out.contains(&format!("Container {tts}")) && out.contains("Command comfy"),
        "{out}"
    );
    assert!(out.contains(&format!("stopped {job}-vidi-1")), "{out}");
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(fx.command_running());
    assert_eq!(fx.command_log(), "stop\nstart\n");
    assert!(
        fx.vidi_containers(&job).await.is_empty(),
        "the leftover Vidi container is gone"
    );
    assert!(!fx.journal_exists());

    // A second recover finds nothing to do.
    let mut again = Proc::spawn(&["docker", "recover", "--state-dir", &fx.state_dir()]);
    assert_eq!(again.wait().await, Some(0));
    assert!(again.stdout().contains("nothing to recover"), "{}", again.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_or_sigterm_mid_run_stops_vidi_and_restores() {
    let Some(fx) = Fixture::new("sig").await else { return };
    for (signal, exit) in [("INT", 130), ("TERM", 143)] {
        let _ = std::fs::remove_file(fx.path("comfy.log"));
        let (mut run, tts, job) = start_long_job(&fx, &signal.to_lowercase()).await;
        run.signal(signal);
        let code = run.wait().await;
        let err = run.stderr();
        assert_eq!(code, Some(exit), "SIG{signal}:\n{err}");
        assert!(err.contains("every co-tenant restored"), "{err}");
        assert_eq!(fx.running(&tts).await, Some(true), "SIG{signal}");
        assert!(fx.command_running());
        assert_eq!(fx.command_log(), "stop\nstart\n");
        assert!(fx.vidi_containers(&job).await.is_empty());
        assert!(!fx.journal_exists());
    }
}

/// The Vidi container a crash left behind for job `old` (attempt 1), started or only created.
async fn leftover_vidi(fx: &Fixture, old: &str, started: bool) -> String {
    let leftover = format!("{old}-vidi-1");
    fx.container(&leftover, &[("vidi.dev/job", old)], started).await;
    leftover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_done_journal_is_finished_by_the_next_run() {
    let Some(fx) = Fixture::new("half").await else { return };
    // What a crash between "stopped the co-tenant" and "Vidi finished" leaves: a stopped
    // co-tenant, a running Vidi container, and the journal naming both.
    let old = fx.job("old");
    let tts = fx.cotenant("tts", false).await;
    let leftover = leftover_vidi(&fx, &old, true).await;
    let d = fx.dir.path().display();
    let journal = serde_json::json!({
        "version": 1, "job": old, "pid": 999_999, "created": "2026-01-01T00:00:00Z",
        "spec": {"video": {"hostPath": format!("{d}/video.mp4")}, "query": "q",
                 "model": {"weights": {"hostPath": format!("{d}/weights")}}},
        "status": {"phase": "Running", "attempts": 1, "precision": "fp16"},
        "outputDir": format!("{d}/out"),
        "holds": [{"kind": "Container", "name": tts, "holders": [format!("docker/{old}")], "originalReplicas": 1}],
        "attempts": [{"number": 1, "name": leftover, "precision": "fp16"}]
    });
    std::fs::create_dir_all(fx.path("state")).expect("state dir");
    std::fs::write(fx.path("state/journal.json"), journal.to_string()).expect("journal");

    let job = fx.job("new");
    let file = fx.job_file(&job, "find", "", "");
    let mut run = fx.run(&file, &[]);
    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("found the unfinished job {old} (pid 999999")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "recovered the unfinished job {old} (pid 999999): restored Container {tts}; stopped {leftover}"
        )),
        "{err}"
    );
    // Said when it is done, before the new job's own steps.
    let at = |what: &str| err.find(what).unwrap_or_else(|| panic!("no {what:?} in:\n{err}"));
    assert!(
        at("recovered the unfinished job") < at(&format!("starting Vidi attempt 1 ({job}-vidi-1)")),
        "{err}"
    );
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(fx.vidi_containers(&old).await.is_empty());
    assert!(!fx.journal_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_on_one_host_serialize() {
    let Some(fx) = Fixture::new("lock").await else { return };
    let _tts = fx.cotenant("tts", true).await;
    let first = fx.job("first");
    let second = fx.job("second");
    let file1 = fx.job_file(&first, "find wait=go", "", "");
    let file2 = fx.job_file(&second, "find", "", "");
    let mut run1 = fx.run(&file1, &[]);
    fx.vidi_running(&first).await;

    // --no-wait fails at once, naming the job that has the GPU.
    let mut busy = fx.run(&file2, &["--no-wait"]);
    let code = tokio::time::timeout(Duration::from_secs(20), busy.wait())
        .await
        .expect("--no-wait returns at once");
    let err = busy.stderr();
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains(&format!("job {first} (pid {})", run1.child.id())), "{err}");

    // Without it, the second run waits (and says so) and starts only after the first is done.
    let mut run2 = fx.run(&file2, &[]);
    eventually("the second run to say it waits", || async {
        run2.stderr()
            .contains(&format!("waiting for job {first} (pid {}) to finish", run1.child.id()))
    })
    .await;
    fx.release_vidi(&first);
    let overlapped = std::cell::Cell::new(false);
    eventually("the second job's Vidi to have run", || async {
        let a = fx.vidi_containers(&first).await;
        let b = fx.vidi_containers(&second).await;
        overlapped.set(overlapped.get() || (!a.is_empty() && !b.is_empty()));
        run2.stderr().contains(&format!("started {second}-vidi-1"))
    })
    .await;
    assert!(
        !overlapped.get(),
        "the two jobs' Vidi containers existed at the same time"
    );
    assert_eq!(run1.wait().await, Some(0), "{}", run1.stderr());
    assert_eq!(run2.wait().await, Some(0), "{}", run2.stderr());
}

/// A crash between creating the Vidi container and starting it leaves one that can never be
/// stopped (it never ran): `recover` removes it and restores the co-tenants instead of
/// waiting on it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstarted_vidi_container_is_removed_by_recover() {
    let Some(fx) = Fixture::new("unstarted").await else {
        return;
    };
    let old = fx.job("old");
    let tts = fx.cotenant("tts", false).await;
    let leftover = leftover_vidi(&fx, &old, false).await;
    let d = fx.dir.path().display();
    let journal = serde_json::json!({
        "version": 2, "job": old, "pid": 999_999, "created": "2026-01-01T00:00:00Z",
        "spec": {"video": {"hostPath": format!("{d}/video.mp4")}, "query": "q",
                 "model": {"weights": {"hostPath": format!("{d}/weights")}}},
        "status": {"phase": "Running", "attempts": 1, "precision": "fp16"},
        "outputDir": format!("{d}/out"),
        "holds": [{"kind": "Container", "name": tts, "holders": [format!("docker/{old}")], "originalReplicas": 1, "stopped": true}],
        "attempts": [{"number": 1, "name": leftover, "precision": "fp16"}]
    });
    std::fs::create_dir_all(fx.path("state")).expect("state dir");
    std::fs::write(fx.path("state/journal.json"), journal.to_string()).expect("journal");

    let mut recover = Proc::spawn(&["docker", "recover", "--state-dir", &fx.state_dir()]);
    let code = recover.wait().await;
    assert_eq!(code, Some(0), "{}", recover.stderr());
    assert!(
        recover.stdout().contains(&format!("restored Container {tts}")),
        "{}",
        recover.stdout()
    );
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(
        fx.vidi_containers(&old).await.is_empty(),
        "the unstarted container is gone"
    );
    assert!(!fx.journal_exists());
}
