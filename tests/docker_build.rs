//! `vidi-operator docker build` against the real engine, on small Dockerfiles made here
//! (FROM scratch: no registry, no pulls).
mod docker_support;

use docker_support::{BIN, engine};

fn build(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["docker", "build"])
        .args(args)
        .arg(dir)
        .output()
        .expect("run vidi-operator docker build");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_with_build_args_and_fails_clearly() {
    let Some(docker) = engine().await else { return };
    let tag = format!("vidi-test/build-{}:latest", std::process::id());
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("hello.txt"), "hi\n").expect("file");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nARG GREETING=none\nCOPY hello.txt /hello.txt\nLABEL greeting=$GREETING\n",
    )
    .expect("Dockerfile");

    let (code, err) = build(dir.path(), &["--tag", &tag, "--build-arg", "GREETING=hello"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Step 1/4 : FROM scratch"), "progress is streamed:\n{err}");
    let image = docker.inspect_image(&tag).await.expect("the image exists");
    let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get("greeting").map(String::as_str), Some("hello"));

    // A build error is reported with the builder's message and a failing exit.
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY missing.txt /\n").expect("Dockerfile");
    let (code, err) = build(dir.path(), &["--tag", &tag]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("image build failed") && err.contains("missing.txt"),
        "{err}"
    );

    // No Dockerfile: said before anything is sent.
    let empty = tempfile::tempdir().expect("temp dir");
    let (code, err) = build(empty.path(), &["--tag", &tag]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no Dockerfile in"), "{err}");

    let _ = docker
        .remove_image(&tag, None::<bollard::query_parameters::RemoveImageOptions>, None)
        .await;
}
