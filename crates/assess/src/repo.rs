//! A git repository as evidence: its tracked files, its commits (all refs) and its tags, read once
//! with the git command line. File contents are read from the working tree on demand.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::AssessError;

/// One commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Full hash.
    pub id: String,
    /// Parent hashes.
    pub parents: Vec<String>,
    /// Committer time, Unix seconds.
    pub time: i64,
    /// Author e-mail.
    pub author: String,
    /// Whole message.
    pub message: String,
}

/// One tag, peeled to its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Short name, such as `v1.2.0`.
    pub name: String,
    /// The commit it points at.
    pub commit: String,
    /// Tagger time for annotated tags, committer time of the commit for lightweight ones.
    pub time: i64,
}

/// A repository read for an assessment.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Name shown in evidence: the folder name.
    pub name: String,
    /// Working tree root.
    pub path: PathBuf,
    /// Tracked files, relative to the root, with `/` separators.
    pub files: Vec<String>,
    /// Commits reachable from any ref.
    pub commits: Vec<Commit>,
    /// Tags.
    pub tags: Vec<Tag>,
}

/// Runs git in `repo` and returns what it printed, or a message saying why it failed.
pub fn run_git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let output =
        Command::new("git").arg("-C").arg(repo).args(args).output().map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("git {} failed: {}", args.join(" "), stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Folders that hold copies of other projects (Go modules, Node packages, third-party trees).
const VENDORED: [&str; 5] = ["vendor", "third_party", "third-party", "node_modules", "bower_components"];

/// Whether a tracked path lies in a vendored folder.
pub fn is_vendored(path: &str) -> bool {
    path.split('/').rev().skip(1).any(|folder| VENDORED.contains(&folder))
}

fn git(repo: &Path, args: &[&str]) -> Result<String, AssessError> {
    run_git(repo, args).map_err(|message| AssessError::Git { repo: repo.display().to_string(), message })
}

impl Repository {
    /// Reads the repository whose working tree is at `path`.
    pub fn open(path: &Path) -> Result<Repository, AssessError> {
        if !path.is_dir() {
            return Err(AssessError::Git {
                repo: path.display().to_string(),
                message: "not a folder (expected a git working tree)".to_owned(),
            });
        }
        let top = git(path, &["rev-parse", "--show-toplevel"])?;
        let root = PathBuf::from(top.trim());
        let name = root.file_name().map_or_else(|| root.display().to_string(), |n| n.to_string_lossy().into_owned());
        // Vendored code is someone else's project: its CI files, manifests and Dockerfiles are no evidence.
        let files = git(&root, &["ls-files", "-z"])?
            .split('\0')
            .filter(|f| !f.is_empty() && !is_vendored(f))
            .map(str::to_owned)
            .collect();
        let commits = if git(&root, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_ok() {
            parse_log(&git(&root, &["log", "--all", "-z", "--format=%H%x1f%P%x1f%ct%x1f%ae%x1f%B"])?)
        } else {
            Vec::new()
        };
        let refs = git(
            &root,
            &[
                "for-each-ref",
                "refs/tags",
                "--format=%(refname:short)%1f%(objectname)%1f%(*objectname)%1f%(creatordate:unix)",
            ],
        )?;
        let tags = refs
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\x1f');
                let name = fields.next()?.to_owned();
                let object = fields.next()?;
                let peeled = fields.next().filter(|p| !p.is_empty()).unwrap_or(object);
                let time = fields.next()?.parse().ok()?;
                Some(Tag { name, commit: peeled.to_owned(), time })
            })
            .collect();
        Ok(Repository { name, path: root, files, commits, tags })
    }

    /// The tracked files whose path matches one of the globs.
    pub fn matching<'r>(&'r self, globs: &[regex::Regex]) -> impl Iterator<Item = &'r str> {
        self.files.iter().map(String::as_str).filter(move |f| globs.iter().any(|g| g.is_match(f)))
    }

    /// A tracked file's text, or `None` when it is missing from the working tree or not UTF-8.
    pub fn read(&self, file: &str) -> Option<String> {
        std::fs::read(self.path.join(file)).ok().and_then(|bytes| String::from_utf8(bytes).ok())
    }

    /// Time of the newest commit.
    pub fn last_commit_time(&self) -> Option<i64> {
        self.commits.iter().map(|c| c.time).max()
    }
}

fn parse_log(text: &str) -> Vec<Commit> {
    text.split('\0')
        .filter_map(|record| {
            let record = record.trim_start_matches('\n');
            let mut fields = record.splitn(5, '\x1f');
            let id = fields.next().filter(|id| !id.is_empty())?.to_owned();
            let parents = fields.next()?.split_whitespace().map(str::to_owned).collect();
            let time = fields.next()?.parse().ok()?;
            let author = fields.next()?.to_owned();
            let message = fields.next().unwrap_or_default().trim_end().to_owned();
            Some(Commit { id, parents, time, author, message })
        })
        .collect()
}

/// The repositories under `path`: the repository itself when it is a working tree, otherwise every
/// working tree directly inside it (an organisation checkout), by name.
pub fn discover(path: &Path) -> Result<Vec<Repository>, AssessError> {
    if path.join(".git").exists() {
        return Ok(vec![Repository::open(path)?]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| AssessError::io(path, &e))?;
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join(".git").exists()).collect();
    dirs.sort();
    if dirs.is_empty() {
        // Inside a working tree but below its root: let git find the root.
        return Ok(vec![Repository::open(path)?]);
    }
    dirs.iter().map(|d| Repository::open(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::parse_log;

    #[test]
    fn log_records_split_on_nul_and_keep_multi_line_messages() {
        let text = "a1\x1fp1 p2\x1f100\x1fme@x\x1fRevert \"x\"\n\nbody\n\0\nb2\x1f\x1f50\x1fyou@x\x1finit\n\0";
        let commits = parse_log(text);
        assert_eq!(commits.len(), 2);
        assert_eq!(commits[0].parents, ["p1", "p2"]);
        assert_eq!(commits[0].message, "Revert \"x\"\n\nbody");
        assert_eq!(commits[1].id, "b2");
        assert!(commits[1].parents.is_empty());
    }
}
