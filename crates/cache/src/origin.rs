//! The origins a manifest may name: URL prefixes an operator allows (`--allow-origin`). A URL is under a
//! prefix when scheme, host and port are the prefix's and its path continues the prefix's at a `/`; user
//! names and encoded dots are refused. Every redirect hop of a fetch is checked the same way.

/// Whether `url` lies under the allowed origin prefix `allowed`: same scheme, host and port, and a
/// path that is the prefix's path or continues it after a `/`.
pub fn origin_matches(allowed: &str, url: &str) -> bool {
    let (Ok(a), Ok(u)) = (reqwest::Url::parse(allowed), reqwest::Url::parse(url)) else { return false };
    if a.scheme() != u.scheme()
        || a.host_str() != u.host_str()
        || a.port_or_known_default() != u.port_or_known_default()
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return false;
    }
    // Dot segments are resolved by the parser; encoded ones (`%2e%2e`) are refused outright.
    if u.path().to_ascii_lowercase().contains("%2e") || u.path().contains("%2f") || u.path().contains("%2F") {
        return false;
    }
    let prefix = a.path().trim_end_matches('/');
    let path = u.path();
    path == prefix || path.starts_with(&format!("{prefix}/")) || prefix.is_empty()
}

/// Whether `url` lies under any of `allowed`.
pub fn allowed(allowed: &[String], url: &str) -> bool {
    allowed.iter().any(|a| origin_matches(a, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_by_scheme_host_port_and_whole_path_segments() {
        let hf = "https://huggingface.co/meta-llama/";
        assert!(origin_matches(hf, "https://huggingface.co/meta-llama/Llama-3/resolve/main"));
        assert!(origin_matches(hf, "https://huggingface.co:443/meta-llama/x"));
        assert!(!origin_matches(hf, "https://huggingface.co/meta-llama-evil/x"));
        assert!(!origin_matches(hf, "http://huggingface.co/meta-llama/x"));
        assert!(!origin_matches(hf, "https://huggingface.co.evil.com/meta-llama/x"));
        assert!(!origin_matches(hf, "https://huggingface.co@169.254.169.254/meta-llama/x"));
        assert!(!origin_matches(hf, "https://huggingface.co/meta-llama/../../etc"), "dot segments resolve outside");
        assert!(!origin_matches(hf, "https://huggingface.co/meta-llama/%2e%2e/x"));
        assert!(origin_matches("https://models.example", "https://models.example/a/b"));
        assert!(origin_matches("s3://weights/team-a", "s3://weights/team-a/llama"));
        assert!(!origin_matches("s3://weights/team-a", "s3://weights/team-b/llama"));
        assert!(!origin_matches("s3://weights/team-a", "not a url"));
    }

    proptest::proptest! {
        /// An allowed URL always keeps the allowed prefix's scheme and host.
        #[test]
        fn allowed_urls_keep_the_prefixs_host(path in "[a-z0-9./%@:-]{0,40}") {
            let url = format!("https://models.example/org/{path}");
            if origin_matches("https://models.example/org/", &url) {
                let parsed = reqwest::Url::parse(&url).unwrap();
                proptest::prop_assert_eq!(parsed.host_str(), Some("models.example"));
                proptest::prop_assert!(parsed.path().starts_with("/org"));
            }
        }
    }
}
