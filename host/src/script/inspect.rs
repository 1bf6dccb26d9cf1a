//! What a component declares at its top level — its imports and exports — read from its
//! binary without compiling it, so a component for the wrong world or with imports the host
//! refuses is turned away in milliseconds instead of after a compile of seconds (an 18 MB
//! Python component takes 4-8 s of CPU and hundreds of MB to compile).
//!
//! Only the outer component's import and export sections are read; nested core modules and
//! components (where the code is) are skipped without being parsed. Full validation happens
//! at compile time.

use wasmparser::{Chunk, Encoding, Parser, Payload};

/// Import namespaces a script may use. Rust's standard library imports these WASI interfaces
/// even when unused; the store's WASI context grants them nothing (no environment variables,
/// empty stdin, discarded stdout/stderr). Filesystem, sockets, HTTP and anything else are
/// refused at deploy time.
pub const ALLOWED_IMPORTS: [&str; 5] =
    ["wasmgate:gateway/", "wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/"];

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
/// `wasmgate:gateway/router`) and against [`ALLOWED_IMPORTS`]. Returns the reason for a
/// refusal, naming each refused import.
pub fn check(declared: &Declared, interface: &str) -> Result<(), String> {
    let exported = declared
        .exports
        .iter()
        .any(|name| name.strip_prefix(interface).is_some_and(|v| v.is_empty() || v.starts_with('@')));
    if !exported {
        let found =
            if declared.exports.is_empty() { "nothing".to_string() } else { declared.exports.join(", ") };
        return Err(format!("does not export `{interface}` (it exports {found}): built for another world?"));
    }
    let denied: Vec<&str> = declared
        .imports
        .iter()
        .map(String::as_str)
        .filter(|name| !ALLOWED_IMPORTS.iter().any(|allowed| name.starts_with(allowed)))
        .collect();
    if denied.is_empty() {
        return Ok(());
    }
    Err(format!(
        "imports {} — scripts may import only wasmgate:gateway and wasi:cli/io/clocks/random",
        denied.join(", ")
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
        check(&declared, "wasmgate:gateway/router").unwrap();
        let wrong_world = check(&declared, "wasmgate:gateway/auth").unwrap_err();
        assert!(wrong_world.contains("does not export `wasmgate:gateway/auth`"), "{wrong_world}");
    }

    #[test]
    fn refused_imports_are_each_named() {
        let declared = Declared {
            imports: vec![
                "wasi:io/streams@0.2.0".into(),
                "wasi:filesystem/types@0.2.0".into(),
                "wasi:sockets/tcp@0.2.0".into(),
            ],
            exports: vec!["wasmgate:gateway/handler@0.1.0".into()],
        };
        let e = check(&declared, "wasmgate:gateway/handler").unwrap_err();
        assert!(e.contains("wasi:filesystem/types@0.2.0, wasi:sockets/tcp@0.2.0"), "{e}");
        assert!(!e.contains("streams"), "{e}");
    }
}
