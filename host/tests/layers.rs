//! The crate's layering (docs/architecture.md): every `crate::<module>` path in `host/src`
//! must name a module of a lower layer than the file's own top-level module, so imports point
//! one way and no two top-level modules import each other. A new top-level module must be
//! placed in [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules, top layer first; modules on one line are peers and may not import each
/// other.
const LAYERS: &[&[&str]] = &[
    &["app"],
    &["admin"],
    &["control"],
    &["downstream"],
    &["script"],
    &["cluster", "upstream"],
    &["delivery"],
    &["rooms"],
    &["user_centre", "telemetry"],
    &["otlp_metrics"],
    &["tls"],
    &["metrics", "config_overrides"],
    &["config", "maps"],
    &["session"],
    &["protocol", "http_client", "embedded", "memory"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `crate::<module>` paths of every file under `dir`, by the file's top-level module.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let first = relative.components().next().expect("a component").as_os_str().to_string_lossy();
            let top = first.trim_end_matches(".rs").to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable source");
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let rest = &code[at + "crate::".len()..];
                    let module: String =
                        rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !module.is_empty() && module != top {
                        found.entry(top.clone()).or_default().insert(module);
                    }
                }
            }
        }
    }
    found
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut upward = Vec::new();
    let graph = imports(&src);
    for (module, targets) in &graph {
        let from = layer_of(module).unwrap_or_else(|| panic!("top-level module `{module}` is in no layer"));
        for target in targets {
            let to = layer_of(target).unwrap_or_else(|| panic!("top-level module `{target}` is in no layer"));
            if to <= from {
                upward.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that do not point down: {upward:?}");
    // The check can fail: the graph is read (the app imports most of the crate).
    assert!(graph.get("app").is_some_and(|t| t.contains("downstream") && t.contains("control")));
}
