//! Malformed job files, against the real engine: each is refused with exit 1 and a message
//! naming the field, and nothing is touched — the co-tenant container keeps running (same start
//! time), the command co-tenant is never stopped, the previous result in the output folder is
//! intact, and no journal is left.
mod docker_support;

use bollard::query_parameters::InspectContainerOptions;
use docker_support::{BIN, Fixture, IMAGE, TEST_LABEL};

/// A valid job; each case below edits it.
fn base(fx: &Fixture) -> String {
    let d = fx.dir.path().display();
    format!(
        r#"apiVersion: vidi.dev/v1alpha1
kind: VidiJob
metadata:
  name: {job}
spec:
  video:
    hostPath: {d}/video.mp4
  query: "find sleep=1"
  model:
    image: {IMAGE}
    weights:
      hostPath: {d}/weights
    precision: auto
  gpu:
    resourceName: nvidia.com/gpu
  coTenants:
    selector:
      matchLabels:
        {TEST_LABEL}: {name}
    commands:
      - name: comfy
        stop: "rm -f {d}/comfy.running && echo stop >> {d}/comfy.log"
        start: "touch {d}/comfy.running && echo start >> {d}/comfy.log"
        check: "test -f {d}/comfy.running"
  output:
    hostPath: {d}/out
  backoffLimit: 1
"#,
        job = fx.job("bad"),
        name = fx.name
    )
}

/// (what is wrong, text to replace, its replacement, the field the error must name).
fn cases(fx: &Fixture) -> Vec<(&'static str, String, String, &'static str)> {
    let d = fx.dir.path().display().to_string();
    let q = "  query: \"find sleep=1\"\n".to_string();
    let cmd_name = "      - name: comfy\n".to_string();
    let check = format!("        check: \"test -f {d}/comfy.running\"\n");
    let weights = format!("    weights:\n      hostPath: {d}/weights\n");
    let sel = "    selector:\n".to_string();
    let output = format!("  output:\n    hostPath: {d}/out\n");
    let video = format!("  video:\n    hostPath: {d}/video.mp4\n");
    let r = |a: &str, b: &str| (a.to_string(), b.to_string());
    let mut list = vec![
        ("query is a number", r(&q, "  query: 42\n"), "spec.query"),
        ("query is empty", r(&q, "  query: \"\"\n"), "spec.query"),
        ("query is blank", r(&q, "  query: \"   \"\n"), "spec.query"),
        ("query is missing", r(&q, ""), "spec.query"),
        (
            "query is too long",
            r(&q, &format!("  query: \"{}\"\n", "a".repeat(2001))),
            "spec.query",
        ),
        ("query is a list", r(&q, "  query: [a, b]\n"), "spec.query"),
        ("video is empty", r(&video, "  video: {}\n"), "spec.video"),
        (
            "two video sources",
            r(
                &video,
                &format!("  video:\n    hostPath: {d}/video.mp4\n    url: https://x/v.mp4\n"),
            ),
            "spec.video",
        ),
        (
            "video url is not http",
            r(&video, "  video:\n    url: ftp://x/v.mp4\n"),
            "spec.video.url",
        ),
        (
            "video file is missing",
            r(&video, &format!("  video:\n    hostPath: {d}/nope.mp4\n")),
            "spec.video.hostPath",
        ),
        (
            "video on a claim",
            r(&video, "  video:\n    volume: {claimName: v, path: a.mp4}\n"),
            "spec.video.volume",
        ),
        ("weights are missing", r(&weights, ""), "spec.model.weights"),
        (
            "weights are empty",
            r(&weights, "    weights: {}\n"),
            "spec.model.weights",
        ),
        (
            "weights on a claim",
            r(&weights, "    weights: {claimName: w}\n"),
            "spec.model.weights.claimName",
        ),
        (
            "weights dir is missing",
            r(&weights, &format!("    weights:\n      hostPath: {d}/nope\n")),
            "spec.model.weights.hostPath",
        ),
        (
            "unknown precision",
            r("    precision: auto\n", "    precision: fp8\n"),
            "spec.model.precision",
        ),
        (
            "empty image",
            r(&format!("    image: {IMAGE}\n"), "    image: \"\"\n"),
            "spec.model.image",
        ),
        (
            "bad minFreeMemory",
            r("    resourceName: nvidia.com/gpu\n", "    minFreeMemory: lots\n"),
            "spec.gpu.minFreeMemory",
        ),
        (
            "bad GPU device",
            r("    resourceName: nvidia.com/gpu\n", "    device: the-big-one\n"),
            "spec.gpu.device",
        ),
        (
            "duplicate command names",
            r(
                &check,
                &format!(
                    "{check}      - name: comfy\n        stop: \"true\"\n        start: \"true\"\n        check: \"true\"\n"
                ),
            ),
            "spec.coTenants.commands",
        ),
        (
            "empty command name",
            r(&cmd_name, "      - name: \"\"\n"),
            "spec.coTenants.commands[0].name",
        ),
        (
            "blank command name",
            r(&cmd_name, "      - name: \"  \"\n"),
            "spec.coTenants.commands[0].name",
        ),
        (
            "command without check",
            r(&check, ""),
            "spec.coTenants.commands[0].check",
        ),
        (
            "zero stop timeout",
            r(&check, &format!("{check}        stopTimeoutSeconds: 0\n")),
            "spec.coTenants.commands[0].stopTimeoutSeconds",
        ),
        (
            "start timeout is text",
            r(&check, &format!("{check}        startTimeoutSeconds: soon\n")),
            "spec.coTenants.commands[0].startTimeoutSeconds",
        ),
        (
            "unknown command field",
            r(&check, &format!("{check}        restart: always\n")),
            "spec.coTenants.commands[0].restart",
        ),
        (
            "a Deployment on Docker",
            r(&sel, "    refs: [{kind: Deployment, name: tts}]\n    selector:\n"),
            "spec.coTenants.refs[0].kind",
        ),
        (
            "an unknown kind",
            r(&sel, "    refs: [{kind: Pod, name: tts}]\n    selector:\n"),
            "spec.coTenants.refs[0].kind",
        ),
        (
            "a ref with a namespace",
            r(
                &sel,
                "    refs: [{kind: Container, name: tts, namespace: x}]\n    selector:\n",
            ),
            "spec.coTenants.refs[0].namespace",
        ),
        (
            "a ref to no container",
            r(
                &sel,
                "    refs: [{kind: Container, name: no-such-container-here}]\n    selector:\n",
            ),
            "spec.coTenants.refs[0].name",
        ),
        (
            "namespaces on Docker",
            r(&sel, "    namespaces: [gpu-apps]\n    selector:\n"),
            "spec.coTenants.namespaces",
        ),
        (
            "bad selector operator",
            r(
                &sel,
                "    selector:\n      matchExpressions: [{key: a, operator: Maybe, values: [b]}]\n",
            ),
            "spec.coTenants.selector.matchExpressions[0].operator",
        ),
        (
            "misspelt coTenants",
            r("  coTenants:\n", "  coTenant:\n"),
            "spec.coTenant",
        ),
        (
            "backoffLimit too high",
            r("  backoffLimit: 1\n", "  backoffLimit: 11\n"),
            "spec.backoffLimit",
        ),
        (
            "zero deadline",
            r("  backoffLimit: 1\n", "  activeDeadlineSeconds: 0\n"),
            "spec.activeDeadlineSeconds",
        ),
        (
            "negative TTL",
            r("  backoffLimit: 1\n", "  ttlSecondsAfterFinished: -1\n"),
            "spec.ttlSecondsAfterFinished",
        ),
        (
            "suspend is text",
            r("  backoffLimit: 1\n", "  suspend: sometimes\n"),
            "spec.suspend",
        ),
        ("output is empty", r(&output, "  output: {}\n"), "spec.output"),
        (
            "relative output path",
            r(&output, "  output:\n    hostPath: out\n"),
            "spec.output.hostPath",
        ),
        (
            "negative memory",
            r("  backoffLimit: 1\n", "  resources: {memory: -1Gi}\n"),
            "spec.resources.memory",
        ),
        (
            "wrong apiVersion",
            r("apiVersion: vidi.dev/v1alpha1\n", "apiVersion: vidi.dev/v1\n"),
            "apiVersion",
        ),
        ("wrong kind", r("kind: VidiJob\n", "kind: Job\n"), "kind"),
        ("bad job name", r("  name: ", "  name: Bad_"), "metadata.name"),
        ("spec is a list", r("spec:\n", "spec: []\nx:\n"), "spec"),
        (
            "release url is not http",
            r(&check, &format!("{check}        release: {{url: ftp://x/free}}\n")),
            "spec.coTenants.commands[0].release.url",
        ),
        (
            "release preset is unknown",
            r(
                &check,
                &format!("{check}        release: {{preset: grpc, url: http://x/free}}\n"),
            ),
            "spec.coTenants.commands[0].release.preset",
        ),
        (
            "vllm release without resumeUrl",
            r(
                &check,
                &format!("{check}        release: {{preset: vllm, url: http://x/sleep}}\n"),
            ),
            "spec.coTenants.commands[0].release",
        ),
        (
            "release body is not JSON",
            r(
                &check,
                &format!("{check}        release: {{url: http://x/free, body: \"{{no\"}}\n"),
            ),
            "spec.coTenants.commands[0].release.body",
        ),
        (
            "release timeout out of range",
            r(
                &check,
                &format!("{check}        release: {{url: http://x/free, timeoutSeconds: 0}}\n"),
            ),
            "spec.coTenants.commands[0].release.timeoutSeconds",
        ),
    ];
    list.sort_by_key(|c| c.0);
    list.into_iter()
        .map(|(what, (a, b), field)| (what, a, b, field))
        .collect()
}

async fn started(fx: &Fixture, name: &str) -> (Option<bool>, Option<String>) {
    let c = fx
        .docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let s = c.state.unwrap_or_default();
    (s.running, s.started_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_job_files_are_refused_naming_the_field_and_touch_nothing() {
    let Some(fx) = Fixture::new("badjob").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let _ = fx.command_yaml(); // the command co-tenant's marker: it "runs"
    let out = fx.path("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let previous = r#"{"segments":[[1,2]],"precision":"int8"}"#;
    std::fs::write(out.join("result.json"), previous).expect("previous result");
    let before = started(&fx, &tts).await;
    assert_eq!(before.0, Some(true));

    let base = base(&fx);
    let cases = cases(&fx);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (what, from, to, field) in &cases {
        assert!(
            base.contains(from.as_str()),
            "case {what:?}: the base job has no {from:?}"
        );
        let text = base.replacen(from.as_str(), to, 1);
        let file = fx.path("bad.yaml");
        std::fs::write(&file, &text).expect("job file");
        let run = std::process::Command::new(BIN)
            .args(["docker", "run", "--gpus", "none", "--state-dir"])
            .arg(fx.path("state"))
            .arg("-f")
            .arg(&file)
            .output()
            .expect("run vidi-operator");
        let err = String::from_utf8_lossy(&run.stderr).to_string();
        let named = err.lines().any(|l| {
            let l = l.trim_start().trim_start_matches("vidi-operator: ");
            l.starts_with(&format!("{field}:"))
                || l.contains(&format!(" {field}:"))
                || l.contains(&format!("({field}:"))
        });
        if run.status.code() != Some(1) || !named {
            failures.push(format!(
                "{what}: exit {:?}, expected 1 and an error naming {field}:\n{err}",
                run.status.code()
            ));
        }
        if err.contains("panicked") {
            failures.push(format!("{what}: panicked:\n{err}"));
        }
        let now = started(&fx, &tts).await;
        if now != before {
            failures.push(format!(
                "{what}: the co-tenant container was touched ({before:?} -> {now:?})"
            ));
        }
        if !fx.command_running() || !fx.command_log().is_empty() {
            failures.push(format!(
                "{what}: the command co-tenant was touched: {:?}",
                fx.command_log()
            ));
        }
        match std::fs::read_to_string(out.join("result.json")) {
            Ok(text) if text == previous => {}
            other => failures.push(format!("{what}: the previous result changed: {other:?}")),
        }
        if fx.journal_exists() {
            failures.push(format!("{what}: a journal was left"));
        }
    }
    eprintln!(
        "malformed job files: {} of {} refused naming the field with nothing touched",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
