//! Fixture organisations built on disk (git repositories with dated commits and tags, a manifests
//! folder, a survey) at known maturity, assessed end to end: levels, evidence, plan, trend, errors.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuplane_assess::assess::{Status, parse_date, read_manifest_dir};
use gpuplane_assess::baseline::{compare, read_baseline};
use gpuplane_assess::repo::discover;
use gpuplane_assess::survey::Survey;
use gpuplane_assess::{Assessment, Inputs, Model, assess};

const AS_OF: &str = "2026-11-01";

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn git(repo: &Path, args: &[&str], date: &str) {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.com",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .output()
        .unwrap();
    assert!(status.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&status.stderr));
}

/// A repository with `files`, committed on `days` (days before AS_OF, oldest first), tagged
/// `v0.N.0` at each commit when `tagged`.
fn repo(org: &Path, name: &str, files: &[(&str, &str)], days: &[i64], tagged: bool) -> PathBuf {
    let root = org.join(name);
    std::fs::create_dir_all(&root).unwrap();
    git(&root, &["init", "-q", "-b", "main"], "2026-01-01T00:00:00Z");
    let as_of = parse_date(AS_OF).unwrap() - 86_399;
    for (n, day) in days.iter().enumerate() {
        if n == 0 {
            for (file, text) in files {
                write(&root, file, text);
            }
        } else {
            write(&root, "CHANGELOG.md", &format!("change {n}\n"));
        }
        let date = format!("@{} +0000", as_of - day * 86_400 + 3600);
        git(&root, &["add", "-A"], &date);
        let message = if n == 2 { "hotfix: roll back config".to_owned() } else { format!("change {n}") };
        git(&root, &["commit", "-q", "-m", &message], &date);
        if tagged {
            let tag_date = format!("@{} +0000", as_of - day * 86_400 + 7200);
            let tag = format!("v0.{n}.0");
            git(&root, &["tag", "-a", "-m", &tag, &tag], &tag_date);
        }
    }
    root
}

const WORKFLOW: &str = "on: [push]\njobs:\n  golden:\n    uses: acme/platform/.github/workflows/golden.yml@v1\n  scan:\n    runs-on: ubuntu-latest\n    steps:\n      - run: gitleaks detect\n      - run: semgrep --sarif -o semgrep.sarif\n";

fn catalog(name: &str) -> String {
    format!(
        "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  annotations:\n    backstage.io/source-template: template:default/service\n    backstage.io/techdocs-ref: dir:.\nspec:\n  type: service\n  owner: group:team-{name}\n  lifecycle: production\n"
    )
}

const SERVICE_FILES: [(&str, &str); 7] = [
    ("README.md", "# service\n"),
    ("CODEOWNERS", "* @acme/team\n"),
    ("SECURITY.md", "Report to security@example.com\n"),
    (".github/workflows/ci.yml", WORKFLOW),
    ("renovate.json", "{\"extends\": [\"config:recommended\"]}\n"),
    ("docs/runbooks/oncall.md", "# On call\n"),
    ("chart/Chart.yaml", "apiVersion: v2\nname: service\nversion: 0.1.0\n"),
];

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {pod-security.kubernetes.io/enforce: baseline}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b, labels: {pod-security.kubernetes.io/enforce: restricted}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ml, labels: {pod-security.kubernetes.io/enforce: restricted}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team-a}
spec:
  template:
    spec:
      containers:
        - {name: web, image: web:1, readinessProbe: {httpGet: {path: /ready, port: 8080}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: llm, namespace: ml}
spec:
  template:
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.6
          readinessProbe: {httpGet: {path: /health, port: 8000}}
          resources: {limits: {nvidia.com/gpu: 1}}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: gpu, namespace: ml}
spec: {hard: {requests.nvidia.com/gpu: '4'}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: team-a}
spec: {minAvailable: 1, selector: {matchLabels: {app: web}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: team-a}
spec: {scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}, maxReplicas: 5}
---
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: web, namespace: argocd}
spec: {source: {repoURL: 'https://git.example.com/acme/svc-a', path: chart}}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: web, namespace: team-a}
spec: {endpoints: [{port: metrics}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: nvidia-device-plugin, namespace: kube-system}
spec:
  template:
    spec:
      containers:
        - {name: plugin, image: 'nvcr.io/nvidia/k8s-device-plugin:v0.17.0'}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: team-a}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: ml}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

const AUDIT_POLICY: &str = "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: require-limits}\nspec:\n  validationFailureAction: Audit\n  rules: [{name: limits, validate: {message: set limits}}]\n";

const SURVEY: &str =
    "respondent: platform team\nanswers:\n  platform_team: true\n  product_manager: 1\n  satisfaction_survey: 2\n";

/// An organisation at level 3 in most areas (adoption at 2: the platform repository was not created
/// from a template, so 3 of 4 active repositories carry the annotation).
fn defined_organisation(org: &Path) -> (Inputs, PathBuf) {
    let mut platform_files: Vec<(&str, String)> = vec![
        ("README.md", "# platform\n".into()),
        ("CODEOWNERS", "* @acme/platform\n".into()),
        ("SECURITY.md", "Report to security@example.com\n".into()),
        ("ROADMAP.md", "# 2027\n".into()),
        (".github/workflows/golden.yml", WORKFLOW.replace("uses: acme/platform/.github/workflows/golden.yml@v1", "runs-on: ubuntu-latest")),
        ("renovate.json", "{}\n".into()),
        ("docs/runbooks/platform.md", "# Platform on call\n".into()),
        ("deploy/kustomization.yaml", "resources: []\n".into()),
        (
            "catalog-info.yaml",
            "apiVersion: backstage.io/v1alpha1\nkind: System\nmetadata:\n  name: platform\n  annotations:\n    backstage.io/techdocs-ref: dir:.\nspec:\n  owner: group:platform\n".into(),
        ),
        (
            "templates/service/template.yaml",
            "apiVersion: scaffolder.backstage.io/v1beta3\nkind: Template\nmetadata: {name: service}\nspec: {type: service, steps: []}\n".into(),
        ),
    ];
    platform_files.sort();
    let platform: Vec<(&str, &str)> = platform_files.iter().map(|(f, t)| (*f, t.as_str())).collect();
    repo(org, "platform", &platform, &[40, 20, 5], true);
    for name in ["svc-a", "svc-b", "svc-c"] {
        let catalog = catalog(name);
        let mut files: Vec<(&str, &str)> = SERVICE_FILES.to_vec();
        files.push(("catalog-info.yaml", &catalog));
        repo(org, name, &files, &[60, 30, 10], true);
    }
    let manifests = org.join("manifests");
    write(&manifests, "cluster.yaml", MANIFESTS);
    write(&manifests, "policies/limits.yaml", AUDIT_POLICY);
    let model = Model::builtin().unwrap();
    let survey = Survey::parse("survey.yaml", SURVEY, &model).unwrap();
    let mut warnings = Vec::new();
    let inputs = Inputs {
        repos: discover(org).unwrap(),
        platform: vec!["platform".into()],
        manifests: read_manifest_dir(&manifests, &mut warnings).unwrap(),
        survey: Some(survey),
        as_of: parse_date(AS_OF).unwrap(),
        warnings,
        helm: None,
    };
    (inputs, manifests)
}

fn levels(assessment: &Assessment) -> Vec<(String, Option<u8>)> {
    assessment.areas.iter().map(|a| (a.id.clone(), a.level)).collect()
}

fn check<'a>(assessment: &'a Assessment, id: &str) -> &'a gpuplane_assess::assess::CheckResult {
    assessment.checks.iter().find(|c| c.id == id).unwrap()
}

#[test]
fn a_defined_organisation_is_at_level_three_with_evidence_and_a_plan() {
    let org = tempfile::tempdir().unwrap();
    let (inputs, _) = defined_organisation(org.path());
    assert_eq!(inputs.repos.len(), 4, "the manifests folder is not a repository");
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    let expected: Vec<(String, Option<u8>)> = [
        ("investment", 3),
        ("adoption", 2),
        ("interfaces", 3),
        ("delivery", 3),
        ("operations", 3),
        ("governance", 3),
        ("measurement", 3),
        ("gpu", 3),
    ]
    .iter()
    .map(|(a, l)| (a.to_string(), Some(*l)))
    .collect();
    assert_eq!(levels(&result), expected);

    // Evidence names the repository file, with a line for a grep, or the object's file and line.
    let owners = check(&result, "investment.platform-owners");
    assert_eq!(owners.evidence, ["platform:CODEOWNERS"]);
    let sarif = check(&result, "governance.sast-sarif");
    assert!(sarif.evidence.contains(&"svc-a:.github/workflows/ci.yml:9".to_owned()), "{:?}", sarif.evidence);
    let quota = check(&result, "gpu.quota");
    assert_eq!(quota.status, Status::Pass);
    assert!(quota.evidence[0].ends_with("cluster.yaml:35 ResourceQuota/ml/gpu"), "{:?}", quota.evidence);
    let team = check(&result, "investment.dedicated-team");
    assert_eq!(team.evidence, ["survey.yaml:3 platform_team = 1 (attested)"]);
    assert_eq!(team.source, gpuplane_assess::assess::Source::Attested);

    // Survey questions left unanswered are not measurable, not failed.
    assert_eq!(check(&result, "interfaces.request-to-ready").status, Status::NotMeasurable);
    // DORA from tags: three deployments per service, one followed by a hotfix.
    let svc = result.repositories.iter().find(|r| r.name == "svc-a").unwrap();
    assert_eq!(svc.dora.deployments, 3);
    assert_eq!(svc.dora.change_failure_rate, Some(0.5));
    // Each deployment ships one commit, tagged an hour after it was made.
    assert_eq!(svc.dora.lead_time_hours, Some(1.0));
    assert_eq!(svc.dora.recovery_hours, Some(20.0 * 24.0));
    assert_eq!(check(&result, "measurement.dora-measurable").status, Status::Pass);
    assert_eq!(check(&result, "delivery.deploy-frequency").status, Status::Fail);

    // The plan lists the next level's failing checks per area, with what is missing.
    let adoption: Vec<_> = result.plan.iter().filter(|m| m.area == "adoption").collect();
    assert_eq!(adoption.len(), 1, "{adoption:?}");
    assert_eq!(adoption[0].check, "adoption.templates");
    assert_eq!((adoption[0].from_level, adoption[0].to_level), (2, 3));
    assert!(
        adoption[0].now.contains("3 of 4 active repositories pass; 4 needed; missing: platform"),
        "{}",
        adoption[0].now
    );
    let governance: Vec<&str> =
        result.plan.iter().filter(|m| m.area == "governance").map(|m| m.check.as_str()).collect();
    assert_eq!(governance, ["governance.policy-enforced"]);
    assert!(result.plan.iter().all(|m| m.area != "investment" || m.to_level == 4));
}

#[test]
fn an_organisation_with_bare_repositories_is_ad_hoc_everywhere() {
    let org = tempfile::tempdir().unwrap();
    repo(org.path(), "api", &[("main.py", "print('hi')\n")], &[3], false);
    repo(org.path(), "worker", &[("main.go", "package main\n")], &[7], false);
    let inputs =
        Inputs { repos: discover(org.path()).unwrap(), as_of: parse_date(AS_OF).unwrap(), ..Inputs::default() };
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    assert!(levels(&result).iter().all(|(_, level)| *level == Some(1)), "{:?}", levels(&result));
    // No platform repository named among two: platform checks cannot be measured.
    let owners = check(&result, "investment.platform-owners");
    assert_eq!(owners.status, Status::NotMeasurable);
    assert!(owners.reason.contains("--platform"));
    // No manifests: Kubernetes checks cannot be measured either; CI is simply missing.
    assert_eq!(check(&result, "gpu.device-plugin").status, Status::NotMeasurable);
    assert_eq!(check(&result, "delivery.ci").status, Status::Fail);
    assert_eq!(check(&result, "delivery.ci").missing, ["api", "worker"]);
    assert!(result.plan.iter().all(|m| m.to_level == 2));
    assert!(result.plan.iter().any(|m| m.check == "delivery.ci"));
}

#[test]
fn an_inactive_repository_is_left_out_of_coverage() {
    let org = tempfile::tempdir().unwrap();
    repo(org.path(), "api", &[(".github/workflows/ci.yml", "on: push\n")], &[3], false);
    repo(org.path(), "legacy", &[("main.c", "int main;\n")], &[400], false);
    let inputs =
        Inputs { repos: discover(org.path()).unwrap(), as_of: parse_date(AS_OF).unwrap(), ..Inputs::default() };
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    let ci = check(&result, "delivery.ci");
    assert_eq!(ci.status, Status::Pass);
    assert_eq!(ci.coverage.unwrap().total, 1);
    assert!(!result.repositories.iter().find(|r| r.name == "legacy").unwrap().active);
}

#[test]
fn a_pod_given_every_gpu_through_the_environment_fails_the_gpu_rule_with_its_place() {
    let org = tempfile::tempdir().unwrap();
    let (mut inputs, manifests) = defined_organisation(org.path());
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: debug, namespace: ml}\nspec:\n  containers:\n    - name: shell\n      image: ubuntu\n      env: [{name: NVIDIA_VISIBLE_DEVICES, value: all}]\n";
    write(&manifests, "debug-pod.yaml", bad);
    inputs.manifests = read_manifest_dir(&manifests, &mut Vec::new()).unwrap();
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    let rule = check(&result, "gpu.no-visible-devices-all");
    assert_eq!(rule.status, Status::Fail);
    assert_eq!(rule.missing.len(), 1);
    assert!(rule.missing[0].ends_with("debug-pod.yaml:1 Pod/ml/debug"), "{:?}", rule.missing);
    assert_eq!(result.areas.iter().find(|a| a.id == "gpu").unwrap().level, Some(2));
}

#[test]
fn a_baseline_shows_which_areas_moved_and_which_checks_changed() {
    let org = tempfile::tempdir().unwrap();
    let (mut inputs, manifests) = defined_organisation(org.path());
    let model = Model::builtin().unwrap();
    let before = assess(&model, &inputs).unwrap();
    let json = serde_json::to_string_pretty(&before).unwrap();
    let previous = read_baseline("previous.json", &json).unwrap();
    assert_eq!(previous.checks.len(), before.checks.len());

    write(&manifests, "policies/limits.yaml", &AUDIT_POLICY.replace("Audit", "Enforce"));
    inputs.manifests = read_manifest_dir(&manifests, &mut Vec::new()).unwrap();
    let after = assess(&model, &inputs).unwrap();
    let trend = compare(&previous, &after);
    let governance = trend.areas.iter().find(|a| a.id == "governance").unwrap();
    assert_eq!((governance.before, governance.after), (Some(3), Some(4)));
    assert!(trend.areas.iter().filter(|a| a.id != "governance").all(|a| a.before == a.after));
    assert_eq!(trend.changed.len(), 1);
    assert_eq!(trend.changed[0].id, "governance.policy-enforced");
    assert_eq!((trend.changed[0].before, trend.changed[0].after), (Some(Status::Fail), Some(Status::Pass)));
}

#[test]
fn a_model_extension_reweights_and_adds_a_check() {
    let org = tempfile::tempdir().unwrap();
    let (inputs, _) = defined_organisation(org.path());
    let text = "extends: builtin\nversion: acme\nremove: [adoption.templates]\nweights: {areas: {gpu: 0}}\nchecks:\n  - id: acme.changelog\n    area: delivery\n    level: 2\n    title: Changelog\n    milestone: Every service keeps a CHANGELOG.md.\n    evaluate: {kind: repo_file, paths: [CHANGELOG.md], coverage: 1.0}\n";
    let model = Model::load("acme.yaml", text).unwrap();
    let result = assess(&model, &inputs).unwrap();
    assert_eq!(result.areas.iter().find(|a| a.id == "adoption").unwrap().level, Some(3));
    assert_eq!(check(&result, "acme.changelog").status, Status::Pass);
    let builtin = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    let gpu_score = builtin.areas.iter().find(|a| a.id == "gpu").unwrap().score.unwrap();
    assert!(gpu_score < 100.0);
    // With the GPU area weighted 0 the overall score is the mean of the other areas.
    let others: Vec<f64> = result.areas.iter().filter(|a| a.id != "gpu").map(|a| a.score.unwrap()).collect();
    let mean = others.iter().sum::<f64>() / others.len() as f64;
    assert!((result.score.unwrap() - mean).abs() < 1e-9);
}

#[test]
fn bad_inputs_name_the_place() {
    let org = tempfile::tempdir().unwrap();
    let model = Model::builtin().unwrap();
    let err = Survey::parse("survey.yaml", "answers:\n  satisfaction_survey: 9\n", &model).unwrap_err();
    assert_eq!(
        err.to_string(),
        "survey.yaml: line 2: answers.satisfaction_survey: expected an answer from 0 to 3, found 9"
    );
    let err = Survey::parse("survey.yaml", "answers: [\n", &model).unwrap_err();
    assert!(err.to_string().starts_with("survey.yaml: line "), "{err}");

    write(org.path(), "manifests/broken.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a\n");
    let err = read_manifest_dir(&org.path().join("manifests"), &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("broken.yaml: line "), "{err}");

    let plain = org.path().join("not-a-repo");
    std::fs::create_dir_all(&plain).unwrap();
    let err = discover(&plain).unwrap_err().to_string();
    assert!(err.starts_with(&plain.display().to_string()), "{err}");
    assert!(err.contains("not a git repository"), "{err}");
    let err = discover(&org.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");

    let err = read_baseline("old.json", "{\"schema\": \"gpuplane.sim/v1\"}").unwrap_err().to_string();
    assert!(err.starts_with("old.json: schema: expected gpuplane.assess/v1"), "{err}");
}

#[test]
fn vendored_files_and_kustomize_patches_are_no_workloads_and_a_skipped_template_is_named() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: debug, namespace: ml}\nspec:\n  containers:\n    - name: shell\n      image: ubuntu\n      env: [{name: NVIDIA_VISIBLE_DEVICES, value: all}]\n";
    let patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: llm}\nspec:\n  template:\n    spec:\n      containers:\n        - name: server\n          env: [{name: NVIDIA_VISIBLE_DEVICES, value: all}]\n";
    let files = [
        ("vendor/github.com/acme/tool/deploy/pod.yaml", bad),
        ("third_party/chart/pod.yaml", bad),
        (
            "deploy/overlays/prod/kustomization.yaml",
            "resources: [../../base]\npatches:\n  - path: gpu.yaml\npatchesStrategicMerge: [./more.yaml]\n",
        ),
        ("deploy/overlays/prod/gpu.yaml", patch),
        ("deploy/overlays/prod/more.yaml", patch),
        (
            "chart/templates/deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n",
        ),
        // A GPU workload of the platform's own, so that GPU capacity applies.
        (
            "deploy/llm.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: llm, namespace: ml}\nspec:\n  containers:\n    - {name: server, image: vllm, resources: {limits: {nvidia.com/gpu: 1}}}\n",
        ),
    ];
    let rule_status = |extra: &[(&str, &str)]| {
        let org = tempfile::tempdir().unwrap();
        let all: Vec<(&str, &str)> = files.iter().copied().chain(extra.iter().copied()).collect();
        repo(org.path(), "platform", &all, &[3], false);
        let inputs =
            Inputs { repos: discover(org.path()).unwrap(), as_of: parse_date(AS_OF).unwrap(), ..Inputs::default() };
        let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
        (check(&result, "gpu.no-visible-devices-all").status, result.warnings)
    };
    let (status, warnings) = rule_status(&[]);
    assert_eq!(status, Status::Pass, "vendored copies and patches are not the platform's workloads");
    assert!(
        warnings.iter().any(|w| w.contains("chart/templates/deploy.yaml") && w.contains("template")),
        "{warnings:?}"
    );
    // The same pod as the platform's own manifest fails the rule.
    let (status, _) = rule_status(&[("deploy/debug-pod.yaml", bad)]);
    assert_eq!(status, Status::Fail);
}

#[test]
fn gpu_capacity_does_not_apply_without_gpu_workloads_and_network_policies_and_codeql_count() {
    let org = tempfile::tempdir().unwrap();
    let codeql = "on: [push]\njobs:\n  analyze:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: github/codeql-action/init@v3\n      - uses: github/codeql-action/analyze@v3\n";
    repo(org.path(), "shop", &[(".github/workflows/codeql.yml", codeql)], &[3], false);
    let manifests = org.path().join("manifests");
    write(
        &manifests,
        "web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: nginx}]\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: proxy, namespace: kube-system}\nspec:\n  template:\n    spec:\n      containers: [{name: proxy, image: kube-proxy}]\n",
    );
    let inputs = Inputs {
        repos: discover(org.path()).unwrap(),
        manifests: read_manifest_dir(&manifests, &mut Vec::new()).unwrap(),
        as_of: parse_date(AS_OF).unwrap(),
        ..Inputs::default()
    };
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    // No GPU workload: no device plugin to install, no GPU level.
    assert_eq!(check(&result, "gpu.device-plugin").status, Status::NotApplicable);
    assert_eq!(result.areas.iter().find(|a| a.id == "gpu").unwrap().level, None);
    assert!(!result.plan.iter().any(|m| m.check.starts_with("gpu.")), "{:?}", result.plan);
    // CodeQL uploads SARIF itself.
    assert_eq!(check(&result, "governance.sast-sarif").status, Status::Pass);
    // The shop namespace has no NetworkPolicy (kube-system is the cluster's own and left out).
    let policies = check(&result, "governance.network-policies");
    assert_eq!((policies.status, policies.missing.clone()), (Status::Fail, vec!["namespace shop".to_owned()]));
}

#[test]
fn a_repository_without_deployment_tags_is_not_measurable_and_a_stale_one_is_named() {
    let org = tempfile::tempdir().unwrap();
    repo(org.path(), "web", &[("main.py", "print('hi')\n")], &[20, 10, 3], false);
    let inputs =
        Inputs { repos: discover(org.path()).unwrap(), as_of: parse_date(AS_OF).unwrap(), ..Inputs::default() };
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    // Deploying on merge leaves no tags: that is no evidence of never deploying.
    let frequency = check(&result, "delivery.deploy-frequency");
    assert_eq!(frequency.status, Status::NotMeasurable, "{}", frequency.reason);
    assert!(frequency.missing.iter().any(|m| m.contains("may deploy on merge")), "{:?}", frequency.missing);
    assert!(result.warnings.is_empty(), "{:?}", result.warnings);

    // Its last commit long before the assessment date: said in the warnings, not only as level 1 everywhere.
    let late = Inputs { as_of: parse_date("2027-06-01").unwrap(), ..inputs };
    let result = assess(&Model::builtin().unwrap(), &late).unwrap();
    assert!(
        result.warnings.iter().any(|w| w.contains("no repository has a commit in the 90 days before 2027-06-01")),
        "{:?}",
        result.warnings
    );
}

#[test]
fn level_two_in_adoption_and_interfaces_needs_no_backstage() {
    let org = tempfile::tempdir().unwrap();
    for name in ["cart", "pay"] {
        let files = [
            ("README.md", "# service\n"),
            ("CODEOWNERS", "# owners\n* @acme/payments\n"),
            ("opslevel.yml", "version: 1\nservice:\n  name: svc\n  owner: payments\n"),
        ];
        repo(org.path(), name, &files, &[3], false);
    }
    let inputs =
        Inputs { repos: discover(org.path()).unwrap(), as_of: parse_date(AS_OF).unwrap(), ..Inputs::default() };
    let result = assess(&Model::builtin().unwrap(), &inputs).unwrap();
    assert_eq!(check(&result, "adoption.catalog").status, Status::Pass);
    assert_eq!(check(&result, "interfaces.owner").status, Status::Pass);
    let level = |id: &str| result.areas.iter().find(|a| a.id == id).unwrap().level;
    assert_eq!((level("adoption"), level("interfaces")), (Some(2), Some(2)));
}

const CHART_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-llm
  namespace: ml
  labels:
    {{- include \"llm.labels\" . | nindent 4 }}
spec:
  template:
    spec:
      containers:
        - name: server
          image: vllm
          env:
            - name: NVIDIA_VISIBLE_DEVICES
              value: {{ .Values.visibleDevices | quote }}
          resources:
            limits:
              nvidia.com/gpu: {{ .Values.gpus }}
";

#[test]
fn a_helm_chart_is_rendered_with_helm_and_read_approximately_without() {
    let org = tempfile::tempdir().unwrap();
    let files = [
        ("charts/llm/Chart.yaml", "apiVersion: v2\nname: llm\nversion: 0.1.0\n"),
        ("charts/llm/values.yaml", "gpus: 1\nvisibleDevices: all\n"),
        ("charts/llm/templates/_helpers.tpl", "{{- define \"llm.labels\" -}}\napp: llm\n{{- end }}\n"),
        ("charts/llm/templates/deploy.yaml", CHART_DEPLOYMENT),
    ];
    repo(org.path(), "serving", &files, &[3], false);
    let helm = std::env::var_os("GPUPLANE_HELM")
        .map(PathBuf::from)
        .expect("GPUPLANE_HELM: scripts/test builds Helm with scripts/helm and sets it");
    let assess_with = |helm: Option<PathBuf>| {
        let inputs = Inputs {
            repos: discover(org.path()).unwrap(),
            as_of: parse_date(AS_OF).unwrap(),
            helm,
            ..Inputs::default()
        };
        assess(&Model::builtin().unwrap(), &inputs).unwrap()
    };
    // Rendered with the chart's values: the pod gets every GPU through its environment.
    let rendered = assess_with(Some(helm));
    let rule = check(&rendered, "gpu.no-visible-devices-all");
    assert_eq!(rule.status, Status::Fail, "{:?}", rendered.warnings);
    assert!(rule.missing[0].contains("serving:charts/llm/templates/deploy.yaml"), "{:?}", rule.missing);
    assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
    // Without Helm the values are unknown: the workload is still seen (GPU capacity applies), the warning
    // says the chart was approximated.
    let approximated = assess_with(None);
    assert_ne!(check(&approximated, "gpu.tolerations").status, Status::NotApplicable);
    assert!(
        approximated.warnings.iter().any(|w| w.contains("serving:charts/llm") && w.contains("without Helm")),
        "{:?}",
        approximated.warnings
    );
}
