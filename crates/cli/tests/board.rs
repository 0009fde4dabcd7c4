//! `gpuplane board` end to end: with no inputs it computes every figure on the bundled data and this
//! repository; headless Chromium loads the HTML without a console message, finds every section and
//! chart, and takes a screenshot; the Markdown carries the same figures.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const SECTIONS: [&str; 4] = ["summary", "inference", "maturity", "security"];
const CHARTS: [&str; 4] = ["chart-policies", "chart-ttft", "chart-radar", "chart-lint"];

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium: scripts/test installs Debian's chromium")
}

#[test]
fn the_board_report_renders_in_chromium_with_every_section_and_the_markdown_agrees() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_gpuplane"))
        .args(["board", "--as-of", "2026-11-28", "--out"])
        .arg(out.path())
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let html = std::fs::read_to_string(out.path().join("board.html")).unwrap();
    let markdown = std::fs::read_to_string(out.path().join("board.md")).unwrap();

    // The same measured figures in both: the placement and serving results of the bundled data.
    for figure in ["4.33 %", "6.92 %", "26073 GB", "233 GB", "98.3 %", "97.4 %", "97.8 %"] {
        assert!(html.contains(figure), "HTML lacks {figure}");
        assert!(markdown.contains(figure), "Markdown lacks {figure}");
    }
    // Self-contained: no script, no fetched asset (the SVG namespace is a name, not a fetch).
    let fetched = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for marker in ["<script", "http://", "https://", "src=", "href=", "url("] {
        assert!(!fetched.contains(marker), "the page contains {marker}");
    }

    let profile = tempfile::tempdir().unwrap();
    let page = format!("file://{}", out.path().join("board.html").display());
    let dom = chromium(&["--dump-dom", &page], profile.path());
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    for id in SECTIONS {
        assert!(dom_text.contains(&format!("<section id=\"{id}\">")), "section {id} missing from the rendered page");
    }
    for id in CHARTS {
        let at = dom_text.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("chart {id} missing"));
        assert!(
            dom_text[at..].trim_start_matches(&format!("<figure id=\"{id}\">")).starts_with("<svg"),
            "{id} has no SVG"
        );
    }
    let stderr = String::from_utf8_lossy(&dom.stderr);
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");

    // Kept after the test, in the build's scratch folder (target/tmp/board.png), for a look.
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("board.png");
    let shot = chromium(
        &[&format!("--screenshot={}", screenshot.display()), "--window-size=1240,1754", "--hide-scrollbars", &page],
        profile.path(),
    );
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());

    // What it claims (README: "prints on at most four A4 pages") against Chromium's print to PDF.
    let pdf = out.path().join("board.pdf");
    let print =
        chromium(&[&format!("--print-to-pdf={}", pdf.display()), "--no-pdf-header-footer", &page], profile.path());
    assert!(print.status.success(), "{}", String::from_utf8_lossy(&print.stderr));
    let pages = pdf_pages(&std::fs::read(&pdf).unwrap());
    assert!((1..=MAX_PAGES).contains(&pages), "the board prints on {pages} pages; README claims at most {MAX_PAGES}");
}

/// The page count README states for the printed board.
const MAX_PAGES: usize = 4;

/// Pages of a PDF as Chromium writes it: its `/Type /Page` objects (not `/Pages`, the tree).
fn pdf_pages(pdf: &[u8]) -> usize {
    let needle = b"/Type /Page";
    pdf.windows(needle.len() + 1).filter(|w| w.starts_with(needle) && w[needle.len()] != b's').count()
}
