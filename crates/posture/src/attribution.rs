//! Attribution of commits to AI assistants from the exact markers the tools leave: author and committer
//! addresses, co-author and tool trailers, bot logins in GitHub noreply addresses, message footers, author
//! name suffixes and subject prefixes. Identities match by whole address, never by display name or by an
//! address's domain. The markers are data.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::PostureError;
use crate::history::Commit;

/// The built-in markers (`data/posture/ai-markers.yaml`).
pub const BUILTIN_MARKERS: &str = include_str!("../../../data/posture/ai-markers.yaml");

/// How sure an attribution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// A name suffix or message prefix: text a person could also type.
    Low,
    /// A footer the tool writes into the message.
    Medium,
    /// A known address, bot login or tool trailer.
    High,
}

/// The markers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkersFile {
    /// `builtin` to add to the built-in markers.
    #[serde(default)]
    pub extends: Option<String>,
    /// Format version; 1.
    pub version: u32,
    /// Automation that is never AI-assisted.
    #[serde(default)]
    pub exclude: Exclude,
    /// The assistants.
    #[serde(default)]
    pub tools: Vec<ToolMarkers>,
}

/// Automation identities to leave out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    /// GitHub logins.
    #[serde(default)]
    pub logins: Vec<String>,
    /// Addresses.
    #[serde(default)]
    pub emails: Vec<String>,
}

/// What one assistant leaves behind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolMarkers {
    /// Tool name reported.
    pub name: String,
    /// Exact addresses.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Logins inside `<id>+<login>@users.noreply.github.com`.
    #[serde(default)]
    pub logins: Vec<String>,
    /// Trailer keys whose presence marks the tool (such as `Assisted-by`).
    #[serde(default)]
    pub trailers: Vec<String>,
    /// Regular expressions over the whole message.
    #[serde(default)]
    pub footers: Vec<String>,
    /// Author name endings, such as ` (aider)` (a committer's name is not read: tools commit people's own
    /// changes under theirs).
    #[serde(default)]
    pub author_name_suffixes: Vec<String>,
    /// Subject beginnings.
    #[serde(default)]
    pub subject_prefixes: Vec<String>,
}

/// Compiled markers.
#[derive(Debug, Clone)]
pub struct Markers {
    exclude: Exclude,
    tools: Vec<(ToolMarkers, Vec<Regex>)>,
}

/// The outcome for one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// Whether an assistant helped write the commit.
    pub ai: bool,
    /// The assistant, when one matched.
    pub tool: Option<String>,
    /// The strongest marker's confidence.
    pub confidence: Option<Confidence>,
    /// The markers matched, as `where: what`.
    pub evidence: Vec<String>,
}

const CO_AUTHOR: &str = "co-authored-by";

/// The login of a GitHub noreply address (`123+login@users.noreply.github.com`), if it is one.
fn noreply_login(email: &str) -> Option<&str> {
    let (local, domain) = email.rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case("users.noreply.github.com") {
        return None;
    }
    Some(local.split_once('+').map_or(local, |(_, login)| login))
}

/// The address inside `Name <address>`, or the text itself.
fn address(identity: &str) -> &str {
    match (identity.rfind('<'), identity.rfind('>')) {
        (Some(open), Some(close)) if open < close => identity[open + 1..close].trim(),
        _ => identity.trim(),
    }
}

/// `Key: value` lines of the message's last paragraph (its trailers).
pub fn trailers(message: &str) -> Vec<(String, String)> {
    let last = message.trim_end().rsplit("\n\n").next().unwrap_or_default();
    last.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let key = key.trim();
            let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            ok.then(|| (key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

impl Markers {
    /// The built-in markers.
    pub fn builtin() -> Result<Markers, PostureError> {
        Markers::load("builtin markers (data/posture/ai-markers.yaml)", BUILTIN_MARKERS)
    }

    /// Reads a markers file; one with `extends: builtin` adds to the built-in markers.
    pub fn load(source_name: &str, text: &str) -> Result<Markers, PostureError> {
        let file: MarkersFile = serde_saphyr::from_str(text).map_err(|e| PostureError::yaml(source_name, &e))?;
        if file.version != 1 {
            return Err(PostureError::invalid(source_name, "version", "1 (the only markers format)"));
        }
        let mut markers = match file.extends.as_deref() {
            None => Markers { exclude: Exclude::default(), tools: Vec::new() },
            Some("builtin") => Markers::builtin()?,
            Some(_) => return Err(PostureError::invalid(source_name, "extends", "`builtin`")),
        };
        markers.exclude.logins.extend(file.exclude.logins);
        markers.exclude.emails.extend(file.exclude.emails);
        for (n, tool) in file.tools.into_iter().enumerate() {
            let footers = tool.footers.iter().map(|f| Regex::new(f)).collect::<Result<Vec<_>, _>>().map_err(|e| {
                let field = format!("tools[{n}] ({}): footers", tool.name);
                PostureError::invalid(source_name, &field, &format!("regular expressions ({e})"))
            })?;
            markers.tools.push((tool, footers));
        }
        Ok(markers)
    }

    fn excluded(&self, email: &str) -> bool {
        let login = noreply_login(email);
        self.exclude.emails.iter().any(|e| e.eq_ignore_ascii_case(email))
            || login.is_some_and(|l| self.exclude.logins.iter().any(|x| x.eq_ignore_ascii_case(l)))
    }

    fn identity_match(tool: &ToolMarkers, email: &str) -> bool {
        tool.emails.iter().any(|e| e.eq_ignore_ascii_case(email))
            || noreply_login(email).is_some_and(|l| tool.logins.iter().any(|x| x.eq_ignore_ascii_case(l)))
    }

    /// Attributes one commit.
    pub fn attribute(&self, commit: &Commit) -> Attribution {
        let mut found: Vec<(Confidence, String, String)> = Vec::new();
        let automation = self.excluded(&commit.author_email);
        let trailers = trailers(&commit.message);
        let subject = commit.message.lines().next().unwrap_or_default();
        for (tool, footers) in &self.tools {
            let name = &tool.name;
            for (role, email) in [("author", &commit.author_email), ("committer", &commit.committer_email)] {
                if Self::identity_match(tool, email) {
                    found.push((Confidence::High, name.clone(), format!("{role} {email}")));
                }
            }
            for (key, value) in &trailers {
                if key.eq_ignore_ascii_case(CO_AUTHOR) && Self::identity_match(tool, address(value)) {
                    found.push((Confidence::High, name.clone(), format!("trailer {key}: {value}")));
                }
                if !value.is_empty() && tool.trailers.iter().any(|t| t.eq_ignore_ascii_case(key)) {
                    found.push((Confidence::High, name.clone(), format!("trailer {key}: {value}")));
                }
            }
            for footer in footers {
                if let Some(m) = footer.find(&commit.message) {
                    found.push((Confidence::Medium, name.clone(), format!("message: {}", m.as_str())));
                }
            }
            let author = &commit.author_name;
            if tool.author_name_suffixes.iter().any(|s| author.ends_with(s.as_str())) {
                found.push((Confidence::Low, name.clone(), format!("author name {author}")));
            }
            if tool.subject_prefixes.iter().any(|p| subject.starts_with(p.as_str())) {
                found.push((Confidence::Low, name.clone(), format!("subject: {subject}")));
            }
        }
        if automation || found.is_empty() {
            return Attribution { ai: false, tool: None, confidence: None, evidence: Vec::new() };
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        Attribution {
            ai: true,
            tool: Some(found[0].1.clone()),
            confidence: Some(found[0].0),
            evidence: found.into_iter().map(|(_, tool, what)| format!("{tool}: {what}")).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn commit(author: (&str, &str), message: &str) -> Commit {
        Commit {
            id: "c".into(),
            author_name: author.0.into(),
            author_email: author.1.into(),
            committer_name: author.0.into(),
            committer_email: author.1.into(),
            time: 0,
            message: message.into(),
            added: 0,
            deleted: 0,
            added_by_file: Vec::new(),
        }
    }

    #[test]
    fn trailers_footers_bots_and_suffixes_are_recognised_by_address() {
        let markers = Markers::builtin().unwrap();
        let human = ("Ada", "ada@example.com");
        let claude = markers.attribute(&commit(
            human,
            "Add cache\n\nBody.\n\n🤖 Generated with [Claude Code](https://claude.com/claude-code)\n\nCo-Authored-By: Claude Opus 4.5 <noreply@anthropic.com>\n",
        ));
        assert!(claude.ai);
        assert_eq!(claude.tool.as_deref(), Some("Claude Code"));
        assert_eq!(claude.confidence, Some(Confidence::High));
        assert_eq!(claude.evidence.len(), 2, "{:?}", claude.evidence);

        let copilot = markers.attribute(&commit(("Copilot", "198982749+Copilot@users.noreply.github.com"), "Fix"));
        assert_eq!(copilot.tool.as_deref(), Some("GitHub Copilot"));

        let aider = markers.attribute(&commit(("Ada (aider)", "ada@example.com"), "aider: refactor"));
        assert_eq!((aider.tool.as_deref(), aider.confidence), (Some("aider"), Some(Confidence::Low)));

        let kernel = markers.attribute(&commit(
            human,
            "mm: fix\n\nAssisted-by: claude-code:opus-4 coccinelle\nSigned-off-by: Ada <ada@example.com>",
        ));
        assert_eq!(kernel.tool.as_deref(), Some("Assisted-by"));
    }

    #[test]
    fn names_alone_bare_noreply_and_dependency_bots_are_not_ai() {
        let markers = Markers::builtin().unwrap();
        // A person called Claude, a bare noreply address, and a co-author line in the body, not a trailer.
        assert!(!markers.attribute(&commit(("Claude Shannon", "claude@example.com"), "Entropy")).ai);
        assert!(!markers.attribute(&commit(("Ada", "12345+ada@users.noreply.github.com"), "Fix")).ai);
        let body =
            "Mention\n\nCo-authored-by: Claude <noreply@anthropic.com> was discussed\n\nSigned-off-by: Ada <a@b>";
        assert!(!markers.attribute(&commit(("Ada", "ada@example.com"), body)).ai);
        let renovate = commit(("renovate[bot]", "29139614+renovate[bot]@users.noreply.github.com"), "Update x");
        assert!(!markers.attribute(&renovate).ai);
    }

    #[test]
    fn a_tools_domain_and_a_committer_suffix_alone_are_not_markers() {
        let markers = Markers::builtin().unwrap();
        // Someone at the company that makes the tool.
        assert!(!markers.attribute(&commit(("Paul", "paul@aider.chat"), "copy")).ai);
        // The user's own change committed through aider (/commit) and an /undo revert: committer suffix only.
        let mut own = commit(("Paul", "paul@example.com"), "copy");
        own.committer_name = "Paul (aider)".into();
        assert!(!markers.attribute(&own).ai);
        own.author_name = "Paul (aider)".into();
        assert_eq!(markers.attribute(&own).tool.as_deref(), Some("aider"), "aider's own edit");
        let trailer =
            commit(("Paul", "paul@example.com"), "feat: x\n\nCo-authored-by: aider (gpt-4o) <aider@aider.chat>");
        assert_eq!(markers.attribute(&trailer).confidence, Some(Confidence::High));
    }

    #[test]
    fn a_user_file_extends_or_replaces_and_errors_name_the_place() {
        let text = "extends: builtin\nversion: 1\ntools:\n  - {name: Acme Bot, emails: [bot@acme.example]}\n";
        let markers = Markers::load("acme.yaml", text).unwrap();
        assert!(markers.attribute(&commit(("x", "bot@acme.example"), "y")).ai);
        assert!(markers.attribute(&commit(("x", "cursoragent@cursor.com"), "y")).ai);
        let replaced = Markers::load("acme.yaml", "version: 1\ntools: [{name: A, emails: [a@a]}]\n").unwrap();
        assert!(!replaced.attribute(&commit(("x", "cursoragent@cursor.com"), "y")).ai);

        let err = Markers::load("m.yaml", "version: 2\n").unwrap_err().to_string();
        assert_eq!(err, "m.yaml: version: expected 1 (the only markers format)");
        let err = Markers::load("m.yaml", "version: 1\ntools: [{name: A, footers: ['(']}]\n").unwrap_err().to_string();
        assert!(err.starts_with("m.yaml: tools[0] (A): footers: expected regular expressions"), "{err}");
        let err = Markers::load("m.yaml", "version: 1\ntools: [{name: A, colour: red}]\n").unwrap_err().to_string();
        assert!(err.starts_with("m.yaml: line "), "{err}");
    }
}
