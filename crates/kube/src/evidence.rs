//! A live cluster as maturity evidence: lists, across namespaces, every kind the assessment looks at —
//! workloads, namespaces, quotas, disruption budgets, autoscalers, admission policies, GitOps,
//! monitoring, queueing and SLO resources. A kind the cluster does not serve (its CRD is not
//! installed) is reported as skipped; any other failure names the kind.

use gpuplane_assess::objects::KubeObject;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use thiserror::Error;

/// (group, version, kind, plural) of every resource read.
pub const RESOURCES: [(&str, &str, &str, &str); 32] = [
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "ResourceQuota", "resourcequotas"),
    ("", "v1", "LimitRange", "limitranges"),
    ("", "v1", "ConfigMap", "configmaps"),
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("batch", "v1", "Job", "jobs"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    ("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings"),
    ("kyverno.io", "v1", "ClusterPolicy", "clusterpolicies"),
    ("kyverno.io", "v1", "Policy", "policies"),
    ("argoproj.io", "v1alpha1", "Application", "applications"),
    ("argoproj.io", "v1alpha1", "ApplicationSet", "applicationsets"),
    ("argoproj.io", "v1alpha1", "Rollout", "rollouts"),
    ("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations"),
    ("helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases"),
    ("flagger.app", "v1beta1", "Canary", "canaries"),
    ("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors"),
    ("sloth.slok.dev", "v1", "PrometheusServiceLevel", "prometheusservicelevels"),
    ("pyrra.dev", "v1alpha1", "ServiceLevelObjective", "servicelevelobjectives"),
    ("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects"),
    ("kueue.x-k8s.io", "v1beta1", "ClusterQueue", "clusterqueues"),
    ("kueue.x-k8s.io", "v1beta1", "LocalQueue", "localqueues"),
    ("nvidia.com", "v1", "ClusterPolicy", "clusterpolicies"),
];

/// Why the cluster could not be read.
#[derive(Debug, Error)]
#[error("listing {kind} ({api_version}) from the cluster: {source}")]
pub struct EvidenceError {
    /// The kind being listed.
    pub kind: String,
    /// Its API version.
    pub api_version: String,
    /// What the client said.
    #[source]
    pub source: kube::Error,
}

/// Objects read, and the kinds the cluster does not serve.
#[derive(Debug, Default)]
pub struct ClusterEvidence {
    /// Every object, as `source` (such as `cluster prod`) with no line.
    pub objects: Vec<KubeObject>,
    /// `Kind (group/version)` of each resource that is not installed.
    pub skipped: Vec<String>,
}

/// Lists every resource of [`RESOURCES`] across namespaces.
pub async fn read_cluster(client: &kube::Client, source: &str) -> Result<ClusterEvidence, EvidenceError> {
    let mut evidence = ClusterEvidence::default();
    for (group, version, kind, plural) in RESOURCES {
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                evidence.skipped.push(format!("{kind} ({})", resource.api_version));
                continue;
            }
            Err(source) => {
                return Err(EvidenceError { kind: kind.to_owned(), api_version: resource.api_version, source });
            }
        };
        for item in list.items {
            let Ok(mut value) = serde_json::to_value(&item) else { continue };
            // List items carry no type: set it from the resource listed.
            value["apiVersion"] = Value::String(resource.api_version.clone());
            value["kind"] = Value::String(kind.to_owned());
            evidence.objects.push(KubeObject { source: source.to_owned(), line: 0, value });
        }
    }
    Ok(evidence)
}
