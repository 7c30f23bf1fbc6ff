//! The command line as a user meets it: no arguments shows help (exit 0, like kubectl, helm and
//! docker), and a user error is printed once as `error: …`, never with a backtrace, even with
//! `RUST_BACKTRACE=1` set.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vidi-operator");

#[test]
fn no_arguments_shows_help_and_is_no_error() {
    let out = Command::new(BIN).output().expect("run vidi-operator");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: vidi-operator [COMMAND]"), "{text}");
    for command in ["run", "docker", "gpu", "crd", "rbac"] {
        assert!(
            text.contains(&format!("\n  {command} ")),
            "{command} is listed:\n{text}"
        );
    }
}

#[test]
fn a_user_error_is_printed_once_without_a_backtrace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("job.yaml");
    std::fs::write(
        &file,
        "apiVersion: vidi.dev/v1alpha1\nkind: VidiJob\nmetadata: {name: j}\nspec:\n  video: {hostPath: /v.mp4}\n  query: 42\n  model: {weights: {hostPath: /w}}\n",
    )
    .expect("job file");
    let out = Command::new(BIN)
        .args(["docker", "run", "--gpus", "none", "-f"])
        .arg(&file)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run vidi-operator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "printed once:\n{err}");
    assert!(
        err.contains("spec.query: expected a string (quote it), got the number 42"),
        "{err}"
    );
    assert!(!err.contains("backtrace") && !err.contains("Caused by"), "{err}");
}

#[test]
fn a_wrong_command_line_exits_2() {
    let out = Command::new(BIN)
        .args(["docker", "run", "--no-such-flag"])
        .output()
        .expect("run vidi-operator");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument '--no-such-flag'"), "{err}");
}

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run vidi-operator");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_printing_command_takes_o_json_and_yaml() {
    // crd and rbac: YAML by default (what the repository commits), JSON on request.
    for command in ["crd", "rbac"] {
        let yaml: serde_json::Value =
            serde_saphyr::from_str(&stdout_of(&[command])).unwrap_or_else(|e| panic!("{command}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&stdout_of(&[command, "-o", "json"]))
            .unwrap_or_else(|e| panic!("{command} -o json: {e}"));
        assert_eq!(yaml, json, "{command}: the same content either way");
    }
    let crd: serde_json::Value = serde_json::from_str(&stdout_of(&["crd", "-o", "json"])).expect("json");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    // docker recover (needs only the engine): a line, JSON or YAML.
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_str().expect("utf-8 path");
    let table = stdout_of(&["docker", "recover", "--state-dir", dir]);
    assert!(table.starts_with("nothing to recover"), "{table}");
    for format in ["json", "yaml"] {
        let text = stdout_of(&["docker", "recover", "--state-dir", dir, "-o", format]);
        let value: serde_json::Value = if format == "json" {
            serde_json::from_str(&text).expect("json")
        } else {
            serde_saphyr::from_str(&text).expect("yaml")
        };
        assert_eq!(value, serde_json::json!({"recovered": null}), "{format}: {text}");
    }
}

#[test]
fn with_o_json_an_error_is_the_last_json_line_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("job.yaml");
    std::fs::write(
        &file,
        "apiVersion: vidi.dev/v1alpha1\nkind: VidiJob\nmetadata: {name: j}\nspec: []\n",
    )
    .expect("job file");
    let out = Command::new(BIN)
        .args(["docker", "run", "--gpus", "none", "-o", "json", "-f"])
        .arg(&file)
        .output()
        .expect("run vidi-operator");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().unwrap_or_else(|| panic!("no JSON line:\n{stdout}"));
    assert_eq!(last["event"], "error");
    assert_eq!(last["exitCode"], 1);
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec: expected a mapping")),
        "{last}"
    );
    // People still read it on stderr, once.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("error:").count(), 1, "{err}");

    // An engine that does not answer: its error chain in the message, each part once (hyper's
    // and bollard's errors repeat their sources in their own text).
    std::fs::write(
        &file,
        "apiVersion: vidi.dev/v1alpha1\nkind: VidiJob\nmetadata: {name: j}\nspec:\n  video: {url: \"https://x/v.mp4\"}\n  query: q\n  model: {weights: {hostPath: /w}}\n",
    )
    .expect("job file");
    let out = Command::new(BIN)
        .args(["docker", "run", "--gpus", "none", "-o", "json", "-f"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("DOCKER_HOST", "tcp://127.0.0.1:1")
        .output()
        .expect("run vidi-operator");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let message = last["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("cannot reach the Docker engine (tcp://127.0.0.1:1"),
        "{last}"
    );
    assert!(message.contains("Connection refused"), "{last}");
    let parts: Vec<&str> = message.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[..i].contains(p), "{p:?} said twice: {message}");
    }
}

#[test]
fn run_refuses_a_metrics_port_already_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    // A kube context that is never reached: the port is checked before anything talks to it.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .expect("kubeconfig");
    let out = Command::new(BIN)
        .args(["run", "--metrics-addr", &addr.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("VIDI_LEADER_ELECTION")
        .env_remove("VIDI_METRICS_ADDR")
        .output()
        .expect("run vidi-operator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on --metrics-addr {addr}")),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "no colour codes off a terminal: {err:?}");
}

#[test]
fn an_empty_user_for_the_vidi_container_is_refused() {
    // Docker would run Vidi as the image's own user (root, for most) instead.
    for user in ["", "1000:", ":1000"] {
        let out = Command::new(BIN)
            .args(["docker", "run", "-f", "job.yaml", "--dry-run", "--user", user])
            .output()
            .expect("run vidi-operator");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{user:?}: {err}");
        assert!(err.contains("--user"), "{user:?}: {err}");
        assert!(err.contains("expected UID:GID (such as 1000:1000)"), "{user:?}: {err}");
    }
}
