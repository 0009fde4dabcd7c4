//! Every lint rule fires on its bad manifest and stays quiet on the good one.
#![allow(clippy::unwrap_used)]

use gpuplane_assess::objects::read_objects;
use gpuplane_posture::lint::{RULES, lint, sarif_rules};
use gpuplane_posture::sarif;

/// A GPU Deployment that passes every rule, in a namespace with a GPU quota.
const GOOD: &str = "\
apiVersion: v1
kind: ResourceQuota
metadata: {name: gpu, namespace: ml}
spec: {hard: {requests.nvidia.com/gpu: '8'}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: llm, namespace: ml}
spec:
  template:
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: server
          image: vllm/vllm-openai:v0.6
          securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}
          resources:
            requests: {nvidia.com/gpu: 1, cpu: '4', memory: 16Gi}
            limits: {nvidia.com/gpu: 1, cpu: '8', memory: 32Gi}
";

fn deployment(namespace: &str, pod_fields: &str, container_fields: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: bad, namespace: {namespace}}}\nspec:\n  template:\n    spec:\n{pod_fields}      containers:\n        - name: app\n          image: app:1\n{container_fields}"
    )
}

const LIMITS: &str = "          resources: {limits: {cpu: '1', memory: 1Gi}}\n";
const GPU_LIMITS: &str = "          resources: {limits: {nvidia.com/gpu: 1, cpu: '1', memory: 1Gi}}\n";

fn rules_fired(text: &str) -> Vec<String> {
    let objects = read_objects("bad.yaml", &format!("{GOOD}---\n{text}")).unwrap();
    let mut rules: Vec<String> = lint(&objects).into_iter().map(|f| f.rule).collect();
    rules.sort();
    rules.dedup();
    rules
}

#[test]
fn the_good_manifest_is_quiet() {
    let objects = read_objects("good.yaml", GOOD).unwrap();
    assert!(lint(&objects).is_empty(), "{:?}", lint(&objects));
}

#[test]
fn every_rule_fires_on_its_bad_case() {
    let cases = [
        (
            "GPU001",
            deployment("ml", "", &format!("          env: [{{name: NVIDIA_VISIBLE_DEVICES, value: all}}]\n{LIMITS}")),
        ),
        (
            "GPU002",
            deployment(
                "ml",
                "",
                "          resources: {requests: {nvidia.com/gpu: 1}, limits: {cpu: '1', memory: 1Gi}}\n",
            ),
        ),
        ("GPU003", deployment("ml", "", &format!("          securityContext: {{privileged: true}}\n{GPU_LIMITS}"))),
        ("GPU004", deployment("ml", "      volumes: [{name: dev, hostPath: {path: /dev/nvidia0}}]\n", LIMITS)),
        (
            "GPU005",
            deployment(
                "ml",
                "      volumes: [{name: sock, hostPath: {path: /run/containerd/containerd.sock}}]\n",
                LIMITS,
            ),
        ),
        ("GPU006", deployment("research", "", GPU_LIMITS)),
        ("GPU007", deployment("ml", "      tolerations: [{key: nvidia.com/gpu, operator: Exists}]\n", LIMITS)),
        ("K8S001", deployment("ml", "", &format!("          securityContext: {{privileged: true}}\n{LIMITS}"))),
        ("K8S002", deployment("ml", "      hostNetwork: true\n", LIMITS)),
        (
            "K8S003",
            deployment(
                "ml",
                "",
                &format!("          securityContext: {{capabilities: {{add: [SYS_ADMIN]}}}}\n{LIMITS}"),
            ),
        ),
        ("K8S004", deployment("ml", "", "")),
    ];
    assert_eq!(cases.len(), RULES.len());
    for (rule, manifest) in &cases {
        let fired = rules_fired(manifest);
        assert!(fired.contains(&rule.to_string()), "{rule} did not fire on\n{manifest}\nfired: {fired:?}");
        // Only the rule under test (and the privileged baseline beside GPU003) fires.
        let expected: Vec<String> =
            if *rule == "GPU003" { vec!["GPU003".into(), "K8S001".into()] } else { vec![rule.to_string()] };
        assert_eq!(fired, expected, "{manifest}");
    }
}

#[test]
fn node_agents_and_annotated_fractional_gpu_pods_may_tolerate_the_gpu_taint() {
    let agent = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: plugin, namespace: ml}\nspec:\n  template:\n    spec:\n      tolerations: [{key: nvidia.com/gpu, operator: Exists}]\n      containers: [{name: p, image: p:1, resources: {limits: {cpu: '1', memory: 1Gi}}}]\n";
    assert!(rules_fired(agent).is_empty(), "{:?}", rules_fired(agent));
    let fractional = deployment("ml", "      tolerations: [{key: nvidia.com/gpu, operator: Exists}]\n", LIMITS)
        .replace(
            "    spec:\n      tolerations",
            "    metadata: {annotations: {gpuplane.io/gpu-milli: '500'}}\n    spec:\n      tolerations",
        );
    assert!(rules_fired(&fractional).is_empty(), "{:?}\n{fractional}", rules_fired(&fractional));
}

#[test]
fn findings_become_sarif_with_a_help_text_per_rule_and_fingerprints_that_survive_moves() {
    let bad = deployment("ml", "", &format!("          env: [{{name: NVIDIA_VISIBLE_DEVICES, value: all}}]\n{LIMITS}"));
    let objects = read_objects("bad.yaml", &bad).unwrap();
    let findings = lint(&objects);
    let moved = read_objects("bad.yaml", &format!("# moved down\n\n{bad}")).unwrap();
    let moved_findings = lint(&moved);
    assert_eq!(findings[0].fingerprint, moved_findings[0].fingerprint);
    assert_ne!(findings[0].line, moved_findings[0].line);

    let log = sarif::write(&findings, &[sarif::ToolRules::from_help(gpuplane_posture::lint::TOOL, &sarif_rules())]);
    assert_eq!(log["version"], "2.1.0");
    let rules = log["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), RULES.len());
    assert!(rules.iter().all(|r| r["help"]["text"].as_str().unwrap().len() > 80));
    let result = &log["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "GPU001");
    assert_eq!(result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "bad.yaml");
    // Our own SARIF reads back with its fingerprint.
    let back = sarif::read("lint.sarif", &log.to_string(), std::path::Path::new(".")).unwrap();
    assert_eq!(back[0].fingerprint, findings[0].fingerprint);
}
