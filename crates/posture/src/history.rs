//! Git history for posture metrics: commits of a range with their identities, message and changed
//! line counts, the lines a diff changed, and `git blame` of a file's lines to commits.

use std::collections::HashMap;
use std::path::Path;

use crate::PostureError;

/// One commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Full hash.
    pub id: String,
    /// Author name.
    pub author_name: String,
    /// Author address.
    pub author_email: String,
    /// Committer name.
    pub committer_name: String,
    /// Committer address.
    pub committer_email: String,
    /// Committer time, Unix seconds.
    pub time: i64,
    /// Whole message.
    pub message: String,
    /// Lines added (text files).
    pub added: u64,
    /// Lines deleted (text files).
    pub deleted: u64,
    /// Lines added per file (text files), for rates over the files a scanner reads.
    pub added_by_file: Vec<(String, u64)>,
}

pub(crate) fn git(repo: &Path, args: &[&str]) -> Result<String, PostureError> {
    gpuplane_assess::repo::run_git(repo, args)
        .map_err(|message| PostureError::Git { repo: repo.display().to_string(), message })
}

/// Checks that `repo` is a git working tree and returns its root.
pub fn root(repo: &Path) -> Result<std::path::PathBuf, PostureError> {
    if !repo.is_dir() {
        return Err(PostureError::Git {
            repo: repo.display().to_string(),
            message: "not a folder (expected a git working tree)".into(),
        });
    }
    Ok(std::path::PathBuf::from(git(repo, &["rev-parse", "--show-toplevel"])?.trim()))
}

/// Lines added and deleted by a commit, and added per file.
type LineCounts = (u64, u64, Vec<(String, u64)>);

/// The commits of `range` (such as `main..HEAD`, or `HEAD` for all history), newest first.
pub fn commits(repo: &Path, range: &str) -> Result<Vec<Commit>, PostureError> {
    let log = git(repo, &["log", "-z", "--format=%H%x1f%an%x1f%ae%x1f%cn%x1f%ce%x1f%ct%x1f%B", range, "--"])?;
    let mut commits: Vec<Commit> = log
        .split('\0')
        .filter_map(|record| {
            let mut f = record.trim_start_matches('\n').splitn(7, '\x1f');
            Some(Commit {
                id: f.next().filter(|id| !id.is_empty())?.to_owned(),
                author_name: f.next()?.to_owned(),
                author_email: f.next()?.to_owned(),
                committer_name: f.next()?.to_owned(),
                committer_email: f.next()?.to_owned(),
                time: f.next()?.parse().ok()?,
                message: f.next().unwrap_or_default().trim_end().to_owned(),
                added: 0,
                deleted: 0,
                added_by_file: Vec::new(),
            })
        })
        .collect();
    let numstat = git(repo, &["log", "--format=%x00%H", "--numstat", range, "--"])?;
    let mut counts: HashMap<&str, LineCounts> = HashMap::new();
    for block in numstat.split('\0').filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let Some(id) = lines.next() else { continue };
        let entry = counts.entry(id.trim()).or_default();
        for line in lines {
            let mut parts = line.split('\t');
            // Binary files show "-": they have no line counts.
            if let (Some(Ok(a)), Some(Ok(d)), Some(path)) =
                (parts.next().map(str::parse::<u64>), parts.next().map(str::parse::<u64>), parts.next())
            {
                entry.0 += a;
                entry.1 += d;
                entry.2.push((path.to_owned(), a));
            }
        }
    }
    for commit in &mut commits {
        if let Some((added, deleted, by_file)) = counts.remove(commit.id.as_str()) {
            commit.added = added;
            commit.deleted = deleted;
            commit.added_by_file = by_file;
        }
    }
    Ok(commits)
}

/// The commit that last changed a line, and its committer time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlameLine {
    /// Commit hash.
    pub commit: String,
    /// Committer time, Unix seconds.
    pub time: i64,
}

/// The commit that last changed each line of `path` at `rev` (index 0 is line 1).
pub fn blame(repo: &Path, rev: &str, path: &str) -> Result<Vec<BlameLine>, PostureError> {
    let porcelain = git(repo, &["blame", "--porcelain", rev, "--", path])?;
    let mut lines: Vec<BlameLine> = Vec::new();
    let mut times: HashMap<String, i64> = HashMap::new();
    let mut current: Option<(String, usize)> = None;
    for line in porcelain.lines() {
        if line.starts_with('\t') {
            // The line's content ends its entry: record it with the commit's time (given once per commit).
            if let Some((commit, n)) = current.take() {
                if lines.len() < n {
                    lines.resize(n, BlameLine::default());
                }
                let time = times.get(&commit).copied().unwrap_or_default();
                lines[n - 1] = BlameLine { commit, time };
            }
            continue;
        }
        if let Some(time) = line.strip_prefix("committer-time ") {
            if let (Some((commit, _)), Ok(time)) = (&current, time.parse()) {
                times.insert(commit.clone(), time);
            }
            continue;
        }
        if current.is_none() {
            let mut fields = line.split(' ');
            if let (Some(id), Some(_), Some(final_line)) = (fields.next(), fields.next(), fields.next())
                && id.len() >= 40
                && let Ok(n) = final_line.parse::<usize>()
                && n > 0
            {
                current = Some((id.to_owned(), n));
            }
        }
    }
    Ok(lines)
}

/// Lines added or changed by `base..head`, per path (new-file line numbers).
pub fn changed_lines(
    repo: &Path,
    base: &str,
    head: &str,
) -> Result<HashMap<String, Vec<(usize, usize)>>, PostureError> {
    let diff = git(repo, &["diff", "--unified=0", "--no-color", "--no-ext-diff", &format!("{base}..{head}")])?;
    let mut out: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in diff.lines() {
        if let Some(path) = line.strip_prefix("+++ ") {
            current = path.strip_prefix("b/").map(str::to_owned);
        } else if let Some(hunk) = line.strip_prefix("@@ ")
            && let Some(path) = &current
        {
            // @@ -a,b +c,d @@: lines c .. c+d-1 of the new file (d defaults to 1; 0 means a deletion).
            let Some(new) = hunk.split(' ').find(|p| p.starts_with('+')) else { continue };
            let mut parts = new[1..].split(',');
            let start: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let count: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1);
            if count > 0 {
                out.entry(path.clone()).or_default().push((start, start + count - 1));
            }
        }
    }
    Ok(out)
}
