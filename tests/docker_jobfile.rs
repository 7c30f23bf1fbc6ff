//! Malformed job files, against the real engine: each is refused with exit 1 and a message
//! naming the field, and nothing is touched — the co-tenant container keeps running (same start
//! time), the command co-tenant is never stopped, the previous result in the output folder is
//! intact, and no journal is left. Each message says where in the file (`bad.yaml:12:5:
//! spec.query: …`) in the user's terms: no Rust type names or library hints.
mod docker_support;

use std::os::unix::fs::PermissionsExt as _;

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
            "output is a file",
            r(&output, &format!("  output:\n    hostPath: {d}/video.mp4\n")),
            "spec.output.hostPath",
        ),
        (
            "output not writable by the container's user",
            r(&output, &format!("  output:\n    hostPath: {d}/read-only\n")),
            "spec.output.hostPath",
        ),
        (
            "suspend is true (nothing on a Docker host would ever start it)",
            r("  backoffLimit: 1\n", "  suspend: true\n"),
            "spec.suspend",
        ),
        (
            "output under a file",
            r(&output, &format!("  output:\n    hostPath: {d}/video.mp4/out\n")),
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

/// Words only a Rust programmer would understand (library hints, Rust type names).
const LIBRARY_WORDS: [&str; 11] = [
    "from_str",
    "DuplicateKeyPolicy",
    "Options",
    "i32",
    "i64",
    "u32",
    "u64",
    "f64",
    "serde",
    "saphyr",
    "Option<",
];

/// The library words in `err`, if any.
fn library_words(err: &str) -> Vec<&'static str> {
    LIBRARY_WORDS.into_iter().filter(|w| err.contains(w)).collect()
}

/// Checks that the line naming `field` starts with `FILE:LINE:COLUMN: ` and that the place is
/// the field's: the line holds the field's key or, for a field that is missing, the key of a
/// field it belongs in (or the start of the list item it belongs in). Returns what is wrong.
fn check_place(err: &str, file: &str, text: &str, field: &str) -> Option<String> {
    let needle = format!(" {field}:");
    let Some(line) = err.lines().find(|l| l.contains(&needle)) else {
        return Some(format!("no line names {field}"));
    };
    let prefix = format!("{file}:");
    let Some(place) = line
        .trim_start()
        .trim_start_matches("error: ")
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once(&needle))
        .map(|(p, _)| p)
    else {
        return Some(format!("the line does not start with {prefix}LINE:COLUMN: {line}"));
    };
    let numbers: Vec<usize> = place.split(':').filter_map(|n| n.parse().ok()).collect();
    let [l, c] = numbers[..] else {
        return Some(format!("no LINE:COLUMN in {line:?}"));
    };
    let Some(source) = text.lines().nth(l.wrapping_sub(1)) else {
        return Some(format!("line {l} is not in the file: {line}"));
    };
    if c == 0 || c > source.chars().count() + 1 {
        return Some(format!("column {c} is not in line {l} {source:?}: {line}"));
    }
    let keys: Vec<&str> = field
        .split(['.', '['])
        .filter(|k| !k.is_empty() && !k.ends_with(']'))
        .collect();
    // A list item is pointed at where it starts (`- name: …`).
    let item_start = field.contains('[') && source.trim_start().starts_with("- ");
    if !item_start && !keys.iter().any(|k| source.contains(k)) {
        return Some(format!("line {l} {source:?} holds none of {keys:?}: {line}"));
    }
    None
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
    // Writable by the Vidi container's user (1000:1000) whoever runs the tests; `read-only` is
    // writable by nobody but root (and the tests' runner, when that is 1000).
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod out");
    let read_only = fx.path("read-only");
    std::fs::create_dir_all(&read_only).expect("read-only dir");
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).expect("chmod");
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
        if err.contains(&format!("{field}: {field}")) {
            failures.push(format!("{what}: the field is named twice:\n{err}"));
        }
        if err.contains("panicked") {
            failures.push(format!("{what}: panicked:\n{err}"));
        }
        if let Some(wrong) = check_place(&err, &file.display().to_string(), &text, field) {
            failures.push(format!("{what}: {wrong}\n{err}"));
        }
        let words = library_words(&err);
        if !words.is_empty() {
            failures.push(format!("{what}: library words {words:?}:\n{err}"));
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
        "malformed job files: {} of {} refused naming the field and its line:column, with nothing touched",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What is wrong with the YAML itself, each class once: where (line:column) and what, in the
/// user's terms. These are refused before Docker is contacted.
#[test]
fn yaml_mistakes_say_where_and_what_in_the_users_terms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = "apiVersion: vidi.dev/v1alpha1\nkind: VidiJob\nmetadata:\n  name: j\nspec:\n  video: {hostPath: /v.mp4}\n  query: q\n  model: {weights: {hostPath: /w}}\n";
    // (class, file text, the start of the message after "error: ").
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "two documents",
            format!("{good}---\n{good}"),
            "job.yaml:10:1: a second YAML document starts here (a \"---\" line): a job file holds exactly one VidiJob",
        ),
        (
            "a key given twice",
            good.replace("  query: q\n", "  query: q\n  query: r\n"),
            "job.yaml:8:3: \"query\" is given twice in the same mapping; keep one",
        ),
        (
            "a key given twice inside a flow mapping",
            good.replace("{hostPath: /v.mp4}", "{hostPath: /v.mp4, hostPath: /x.mp4}"),
            "job.yaml:6:29: \"hostPath\" is given twice in the same mapping",
        ),
        (
            "a wrong type",
            good.replace("  query: q\n", "  query: q\n  backoffLimit: ten\n"),
            "job.yaml is not a valid VidiJob:\n  job.yaml:8:17: spec.backoffLimit: expected an integer, got the string \"ten\"",
        ),
        (
            "a number out of its type's range",
            good.replace(
                "  query: q\n",
                "  query: q\n  gpu: {tolerations: [{key: a, tolerationSeconds: 10000000000000000000}]}\n",
            ),
            "job.yaml is not a valid VidiJob:\n  job.yaml:8:51: spec.gpu.tolerations[0].tolerationSeconds: expected an integer from -9223372036854775808 to 9223372036854775807, got the number 10000000000000000000",
        ),
        (
            "an unknown field",
            good.replace("  query: q\n", "  query: q\n  timeoutSeconds: 10\n"),
            "job.yaml is not a valid VidiJob:\n  job.yaml:8:3: spec.timeoutSeconds: unknown field; expected one of:",
        ),
        ("not YAML", good.replace("  query: q\n", "  query: [q\n"), "job.yaml:8:"),
        ("empty", String::new(), "job.yaml:1:1: the file is empty"),
        (
            "a list",
            "- a\n".to_string(),
            "job.yaml:1:1: expected a mapping with apiVersion, kind, metadata and spec, got a list",
        ),
    ];
    let mut failures = Vec::new();
    for (class, text, expected) in &cases {
        let file = dir.path().join("job.yaml");
        std::fs::write(&file, text).expect("job file");
        let out = std::process::Command::new(BIN)
            .current_dir(dir.path())
            .args(["docker", "run", "--gpus", "none", "-f", "job.yaml"])
            .output()
            .expect("run vidi-operator");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.code() != Some(1) || !err.starts_with(&format!("error: {expected}")) {
            failures.push(format!(
                "{class}: exit {:?}, expected 1 and \"error: {expected}…\", got:\n{err}",
                out.status.code()
            ));
        }
        let words = library_words(&err);
        if !words.is_empty() {
            failures.push(format!("{class}: library words {words:?}:\n{err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
