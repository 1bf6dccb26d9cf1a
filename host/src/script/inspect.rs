//! What a component declares at its top level — its imports and exports — read from its
//! binary without compiling it, so a component for the wrong world or with imports the host
//! refuses is turned away in milliseconds instead of after a compile of seconds (an 18 MB
//! Python component takes 4-8 s of CPU and hundreds of MB to compile).
//!
//! Only the outer component's import and export sections are read; nested core modules and
//! components (where the code is) are skipped without being parsed. Full validation happens
//! at compile time.

use wasmparser::{Chunk, Encoding, Parser, Payload};

/// What the host links for an import a script declares, by interface prefix, and what a call
/// gets. Toolchains import filesystem, sockets and HTTP whether a script uses them or not, so
/// they are linked, granting nothing (docs/scripting.md, "WASI stubs").
pub const KNOWN_IMPORTS: [(&str, &str); 8] = [
    ("wasmgate:gateway/", "granted: the gateway's host interfaces"),
    ("wasi:clocks/", "granted: wall and monotonic clocks"),
    ("wasi:random/", "granted: random bytes"),
    ("wasi:io/", "granted: streams and polling over the stubs below"),
    (
        "wasi:cli/",
        "stubbed: no environment variables or arguments, empty stdin, stdout/stderr counted and logged at debug, exit traps",
    ),
    ("wasi:filesystem/", "stubbed: no preopened directory, so no file can be opened"),
    ("wasi:sockets/", "stubbed: TCP, UDP and name lookups denied"),
    ("wasi:http/", "stubbed: every outgoing request fails with HTTP-request-denied"),
];

/// What becomes of one import: its entry in [`KNOWN_IMPORTS`], or `None` for an import the
/// host does not know (refused, or linked as traps with `scripts.trap_unknown_imports`).
pub fn known_import(name: &str) -> Option<&'static str> {
    KNOWN_IMPORTS.iter().find(|(prefix, _)| name.starts_with(prefix)).map(|(_, what)| *what)
}

/// A component's top-level import and export names (e.g. `wasi:io/streams@0.2.0`,
/// `wasmgate:gateway/router@0.1.0`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Reads the top-level imports and exports of `bytes`.
///
/// Errors: a message when the bytes are not a WebAssembly component (a core module, or not
/// WebAssembly) or its top-level sections are malformed.
pub fn declared(bytes: &[u8]) -> Result<Declared, String> {
    let mut parser = Parser::new(0);
    let mut rest = bytes;
    let mut declared = Declared::default();
    loop {
        let (consumed, payload) = match parser.parse(rest, true).map_err(|e| e.to_string())? {
            Chunk::Parsed { consumed, payload } => (consumed, payload),
            Chunk::NeedMoreData(_) => return Err("truncated WebAssembly binary".into()),
        };
        rest = &rest[consumed..];
        match payload {
            Payload::Version { encoding: Encoding::Module, .. } => {
                return Err("a core WebAssembly module, not a component (build with a component \
                            toolchain, e.g. the wasm32-wasip2 target, or wrap it with \
                            `wasm-tools component new`)"
                    .into());
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    declared.imports.push(import.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    declared.exports.push(export.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            // A nested module or component: its bytes follow the section header; skip them (the
            // outer parser resumes after them).
            Payload::ModuleSection { unchecked_range, .. }
            | Payload::ComponentSection { unchecked_range, .. } => {
                rest = rest.get(unchecked_range.len()..).ok_or("truncated nested section")?;
            }
            Payload::End(_) => return Ok(declared),
            _ => {}
        }
    }
}

/// Checks a component's declarations against a world that exports `interface` (e.g.
/// `wasmgate:gateway/router`) and against [`KNOWN_IMPORTS`] (unless `trap_unknown`, when
/// unknown imports are linked as traps). Returns the reason for a refusal, naming each
/// unknown import.
pub fn check(declared: &Declared, interface: &str, trap_unknown: bool) -> Result<(), String> {
    let exported = declared
        .exports
        .iter()
        .any(|name| name.strip_prefix(interface).is_some_and(|v| v.is_empty() || v.starts_with('@')));
    if !exported {
        let found =
            if declared.exports.is_empty() { "nothing".to_string() } else { declared.exports.join(", ") };
        return Err(format!("does not export `{interface}` (it exports {found}): built for another world?"));
    }
    let unknown: Vec<&str> =
        declared.imports.iter().map(String::as_str).filter(|name| known_import(name).is_none()).collect();
    if unknown.is_empty() || trap_unknown {
        return Ok(());
    }
    Err(format!(
        "imports {}, which the host does not provide — scripts may import wasmgate:gateway and \
         WASI cli, io, clocks, random, filesystem, sockets and http (docs/scripting.md); \
         `scripts.trap_unknown_imports = true` links unknown imports as traps instead",
        unknown.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_and_garbage_are_named() {
        let module = b"\0asm\x01\0\0\0";
        assert!(declared(module).unwrap_err().contains("core WebAssembly module"));
        assert!(declared(b"not wasm").is_err());
        assert!(declared(b"").is_err());
    }

    #[test]
    fn the_default_router_declares_its_world() {
        let declared = declared(crate::embedded::DEFAULT_ROUTER).unwrap();
        assert!(declared.exports.iter().any(|e| e.starts_with("wasmgate:gateway/router@")), "{declared:?}");
        assert!(declared.imports.iter().any(|i| i.starts_with("wasmgate:gateway/types@")), "{declared:?}");
        check(&declared, "wasmgate:gateway/router", false).unwrap();
        let wrong_world = check(&declared, "wasmgate:gateway/auth", false).unwrap_err();
        assert!(wrong_world.contains("does not export `wasmgate:gateway/auth`"), "{wrong_world}");
    }

    #[test]
    fn unknown_imports_are_each_named_and_stubbed_ones_pass() {
        let declared = Declared {
            imports: vec![
                "wasi:io/streams@0.2.0".into(),
                "wasi:filesystem/types@0.2.0".into(),
                "wasi:sockets/tcp@0.2.0".into(),
                "wasi:http/outgoing-handler@0.2.3".into(),
                "wasi:keyvalue/store@0.2.0-draft".into(),
                "acme:secrets/vault".into(),
            ],
            exports: vec!["wasmgate:gateway/handler@0.1.0".into()],
        };
        let e = check(&declared, "wasmgate:gateway/handler", false).unwrap_err();
        assert!(e.contains("imports wasi:keyvalue/store@0.2.0-draft, acme:secrets/vault, which"), "{e}");
        assert!(!e.contains("streams") && !e.contains("filesystem/types"), "{e}");
        check(&declared, "wasmgate:gateway/handler", true).unwrap();
        assert!(known_import("wasi:sockets/tcp@0.2.0").is_some_and(|w| w.starts_with("stubbed")));
    }
}
