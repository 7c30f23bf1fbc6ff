//! `vidi-operator gpu ...` as a user runs it. The GPU-less cases run anywhere; on a machine
//! with an NVIDIA driver they are skipped (docs/gpu.md records the real-GPU run).
use std::process::{Command, Output};

use vidi_operator::gpu;

fn vidi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidi-operator"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn has_nvidia_driver() -> bool {
    gpu::NvmlProbe::new().is_ok()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn status_without_a_gpu_exits_5_with_a_clear_message() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    for args in [&["gpu", "status"][..], &["gpu", "status", "--json"]] {
        let o = vidi(args);
        assert_eq!(o.status.code(), Some(gpu::EXIT_NO_GPU), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with(
                "error: no NVIDIA driver found (libnvidia-ml.so.1 could not be loaded): libnvidia-ml.so.1: cannot open shared object file"
            ),
            "{err}"
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn gate_without_a_gpu_exits_5_and_writes_the_termination_log() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("termination-log");
    let log_arg = log.to_str().expect("utf-8 temp path");
    let o = vidi(&[
        "gpu",
        "gate",
        "--min-free",
        "20GiB",
        "--timeout",
        "1s",
        "--termination-log",
        log_arg,
    ]);
    assert_eq!(o.status.code(), Some(gpu::EXIT_NO_GPU), "{}", stderr(&o));
    assert!(stderr(&o).contains("no NVIDIA driver found"), "{}", stderr(&o));
    let written = std::fs::read_to_string(&log).expect("termination log written");
    assert!(written.starts_with("no NVIDIA driver found"), "{written}");
}

#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    let o = vidi(&["gpu", "gate", "--min-free", "20Gx"]);
    assert_eq!(o.status.code(), Some(gpu::EXIT_BAD_ARGS));
    assert!(stderr(&o).contains("--min-free"), "{}", stderr(&o));

    let o = vidi(&["gpu", "gate", "--min-free", "20GiB", "--device", "gpu0"]);
    assert_eq!(o.status.code(), Some(gpu::EXIT_BAD_ARGS));
    assert!(stderr(&o).contains("--device"), "{}", stderr(&o));

    let o = vidi(&["gpu", "gate", "--min-free", "20GiB", "--timeout", "soon"]);
    assert_eq!(o.status.code(), Some(gpu::EXIT_BAD_ARGS));
    assert!(stderr(&o).contains("--timeout"), "{}", stderr(&o));

    let o = vidi(&["gpu", "gate"]);
    assert_eq!(o.status.code(), Some(gpu::EXIT_BAD_ARGS));
    assert!(stderr(&o).contains("--min-free"), "{}", stderr(&o));
}
