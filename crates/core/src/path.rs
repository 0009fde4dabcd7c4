//! Paths as text: `a/./b/../c` read as `a/c`, without touching a file system — how a manifest's relative
//! paths and a pod's host paths are compared.

/// The path with empty and `.` segments dropped and each `..` taking back the segment before it (never
/// above the start), segments joined by `/`, no leading or trailing `/`: `a/./b/../c` → `a/c`,
/// `//dev/../dev/nvidia0/` → `dev/nvidia0`.
pub fn lexical(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::lexical;

    #[test]
    fn dots_and_doubled_slashes_are_resolved_without_rising_above_the_start() {
        assert_eq!(lexical("a/./b/../c"), "a/c");
        assert_eq!(lexical("//dev/../dev/nvidia0/"), "dev/nvidia0");
        assert_eq!(lexical("../../etc"), "etc");
        assert_eq!(lexical("/"), "");
    }
}
