//! Helm charts in repositories as evidence. A chart is rendered with a real Helm when one is given
//! (`helm template` with the chart's default values, no network); without one, or when Helm cannot render
//! it, its templates are read tolerantly — lines that are only template actions dropped, other expressions
//! replaced by a placeholder — and a warning says which chart was approximated.

use std::path::Path;
use std::process::Command;

use crate::objects::{KubeObject, read_objects};
use crate::repo::Repository;

/// What stands in for a template expression when a chart is read without Helm.
pub const PLACEHOLDER: &str = "templated";

/// The folders (relative to the repository root) that hold a `Chart.yaml`.
pub fn chart_dirs(repo: &Repository) -> Vec<String> {
    let mut dirs: Vec<String> = repo
        .files
        .iter()
        .filter_map(|f| match f.rsplit_once('/') {
            Some((dir, "Chart.yaml")) => Some(dir.to_owned()),
            None if f == "Chart.yaml" => Some(String::new()),
            _ => None,
        })
        .collect();
    dirs.sort();
    dirs
}

/// Whether a file belongs to one of the charts (its templates or its subcharts): read with its chart.
pub fn in_chart(file: &str, charts: &[String]) -> bool {
    charts.iter().any(|dir| {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        file.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with("templates/") || rest.starts_with("charts/"))
    })
}

/// The objects of the chart in `dir`: rendered by `helm` when given and able, else read tolerantly. What
/// was approximated or could not be read becomes a warning.
pub fn chart_objects(repo: &Repository, dir: &str, helm: Option<&Path>, warnings: &mut Vec<String>) -> Vec<KubeObject> {
    let shown = if dir.is_empty() { ".".to_owned() } else { dir.to_owned() };
    if let Some(helm) = helm {
        match render(repo, dir, helm) {
            Ok(objects) => return objects,
            Err(why) => {
                warnings.push(format!("{}:{shown}: helm template failed ({why}); read without Helm", repo.name))
            }
        }
    } else {
        warnings.push(format!(
            "{}:{shown}: a Helm chart read without Helm: template actions dropped, values read as `{PLACEHOLDER}` (give --helm)",
            repo.name
        ));
    }
    tolerant(repo, dir, warnings)
}

fn render(repo: &Repository, dir: &str, helm: &Path) -> Result<Vec<KubeObject>, String> {
    let out = Command::new(helm)
        .args(["template", "gpuplane-assess"])
        .arg(repo.path.join(dir))
        .output()
        .map_err(|e| format!("{}: {e}", helm.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut objects = Vec::new();
    // Each rendered document starts `# Source: <chart name>/templates/<file>`: name the object by the
    // template file in the repository.
    for document in text.split("\n---") {
        let source = document
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .and_then(|s| s.split_once('/').map(|(_, rest)| rest.trim().to_owned()));
        let file = match (source, dir.is_empty()) {
            (Some(rest), true) => rest,
            (Some(rest), false) => format!("{dir}/{rest}"),
            (None, _) => format!("{dir}/(rendered)"),
        };
        let name = format!("{}:{file}", repo.name);
        objects.extend(read_objects(&name, document).map_err(|e| e.to_string())?);
    }
    Ok(objects)
}

fn tolerant(repo: &Repository, dir: &str, warnings: &mut Vec<String>) -> Vec<KubeObject> {
    let prefix = if dir.is_empty() { "templates/".to_owned() } else { format!("{dir}/templates/") };
    let mut objects = Vec::new();
    for file in repo.files.iter().filter(|f| f.starts_with(&prefix) && (f.ends_with(".yaml") || f.ends_with(".yml"))) {
        let Some(text) = repo.read(file) else { continue };
        match read_objects(&format!("{}:{file}", repo.name), &untemplate(&text)) {
            Ok(found) => objects.extend(found),
            Err(e) => warnings.push(format!("skipped: {e} (a template read without Helm)")),
        }
    }
    objects
}

/// A template as plain YAML, approximately: a line that is only template actions goes, every other
/// expression becomes [`PLACEHOLDER`].
pub fn untemplate(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") && only_actions(trimmed) {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            match rest[start..].find("}}") {
                Some(end) => {
                    out.push_str(PLACEHOLDER);
                    rest = &rest[start + end + 2..];
                }
                None => {
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

/// Whether a line holds nothing but `{{ … }}` actions.
fn only_actions(line: &str) -> bool {
    let mut rest = line.trim();
    while let Some(after) = rest.strip_prefix("{{") {
        let Some(end) = after.find("}}") else { return false };
        rest = after[end + 2..].trim_start();
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_reads_as_yaml_with_placeholders() {
        let template = "{{- if .Values.enabled }}\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ include \"x.fullname\" . }}\n  labels:\n    {{- include \"x.labels\" . | nindent 4 }}\nspec:\n  template:\n    spec:\n      containers:\n        - name: server\n          image: \"{{ .Values.image }}:{{ .Chart.AppVersion }}\"\n          resources: {limits: {nvidia.com/gpu: 1}}\n{{- end }}\n";
        let yaml = untemplate(template);
        assert!(!yaml.contains("{{"), "{yaml}");
        assert!(yaml.contains("name: templated") && yaml.contains("image: \"templated:templated\""), "{yaml}");
        let objects = read_objects("chart", &yaml).expect("plain YAML");
        assert_eq!(objects.len(), 1);
        assert!(objects[0].pod_spec().is_some());
    }
}
