//! The scripts directory's `manifest.toml`: the handler scripts that `message_map.json` may
//! name, each with its world, component file and configuration (docs/scripting.md).
//!
//! ```toml
//! [[script]]
//! name = "inventory"        # what message_map.json names: { "110": "inventory" }
//! world = "handler"         # the WIT world it implements
//! file = "inventory.wasm"   # relative to the scripts directory
//! stateful = true           # one instance; state carried across swaps (snapshot/restore)
//! [script.config]           # handed to `init` as JSON
//! max_items = 100
//! ```
//!
//! A missing manifest is an empty one. A handler script is loaded only while the message map
//! names it; the manifest alone deploys nothing. An entry may also describe a built-in script
//! (`name = "auth"`, `world = "auth"`; likewise `router`, `rooms`): it then replaces that
//! script's `[scripts.<name>]` path and config, at start and live whenever its file or config
//! changes.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::ScriptName;
use super::{ScriptError, ScriptSource};
use crate::maps::check_script_name;

/// The manifest's file name inside the scripts directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// The WIT worlds a manifest entry may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptWorld {
    /// `handler-script`.
    Handler,
    /// `auth-script` (only for the entry named `auth`).
    Auth,
    /// `router-script` (only for the entry named `router`).
    Router,
    /// `rooms-script` (only for the entry named `rooms`).
    Rooms,
}

impl ScriptWorld {
    /// The world a manifest's `world` value (or `wasmgate check-script`'s argument) names:
    /// `auth`, `router`, `rooms` or `handler`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "handler" => Some(Self::Handler),
            "auth" => Some(Self::Auth),
            "router" => Some(Self::Router),
            "rooms" => Some(Self::Rooms),
            _ => None,
        }
    }

    /// The built-in script this world belongs to; `None` for handlers.
    pub fn builtin(self) -> Option<ScriptName> {
        match self {
            Self::Handler => None,
            Self::Auth => Some(ScriptName::Auth),
            Self::Router => Some(ScriptName::Router),
            Self::Rooms => Some(ScriptName::Rooms),
        }
    }
}

/// One `[[script]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Name used by `message_map.json`, metrics and the admin API (see [`check_script_name`]).
    pub name: String,
    pub world: ScriptWorld,
    /// Component file, relative to the scripts directory (no `..`).
    pub file: PathBuf,
    /// Handed to `init` as JSON text.
    #[serde(default)]
    pub config: toml::Table,
    /// Runs as a single instance whose state is carried across swaps through its
    /// `snapshot`/`restore` exports. Default false: several instances, no state carried.
    #[serde(default)]
    pub stateful: bool,
}

/// The parsed manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default, rename = "script")]
    pub scripts: Vec<ManifestEntry>,
}

fn invalid(message: String) -> ScriptError {
    ScriptError::Load { script: MANIFEST_FILE.into(), message }
}

impl Manifest {
    /// Parses and validates manifest text: names valid and unique, files relative without
    /// `..`. Errors: [`ScriptError::Load`] naming the problem.
    pub fn parse(text: &str) -> Result<Self, ScriptError> {
        let manifest: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut names = BTreeSet::new();
        for entry in &manifest.scripts {
            match entry.world.builtin() {
                None => check_script_name(&entry.name).map_err(invalid)?,
                Some(builtin) if builtin.name() == entry.name && !entry.stateful => {}
                Some(builtin) => {
                    return Err(invalid(format!(
                        "script `{}`: world `{builtin}` is only for the built-in script `{builtin}`, \
                         which cannot be stateful",
                        entry.name
                    )));
                }
            }
            if !names.insert(entry.name.as_str()) {
                return Err(invalid(format!("script `{}` is listed twice", entry.name)));
            }
            let inside = entry.file.components().all(|c| matches!(c, Component::Normal(_)));
            if entry.file.as_os_str().is_empty() || !inside {
                return Err(invalid(format!(
                    "script `{}`: file `{}` must be a relative path inside the scripts directory",
                    entry.name,
                    entry.file.display()
                )));
            }
        }
        Ok(manifest)
    }

    /// Reads `dir/manifest.toml`; a missing file is an empty manifest.
    pub fn read(dir: &Path) -> Result<Self, ScriptError> {
        match std::fs::read_to_string(dir.join(MANIFEST_FILE)) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(invalid(format!("cannot read {}: {e}", dir.join(MANIFEST_FILE).display()))),
        }
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&ManifestEntry> {
        self.scripts.iter().find(|entry| entry.name == name)
    }

    /// The handler entry named `name` (not a built-in's).
    pub fn handler(&self, name: &str) -> Option<&ManifestEntry> {
        self.get(name).filter(|entry| entry.world == ScriptWorld::Handler)
    }

    /// The entries describing built-in scripts.
    pub fn builtins(&self) -> impl Iterator<Item = &ManifestEntry> {
        self.scripts.iter().filter(|entry| entry.world.builtin().is_some())
    }
}

impl ManifestEntry {
    /// Reads the component file. Errors: [`ScriptError::Load`] when it cannot be read.
    pub fn source(&self, dir: &Path) -> Result<ScriptSource, ScriptError> {
        let path = dir.join(&self.file);
        let bytes = std::fs::read(&path).map_err(|e| ScriptError::Load {
            script: self.name.clone(),
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        let config_json = serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into());
        Ok(ScriptSource { name: self.name.clone(), bytes: bytes.into(), config_json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        let manifest = Manifest::parse(
            r#"
            [[script]]
            name = "inventory"
            world = "handler"
            file = "inventory.wasm"
            stateful = true
            [script.config]
            max_items = 3
            "#,
        )
        .unwrap();
        let entry = manifest.get("inventory").unwrap();
        assert!(entry.stateful);
        assert_eq!(entry.world, ScriptWorld::Handler);
        assert_eq!(entry.config["max_items"].as_integer(), Some(3));
        assert!(Manifest::parse("").unwrap().scripts.is_empty());
    }

    #[test]
    fn errors_name_the_problem() {
        let entry = |name: &str, world: &str, file: &str| {
            format!("[[script]]\nname = \"{name}\"\nworld = \"{world}\"\nfile = \"{file}\"\n")
        };
        let e = Manifest::parse(&entry("a", "router", "a.wasm")).unwrap_err().to_string();
        assert!(e.contains("only for the built-in script `router`"), "{e}");
        let e = Manifest::parse(&entry("auth", "handler", "a.wasm")).unwrap_err().to_string();
        assert!(e.contains("built-in"), "{e}");
        let manifest = Manifest::parse(&entry("router", "router", "r.wasm")).unwrap();
        assert_eq!(manifest.builtins().count(), 1);
        assert!(manifest.handler("router").is_none());
        let e = Manifest::parse(&entry("a", "nonsense", "a.wasm")).unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
        let e = Manifest::parse(&entry("a", "handler", "../a.wasm")).unwrap_err().to_string();
        assert!(e.contains("inside the scripts directory"), "{e}");
        let e = Manifest::parse(&entry("A b", "handler", "a.wasm")).unwrap_err().to_string();
        assert!(e.contains("A b"), "{e}");
        let twice = entry("a", "handler", "a.wasm").repeat(2);
        let e = Manifest::parse(&twice).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
