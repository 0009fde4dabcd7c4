//! Scheduling semantics parity with kube-scheduler itself, on the real control plane. The stock
//! kube-scheduler runs with a recording extender (`percentageOfNodesToScore: 100`): it calls the extender's
//! filter with exactly the nodes its own filters passed, and the extender answers "no node", so nothing is
//! bound and the cluster stays as generated. For each generated pod, the nodes gpuplane's scheduler would
//! choose among (`gpuplane_kube::scheduler::feasible_nodes`, the scheduler's own decision code) must be those.
//! A pod kube-scheduler refuses before its filters run (a missing claim) gets no extender call: its set is
//! empty, which its `PodScheduled=False` condition confirms.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test: a failure should stop it loudly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gpuplane_kube::Snapshot;
use gpuplane_kube::fit::volumes::Volumes;
use gpuplane_place::{Engine, EngineConfig, Policy, TieBreak};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

mod support;
use support::*;

#[path = "parity/extender.rs"]
mod extender;
#[path = "parity/generate.rs"]
mod generate;
use extender::recording_extender;
use generate::*;

/// The stock kube-scheduler with the recording extender, every node checked, its client limits raised so the
/// generated pods are tried quickly (the limits change how fast, not what it decides).
fn recorded_kube_scheduler(plane: &ControlPlane, extender_port: u16, work: &Path) -> Running {
    let config = format!(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  \
         kubeconfig: {}\n  qps: 500\n  burst: 1000\nleaderElection:\n  leaderElect: false\n\
         percentageOfNodesToScore: 100\nextenders:\n- urlPrefix: http://127.0.0.1:{extender_port}\n  \
         filterVerb: filter\n  nodeCacheCapable: true\n  ignorable: false\n  weight: 1\n  httpTimeout: 10s\n",
        plane.kubeconfig().display()
    );
    kube_scheduler(plane, &config, work, &work.join("kube-scheduler.log"))
}

async fn create<K>(api: &Api<K>, objects: impl IntoIterator<Item = Value>)
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    for o in objects {
        let object: K = serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{e}: {o}"));
        api.create(&PostParams::default(), &object).await.unwrap_or_else(|e| panic!("{e}: {o}"));
    }
}

/// Claims: four bound to local volumes pinned to nodes, one of an Immediate class no volume satisfies.
async fn volumes(client: &Client, rng: &mut ChaCha8Rng, node_names: &[String]) {
    create(
        &Api::<StorageClass>::all(client.clone()),
        [json!({"metadata": {"name": "local"},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"})],
    )
    .await;
    let mut pvs = Vec::new();
    let mut pvcs = Vec::new();
    for k in 0..4 {
        let node = pick(rng, node_names).clone();
        pvs.push(json!({"metadata": {"name": format!("pv-{k}")}, "spec": {"capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local", "local": {"path": "/data"},
            "claimRef": {"namespace": "team-a", "name": format!("bound-{k}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME, "operator": "In", "values": [node]}]}]}}}}));
        pvcs.push(json!({"metadata": {"name": format!("bound-{k}"), "namespace": "team-a"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local", "volumeName": format!("pv-{k}"),
            "resources": {"requests": {"storage": "10Gi"}}}}));
    }
    pvcs.push(json!({"metadata": {"name": "unbound", "namespace": "team-a"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "local", "resources": {"requests": {"storage": "1Ti"}}}}));
    create(&Api::<PersistentVolume>::all(client.clone()), pvs).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "team-a");
    create(&claims, pvcs).await;
    wait_for("the claims bound to their volumes", Duration::from_secs(120), || async {
        let list = claims.list(&ListParams::default()).await.unwrap();
        let bound = list.items.iter().filter(|c| {
            c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                && c.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("pv.kubernetes.io/bind-completed"))
        });
        bound.count() == 4
    })
    .await;
}

async fn nodes_ready(client: &Client, count: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("the generated nodes Ready and untainted by the node controller", Duration::from_secs(180), || async {
        let list = nodes.list(&ListParams::default()).await.unwrap();
        let ready = list.items.iter().filter(|n| {
            let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
            let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
            conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                && taints.is_none_or(|t| {
                    t.iter().all(|t| {
                        !t.key.starts_with("node.kubernetes.io/") || t.key == "node.kubernetes.io/unschedulable"
                    })
                })
        });
        ready.count() == count
    })
    .await;
}

/// What kube-scheduler decided for a pod: the nodes its filters passed (from the extender's record) once
/// its `PodScheduled=False` condition is written; an empty set when its filters passed none.
fn oracle(pod: &Pod, recorded: &HashMap<String, Vec<BTreeSet<String>>>) -> Option<(BTreeSet<String>, String)> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref())?;
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    let key = format!("{}/{}", pod.metadata.namespace.as_deref()?, pod.metadata.name.as_deref()?);
    let last = recorded.get(&key).and_then(|attempts| attempts.last()).cloned().unwrap_or_default();
    Some((last, scheduled.message.clone().unwrap_or_default()))
}

/// Generates the cluster and `probes` pods from `seed`, lets kube-scheduler judge them and compares.
fn parity(seed: u64, node_count: usize, existing: usize, probes: usize) {
    let plane = ControlPlane::start();
    let work = tempfile::tempdir().unwrap();
    let (port, recorded) = recording_extender();
    let _kube_scheduler = recorded_kube_scheduler(&plane, port, work.path());
    runtime().block_on(async {
        let client = plane.client().await;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        create(
            &namespaces,
            NAMESPACES
                .iter()
                .map(|(name, team, env)| json!({"metadata": {"name": name, "labels": {"team": team, "env": env}}})),
        )
        .await;
        let mut generated = nodes(&mut rng, node_count);
        // The node the sidecar pod targets: 8 cores, nothing else bound.
        generated[1]["metadata"]["labels"]["gpuplane.test/cores"] = json!("8");
        generated[1]["status"]["allocatable"]["cpu"] = json!("8");
        generated[1]["status"]["capacity"]["cpu"] = json!("8");
        let node_names: Vec<String> =
            generated.iter().map(|n| n["metadata"]["name"].as_str().unwrap().to_owned()).collect();
        create(&Api::<Node>::all(client.clone()), generated.clone()).await;
        nodes_ready(&client, node_count).await;
        volumes(&client, &mut rng, &node_names).await;
        // A claim on a device class no driver publishes devices for: kube-scheduler's DynamicResources filter
        // cannot allocate it on any node.
        let dra = work.path().join("dra.yaml");
        std::fs::write(&dra, DRA_OBJECTS).unwrap();
        plane.kubectl(&["apply", "-f", dra.to_str().unwrap()]);

        // Two pods fill the small node; the rest go anywhere but the sidecar pod's node.
        let mut bound: Vec<Value> = (0..2).map(|i| existing_pod(&mut rng, i, &generated[0])).collect();
        for i in 2..existing {
            let node = &generated[rng.random_range(2..generated.len())];
            bound.push(existing_pod(&mut rng, i, node));
        }
        for p in bound {
            let namespace = p["metadata"]["namespace"].as_str().unwrap().to_owned();
            create(&Api::<Pod>::namespaced(client.clone(), &namespace), [p]).await;
        }

        let mut probes_json: Vec<Value> = (0..probes).map(|i| probe_pod(&mut rng, i, &node_names)).collect();
        let refused = refused_pods(&node_names[0]);
        probes_json.extend(refused.iter().map(|(p, _)| p.clone()));
        // Every taint set each node shows while the pods are judged: a node tainted for a moment (a late
        // heartbeat) would make kube-scheduler's answers depend on when it judged.
        let taints_seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
        let seen = Arc::clone(&taints_seen);
        let node_watch = tokio::spawn(
            kube::runtime::watcher(Api::<Node>::all(client.clone()), kube::runtime::watcher::Config::default())
                .for_each(move |event| {
                    if let Ok(kube::runtime::watcher::Event::Apply(n) | kube::runtime::watcher::Event::InitApply(n)) =
                        event
                    {
                        let taints =
                            serde_json::to_string(&n.spec.as_ref().and_then(|s| s.taints.clone())).unwrap_or_default();
                        seen.lock()
                            .unwrap()
                            .entry(n.metadata.name.clone().unwrap_or_default())
                            .or_default()
                            .insert(taints);
                    }
                    futures::future::ready(())
                }),
        );
        // 16 creates in flight.
        futures::stream::iter(probes_json.iter().map(|p| {
            let namespace = p["metadata"]["namespace"].as_str().unwrap().to_owned();
            let api = Api::<Pod>::namespaced(client.clone(), &namespace);
            async move { create(&api, [p.clone()]).await }
        }))
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
        let all_pods: Api<Pod> = Api::all(client.clone());
        let started = std::time::Instant::now();
        // Listing every pod is heavy on two cores: every 3 s, not wait_for's 250 ms.
        loop {
            let list = all_pods.list(&ListParams::default()).await.unwrap();
            let recorded = recorded.lock().unwrap().clone();
            let pending = list.items.iter().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()));
            let waiting = pending.filter(|p| oracle(p, &recorded).is_none()).count();
            if waiting == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "{waiting} pods not judged by kube-scheduler in 900 s"
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        eprintln!(
            "parity: kube-scheduler judged {} pods in {:.1} s",
            probes_json.len(),
            started.elapsed().as_secs_f64()
        );
        node_watch.abort();
        let changed: Vec<(String, BTreeSet<String>)> = taints_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.len() > 1)
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        assert!(changed.is_empty(), "node taints changed while kube-scheduler judged the pods: {changed:?}");

        // gpuplane's view of the same objects, through the scheduler's own decision code.
        let list = |_: ()| ListParams::default();
        let nodes = Api::<Node>::all(client.clone()).list(&list(())).await.unwrap().items;
        let pods = all_pods.list(&list(())).await.unwrap().items;
        let (mut snapshot, warnings) = Snapshot::build(&nodes, &pods).unwrap();
        let unreadable: Vec<String> = warnings
            .iter()
            .filter(|w| matches!(w, gpuplane_kube::Warning::Unreadable(_)))
            .map(|w| format!("{w:?}"))
            .collect();
        assert!(unreadable.is_empty(), "gpuplane cannot read: {unreadable:?}");
        let namespace_objects = namespaces.list(&list(())).await.unwrap().items;
        let ns_labels = namespace_objects
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect();
        snapshot.fit_mut().set_namespaces(ns_labels);
        snapshot.fit_mut().set_volumes(Volumes::new(
            &Api::<PersistentVolumeClaim>::all(client.clone()).list(&list(())).await.unwrap().items,
            &Api::<PersistentVolume>::all(client.clone()).list(&list(())).await.unwrap().items,
            &Api::<StorageClass>::all(client.clone()).list(&list(())).await.unwrap().items,
        ));
        let mut engine =
            Engine::new(EngineConfig { policy: Policy::BestFit, target: None, seed, tie_break: TieBreak::LowestName })
                .unwrap();

        let recorded = recorded.lock().unwrap().clone();
        let mut differences = Vec::new();
        let mut feasible_sizes = BTreeMap::<usize, usize>::new();
        let mut messages = BTreeMap::new();
        let mut compared = 0;
        for p in pods.iter().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none())) {
            let (expected, kube_message) = oracle(p, &recorded).expect("judged");
            let ours = gpuplane_kube::scheduler::feasible_nodes(&snapshot, &mut engine, p);
            let (got, our_message) = match &ours {
                Ok(names) => (names.iter().cloned().collect::<BTreeSet<String>>(), String::new()),
                Err(m) => (BTreeSet::new(), m.clone()),
            };
            let key = format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or(""),
                p.metadata.name.as_deref().unwrap_or("")
            );
            compared += 1;
            *feasible_sizes.entry(expected.len()).or_default() += 1;
            if got != expected {
                let missing: Vec<&String> = expected.difference(&got).collect();
                let extra: Vec<&String> = got.difference(&expected).collect();
                let attempts: Vec<usize> = recorded.get(&key).into_iter().flatten().map(BTreeSet::len).collect();
                differences.push(format!(
                    "{key}: kube-scheduler passes {} nodes (attempts passed {attempts:?}), gpuplane {}; only \
                     kube-scheduler: {missing:?}; only gpuplane: {extra:?}; gpuplane says {our_message:?}; \
                     kube-scheduler says {kube_message:?}\n  spec: {}",
                    expected.len(),
                    got.len(),
                    serde_json::to_string(&p.spec).unwrap_or_default()
                ));
            }
            messages.insert(key, (our_message, kube_message));
        }
        let with_some = feasible_sizes.iter().filter(|(n, _)| **n > 0).map(|(_, c)| c).sum::<usize>();
        eprintln!(
            "parity: seed {seed}, {node_count} nodes, {existing} bound pods: {compared} pods compared, {} with a \
             different feasible set; kube-scheduler passed some node for {with_some} of them, none for {}",
            differences.len(),
            compared - with_some
        );
        for d in &differences {
            eprintln!("parity difference: {d}");
        }
        if !differences.is_empty() {
            // The objects both judged, for a look afterwards.
            let dump = repo().join("target/tmp/parity-objects.json");
            let _ = std::fs::create_dir_all(dump.parent().unwrap());
            let state = json!({"nodes": nodes, "pods": pods, "namespaces": namespace_objects,
                "recorded": recorded.iter().collect::<BTreeMap<_, _>>()});
            let _ = std::fs::write(&dump, state.to_string());
            eprintln!("parity: objects written to {}", dump.display());
        }
        for (p, substance) in &refused {
            let key = format!("team-a/{}", p["metadata"]["name"].as_str().unwrap());
            let (ours, theirs) = &messages[&key];
            eprintln!("parity: {key}: gpuplane {ours:?}; kube-scheduler {theirs:?}");
            assert!(ours.contains(substance), "{key}: gpuplane's message {ours:?} lacks {substance:?}");
            if *substance != "ResourceClaim" {
                assert!(theirs.contains(substance), "{key}: kube-scheduler's message {theirs:?} lacks {substance:?}");
            }
        }
        assert!(compared >= probes, "{compared} of {probes} generated pods compared");
        assert!(
            differences.is_empty(),
            "{} of {compared} feasible sets differ from kube-scheduler's",
            differences.len()
        );
    });
}

/// The differential `scripts/test` runs: 2,000 generated pods over 60 nodes, seed 42.
#[test]
fn parity_with_kube_scheduler() {
    parity(42, 60, 200, 2_000);
}

/// A larger run: 6,000 pods over 200 nodes with 800 bound, another seed (`cargo test -- --ignored parity`).
#[test]
#[ignore = "about ten minutes; run by hand"]
fn parity_with_kube_scheduler_large() {
    parity(7, 200, 800, 6_000);
}

/// Replays the objects a failed run wrote (`target/tmp/parity-objects.json`) and prints gpuplane's verdict on
/// every node for the pod named by `PARITY_POD` (`namespace/name`): `cargo test --test parity -- --ignored replay`.
#[test]
#[ignore = "a diagnostic for a failed parity run"]
fn parity_replay() {
    let dump: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("target/tmp/parity-objects.json")).unwrap()).unwrap();
    let nodes: Vec<Node> = serde_json::from_value(dump["nodes"].clone()).unwrap();
    let pods: Vec<Pod> = serde_json::from_value(dump["pods"].clone()).unwrap();
    let (mut snapshot, _) = Snapshot::build(&nodes, &pods).unwrap();
    let namespaces: Vec<Namespace> = serde_json::from_value(dump["namespaces"].clone()).unwrap();
    snapshot.fit_mut().set_namespaces(
        namespaces
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect(),
    );
    let key = std::env::var("PARITY_POD").unwrap_or_default();
    let pod = pods
        .iter()
        .find(|p| {
            format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), p.metadata.name.as_deref().unwrap_or(""))
                == key
        })
        .expect("PARITY_POD names a pod of the dump");
    let domain = gpuplane_kube::objects::pod(pod).unwrap();
    let incoming = gpuplane_kube::fit::Incoming::of(pod, domain.tolerations).unwrap();
    let verdicts = snapshot.fit().filter(&incoming).unwrap();
    for (i, v) in verdicts.iter().enumerate() {
        println!("{}: {v:?}", snapshot.fit().node_name(i));
    }
}
