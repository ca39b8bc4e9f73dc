//! The core's layers point one way: addresses, then telemetry, then the envelope, then topics,
//! then the domains. A module may use only the modules of its own layer's past (earlier in
//! [`ORDER`]), never a later one, so no two modules import each other however indirectly.
//! Read from the sources: what a module names as `crate::…` outside comments and its tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// Every top-level module of the core, lowest first.
const ORDER: &[&str] = &[
    "decimal",
    "backoff",
    "throttle",
    "keepalive",
    "lease",
    "site",
    "terminal_id",
    "meeting_id",
    "telemetry",
    "hj212",
    "sampler",
    "envelope",
    "presence",
    "delivery",
    "topic",
    "update",
    "command",
    "rollout",
    "alarm",
    "media",
    "meeting",
    "sip",
];

/// The top-level module a source file belongs to, and the code of it that is not a comment or
/// a test.
fn code_of(root: &Path, file: &Path) -> (String, String) {
    let rel = file.strip_prefix(root).unwrap();
    let top = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned();
    let text = std::fs::read_to_string(file).unwrap();
    let code = text
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    (top, code)
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut upward = Vec::new();
    for file in files {
        let (module, code) = code_of(&root, &file);
        if module == "lib" || file.ends_with("tests.rs") {
            continue;
        }
        let own = rank(&module).unwrap_or_else(|| panic!("{module} is not in ORDER"));
        for used in code.split("crate::").skip(1) {
            let name: String = used
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let Some(theirs) = rank(&name) else {
                panic!(
                    "{} names crate::{name}, not a module in ORDER",
                    file.display()
                );
            };
            if theirs > own {
                upward.push(format!("{} uses crate::{name}", file.display()));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "modules using a later layer: {upward:#?}"
    );
}
