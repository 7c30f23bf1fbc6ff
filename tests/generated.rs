//! Generated files are current, and every example VidiJob is accepted (or, in examples/invalid,
//! refused naming the field) by the CRD schema, its CEL rules and the operator's validator.
use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use vidi_operator::api::{Runtime, VidiJob, crd_yaml, validate};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn crd_yaml_is_current() {
    let generated = crd_yaml().expect("CRD serializes");
    assert!(
        read(&root().join("crds/vidijob.yaml")) == generated,
        "crds/vidijob.yaml is stale: run `cargo run -- crd > crds/vidijob.yaml && scripts/sync-chart-crds.sh`"
    );
    assert_eq!(
        read(&root().join("charts/vidi-operator/crds/vidijob.yaml")),
        generated,
        "the chart's CRD copy is stale: run scripts/sync-chart-crds.sh"
    );
}

#[test]
fn rbac_rules_are_current() {
    let generated = vidi_operator::kube::rbac::rules_yaml().expect("rules serialize");
    assert!(
        read(&root().join("charts/vidi-operator/files/rbac-rules.yaml")) == generated,
        "charts/vidi-operator/files/rbac-rules.yaml is stale: run `cargo run -- rbac > charts/vidi-operator/files/rbac-rules.yaml`"
    );
}

/// Every VidiJob document in a YAML file (files may hold several documents and other kinds).
fn jobs_in(path: &Path) -> Vec<serde_json::Value> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| d["kind"] == "VidiJob").collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let p = entry.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// All problems with one VidiJob document: CEL rules from the CRD, typing, and the validator.
fn problems(doc: &serde_json::Value, runtime: Runtime) -> Vec<String> {
    let mut found = Vec::new();
    let schema = serde_json::to_value(
        VidiJob::crd().spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("schema json");
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, doc, None) {
        found.push(format!("{errors:?}"));
    }
    match serde_path_to_error::deserialize::<_, VidiJob>(doc.clone()) {
        Ok(job) => found.extend(validate(&job.spec, runtime).iter().map(|e| e.to_string())),
        Err(e) => found.push(format!("{}: {}", e.path(), e.inner())),
    }
    found
}

#[test]
fn example_jobs_are_valid() {
    let mut checked = 0;
    for path in yaml_files(&root().join("examples")) {
        if path.components().any(|c| c.as_os_str() == "invalid") {
            continue;
        }
        let runtime = if path.components().any(|c| c.as_os_str() == "docker") {
            Runtime::Docker
        } else {
            Runtime::Kubernetes
        };
        for doc in jobs_in(&path) {
            let p = problems(&doc, runtime);
            assert!(p.is_empty(), "{} is refused: {p:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 4, "expected the example jobs, found {checked}");
}

#[test]
fn invalid_examples_are_refused_naming_the_field() {
    let mut checked = 0;
    for path in yaml_files(&root().join("examples/invalid")) {
        let text = read(&path);
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("{} has no `# expect: <field>` line", path.display()));
        for doc in jobs_in(&path) {
            let p = problems(&doc, Runtime::Kubernetes);
            let field_tail = expect.rsplit('.').next().unwrap_or(&expect);
            assert!(
                p.iter().any(|m| m.contains(&expect) || m.contains(field_tail)),
                "{}: expected an error naming {expect}, got {p:?}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "expected the invalid corpus, found {checked}");
}
