//! The Kubernetes manifests of `deploy/kubernetes`: every document passes
//! the schema check of its API version (KEDA's CRD for the ScaledObject),
//! a broken one fails it, and every flag and `DESA_` variable they give a
//! desa container is one its subcommand has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The validator's modules: `DESA_K8S_VALIDATOR`, else where
/// `scripts/test.sh` installs them.
fn validator_modules() -> PathBuf {
    let modules = std::env::var("DESA_K8S_VALIDATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/tmp/desa-tools/k8s-validate/node_modules"));
    assert!(
        modules.join("kubernetes-models").is_dir(),
        "the Kubernetes schema validator is not installed in {}; run scripts/test.sh, which installs it, or set DESA_K8S_VALIDATOR",
        modules.display()
    );
    modules
}

fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("deploy/kubernetes"), &mut out);
    out.sort();
    out
}

/// Runs the validator: `Ok(one JSON value per line)` or `Err(its message)`.
fn validate(files: &[PathBuf]) -> Result<Vec<Value>, String> {
    let out = Command::new("node")
        .arg(repo().join("deploy/kubernetes/validate/validate.cjs"))
        .args(files)
        .env("NODE_PATH", validator_modules())
        .output()
        .expect("node (scripts/test.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

/// `desa <subcommand> --help`.
fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_desa"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "desa {subcommand} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_check_and_use_flags_desa_has() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    let lines = validate(&files).unwrap_or_else(|e| panic!("{e}"));
    let config: Vec<String> = lines
        .iter()
        .filter_map(|l| l["data"].as_object())
        .flat_map(|d| d.keys().cloned())
        .collect();
    let mut read_by_some: BTreeSet<&str> = BTreeSet::new();
    let mut containers = 0;
    for c in lines.iter().filter(|l| l["container"].is_string()) {
        assert_eq!(c["image"], "desa:latest", "{c}");
        let args = strings(&c["args"]);
        let help = help(&args[0]);
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} ")),
                "{c}: desa {} has no {flag}",
                args[0]
            );
        }
        for var in strings(&c["env"]).iter().filter(|v| v.starts_with("DESA_")) {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{c}: desa {} does not read {var}",
                args[0]
            );
        }
        if strings(&c["envFrom"]).iter().any(|m| m == "desa-config") {
            read_by_some.extend(
                config
                    .iter()
                    .filter(|v| help.contains(&format!("[env: {v}")))
                    .map(String::as_str),
            );
        }
        containers += 1;
    }
    assert_eq!(containers, 3, "worker, migrate and the autoscale advisor");
    let unread: Vec<&String> = config
        .iter()
        .filter(|v| !read_by_some.contains(v.as_str()))
        .collect();
    assert!(unread.is_empty(), "no container reads {unread:?}");
}

#[test]
fn a_broken_manifest_fails_the_schema_check_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let broken = [
        (
            "keda/scaledobject.yaml",
            "minReplicaCount: 1",
            "minReplicaCount: one",
            "minReplicaCount",
        ),
        (
            "keda/scaledobject.yaml",
            "lagThreshold: \"500000\"",
            "lagThreshold: 500000",
            "lagThreshold",
        ),
        (
            "worker.yaml",
            "containerPort: 8080",
            "containerPort: http",
            "containerPort",
        ),
        (
            "hpa/hpa.yaml",
            "maxReplicas: 6",
            "maxReplicas: [6]",
            "maxReplicas",
        ),
    ];
    for (i, (file, good, bad, field)) in broken.into_iter().enumerate() {
        let text = std::fs::read_to_string(repo().join("deploy/kubernetes").join(file)).unwrap();
        assert!(text.contains(good), "{file} has no {good}");
        let path = tmp.path().join(format!("{i}.yaml"));
        std::fs::write(&path, text.replace(good, bad)).unwrap();
        let error = validate(&[path]).expect_err(bad);
        assert!(error.contains(field), "{bad}: {error}");
    }
}
