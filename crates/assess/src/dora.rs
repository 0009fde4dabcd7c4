//! DORA delivery metrics of one repository from its git history: a deployment is a tag matching the
//! model's pattern; it ships the commits reachable from it and from no earlier deployment. Deployment
//! frequency and lead time for changes always; change failure rate and recovery time from revert or
//! hotfix markers in the commits of the following deployment.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::repo::{Commit, Repository};

/// The metrics over a window ending at the assessment date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dora {
    /// Deployment tags in the whole history up to the assessment date: with none, the repository may
    /// deploy on merge or from a CD system, and its deployments cannot be counted from git.
    #[serde(default)]
    pub deployment_tags: usize,
    /// Deployments in the window.
    pub deployments: usize,
    /// Deployments per week in the window.
    pub deployments_per_week: f64,
    /// Median hours from a commit to the deployment that shipped it (deployments after the first).
    pub lead_time_hours: Option<f64>,
    /// Share of judged deployments (those followed by another) that the next one reverted or hotfixed.
    pub change_failure_rate: Option<f64>,
    /// Median hours from a failed deployment to the next one.
    pub recovery_hours: Option<f64>,
}

/// The median (mean of the middle two for an even count), or `None` for no values.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

/// Computes the metrics for deployments in `[as_of - window_days, as_of]`.
pub fn measure(
    repo: &Repository,
    deploy_tags: &Regex,
    failure_markers: &[Regex],
    as_of: i64,
    window_days: u32,
) -> Dora {
    let by_id: HashMap<&str, &Commit> = repo.commits.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut tags: Vec<_> = repo
        .tags
        .iter()
        .filter(|t| deploy_tags.is_match(&t.name) && by_id.contains_key(t.commit.as_str()) && t.time <= as_of)
        .collect();
    tags.sort_by_key(|t| (t.time, t.name.clone()));

    // The commits each deployment ships, in deployment order.
    let mut shipped: HashSet<&str> = HashSet::new();
    let mut batches: Vec<Vec<&Commit>> = Vec::with_capacity(tags.len());
    for tag in &tags {
        let mut batch = Vec::new();
        let mut stack = vec![tag.commit.as_str()];
        while let Some(id) = stack.pop() {
            if !shipped.insert(id) {
                continue;
            }
            if let Some(commit) = by_id.get(id) {
                batch.push(*commit);
                stack.extend(commit.parents.iter().map(String::as_str));
            }
        }
        batches.push(batch);
    }

    let window_start = as_of - i64::from(window_days) * 86_400;
    let in_window: Vec<usize> = (0..tags.len()).filter(|&i| tags[i].time >= window_start).collect();
    let hours = |seconds: i64| seconds.max(0) as f64 / 3600.0;
    let tags = &tags;
    let lead_times = in_window
        .iter()
        .filter(|&&i| i > 0)
        .flat_map(|&i| batches[i].iter().map(move |c| hours(tags[i].time - c.time)))
        .collect();
    let failed = |i: usize| {
        batches
            .get(i + 1)
            .is_some_and(|next| next.iter().any(|c| failure_markers.iter().any(|m| m.is_match(&c.message))))
    };
    let judged: Vec<usize> = in_window.iter().copied().filter(|&i| i + 1 < tags.len()).collect();
    let failures: Vec<usize> = judged.iter().copied().filter(|&i| failed(i)).collect();
    Dora {
        deployment_tags: tags.len(),
        deployments: in_window.len(),
        deployments_per_week: in_window.len() as f64 / (f64::from(window_days.max(1)) / 7.0),
        lead_time_hours: median(lead_times),
        change_failure_rate: (!judged.is_empty()).then(|| failures.len() as f64 / judged.len() as f64),
        recovery_hours: median(failures.iter().map(|&i| hours(tags[i + 1].time - tags[i].time)).collect()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;

    use super::*;
    use crate::repo::Tag;

    fn commit(id: &str, parent: Option<&str>, hour: i64, message: &str) -> Commit {
        Commit {
            id: id.into(),
            parents: parent.map(|p| vec![p.to_owned()]).unwrap_or_default(),
            time: hour * 3600,
            author: "dev@example.com".into(),
            message: message.into(),
        }
    }

    #[test]
    fn deployments_ship_new_commits_and_a_hotfix_marks_the_previous_one_failed() {
        let repo = Repository {
            name: "svc".into(),
            path: PathBuf::from("svc"),
            files: vec![],
            commits: vec![
                commit("a", None, 0, "init"),
                commit("b", Some("a"), 10, "feature"),
                commit("c", Some("b"), 20, "another"),
                commit("d", Some("c"), 30, "hotfix: broken config"),
            ],
            tags: vec![
                Tag { name: "v1.0.0".into(), commit: "a".into(), time: 2 * 3600 },
                Tag { name: "v1.1.0".into(), commit: "c".into(), time: 24 * 3600 },
                Tag { name: "v1.1.1".into(), commit: "d".into(), time: 32 * 3600 },
                Tag { name: "nightly".into(), commit: "d".into(), time: 33 * 3600 },
            ],
        };
        let tags = Regex::new(r"^v\d").unwrap();
        let markers = [Regex::new(r"(?i)\bhot-?fix\b").unwrap()];
        let dora = measure(&repo, &tags, &markers, 7 * 86_400, 7);
        assert_eq!(dora.deployments, 3);
        assert_eq!(dora.deployments_per_week, 3.0);
        // v1.1.0 ships b (14 h) and c (4 h); v1.1.1 ships d (2 h): median 4 h.
        assert_eq!(dora.lead_time_hours, Some(4.0));
        // Judged: v1.0.0 (followed by features) and v1.1.0 (followed by a hotfix).
        assert_eq!(dora.change_failure_rate, Some(0.5));
        assert_eq!(dora.recovery_hours, Some(8.0));

        let none = measure(&repo, &tags, &markers, 7 * 86_400 + 30 * 86_400, 7);
        assert_eq!(none.deployments, 0);
        assert_eq!(none.lead_time_hours, None);
        assert_eq!(none.change_failure_rate, None);
    }
}
