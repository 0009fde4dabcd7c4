//! Globs over repository-relative paths: `*` and `?` stay within one path segment, `**` crosses
//! segments (`**/` also matches no folder at all). Compiled to an anchored regular expression.

use regex::Regex;

/// Compiles a glob to an anchored regular expression.
pub fn compile(glob: &str) -> Regex {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                    re.push_str("(?:.*/)?");
                } else {
                    re.push_str(".*");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).expect("every character outside the wildcards is escaped")
}

#[cfg(test)]
mod tests {
    use super::compile;

    #[test]
    fn stars_stay_in_a_segment_and_double_stars_cross_them() {
        let g = compile(".github/workflows/*.yml");
        assert!(g.is_match(".github/workflows/ci.yml"));
        assert!(!g.is_match(".github/workflows/sub/ci.yml"));
        let g = compile("**/Chart.yaml");
        assert!(g.is_match("Chart.yaml"));
        assert!(g.is_match("deploy/helm/Chart.yaml"));
        assert!(!g.is_match("deploy/helm/Chart.yaml.bak"));
        let g = compile("docs/runbooks/**");
        assert!(g.is_match("docs/runbooks/gpu/oom.md"));
        assert!(compile("file?.tf").is_match("file1.tf"));
        assert!(!compile("a.b").is_match("axb"));
    }
}
