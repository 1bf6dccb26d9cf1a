//! Watches `dest_map.json` and `message_map.json` (connectsrv: file listeners with reload
//! callbacks) and, with `scripts.dir`, the script files `auth.wasm`, `router.wasm` and
//! `rooms.wasm` in it, and applies valid changes live (a script file goes through the deploy
//! pipeline, keeping the live config; a refused one leaves the live version). A change to the
//! directory's `manifest.toml` or any `.wasm` there re-applies the manifest — handler scripts
//! ([`crate::script::Handlers::apply`]) and built-in entries: only scripts whose file or config
//! changed are deployed (a built-in file that the manifest describes is deployed by this path
//! only, with the manifest's config).
//!
//! The parent directories are watched (editors and deploy tools replace files by rename).
//! Only events that can change a file's content wake a reload (create, data write, rename,
//! remove): opening, reading, closing and metadata changes do not, so the watcher's own reads
//! never trigger it. Events are coalesced: a change is applied [`DEBOUNCE`] after the last
//! event for that file. A file (for the manifest: the manifest and every `.wasm` beside it)
//! whose content equals what was last applied is not applied again: no re-initialisation, no
//! log line at info, no count ([`Applied`]).
//! A valid `dest_map` is applied atomically (only changed pools rebuilt); a valid `message_map`
//! first brings in, replaces or retires the handler scripts it names, then re-initialises the
//! router on fresh instances and swaps them in. An invalid file keeps the
//! running table, logs an error naming the problem and counts
//! `wasmgate_map_reloads_total{reason="invalid"}`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::Control;
use crate::maps;
use crate::script::manifest::{MANIFEST_FILE, Manifest};
use crate::script::{ScriptError, ScriptName};

/// Quiet time after the last file event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// SHA-256 of the content last applied from each watched file (for the scripts manifest, of
/// the manifest and every component beside it): a reload of identical content is skipped.
#[derive(Default)]
pub(crate) struct Applied(Mutex<HashMap<PathBuf, [u8; 32]>>);

impl Applied {
    /// Records `content` as applied from `path`.
    pub(crate) fn set(&self, path: &Path, content: [u8; 32]) {
        self.0.lock().insert(path.to_path_buf(), content);
    }

    fn is_live(&self, path: &Path, content: &[u8; 32]) -> bool {
        self.0.lock().get(path) == Some(content)
    }
}

/// SHA-256 of a map file's text.
pub(crate) fn text_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// SHA-256 over the scripts directory's manifest and each `.wasm` file in it (names and
/// contents, in name order): what a manifest reload reads. A file that cannot be read counts
/// as absent (the reload itself reports it).
pub(crate) fn manifest_fingerprint(dir: &Path) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(dir.join(MANIFEST_FILE)).unwrap_or_default());
    let mut components: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    components.retain(|p| p.extension().is_some_and(|e| e == "wasm"));
    components.sort();
    for path in components {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        hasher.update([0]);
        hasher.update(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hasher.update([0]);
        hasher.update(Sha256::digest(&bytes));
    }
    hasher.finalize().into()
}

/// Whether an event can have changed a file's content. Access events (open, read, close) and
/// metadata changes (chmod, atime) cannot: reacting to them made every reload, which opens
/// the files, trigger the next.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// Keeps the file watcher alive; dropping it stops watching.
pub struct MapWatcher {
    _watcher: RecommendedWatcher,
}

#[derive(Clone, Copy)]
enum MapKind {
    Dest,
    Message,
    Script(ScriptName),
    /// The scripts directory's manifest and handler components (the path is the directory's
    /// manifest; any `.wasm` there other than the built-ins' matches too).
    Handlers,
}

impl MapWatcher {
    /// Starts watching the configured map files (unless `maps.no_watch`) and script files;
    /// `None` when there is nothing to watch.
    pub(crate) fn start(control: Arc<Control>) -> anyhow::Result<Option<Self>> {
        let mut files: Vec<(PathBuf, MapKind)> = [
            (control.config.maps.dest_map.clone(), MapKind::Dest),
            (control.config.maps.message_map.clone(), MapKind::Message),
        ]
        .into_iter()
        .filter(|_| !control.config.maps.no_watch)
        .filter_map(|(path, kind)| path.map(|p| (p, kind)))
        .collect();
        if let Some(dir) = &control.config.scripts.dir {
            for name in ScriptName::ALL {
                files.push((dir.join(format!("{name}.wasm")), MapKind::Script(name)));
            }
            files.push((dir.join(MANIFEST_FILE), MapKind::Handlers));
        }
        if files.is_empty() {
            return Ok(None);
        }
        let signals: Vec<(PathBuf, MapKind, Arc<Notify>)> =
            files.iter().map(|(p, k)| (p.clone(), *k, Arc::new(Notify::new()))).collect();
        let callback_signals = signals.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if !changes_content(&event.kind) {
                return;
            }
            for (path, kind, notify) in &callback_signals {
                if event.paths.iter().any(|p| matches(p, path, *kind)) {
                    notify.notify_one();
                }
            }
        })?;
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .map(|(p, _)| p.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf))
            .collect();
        for dir in dirs {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        for (path, kind, notify) in signals {
            let control = control.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = control.shutdown.cancelled() => return,
                        _ = notify.notified() => {}
                    }
                    // Coalesce a burst of events (write + rename + chmod...).
                    loop {
                        tokio::select! {
                            _ = notify.notified() => continue,
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                        }
                    }
                    reload(&control, &path, kind).await;
                }
            });
        }
        Ok(Some(Self { _watcher: watcher }))
    }
}

fn same_file_name(event_path: &Path, watched: &Path) -> bool {
    event_path.file_name().is_some() && event_path.file_name() == watched.file_name()
}

/// Whether a file event at `event_path` concerns the watched `path` of `kind`.
fn matches(event_path: &Path, path: &Path, kind: MapKind) -> bool {
    if same_file_name(event_path, path) {
        return true;
    }
    let component = event_path.extension().is_some_and(|e| e == "wasm");
    matches!(kind, MapKind::Handlers) && event_path.parent() == path.parent() && component
}

/// Re-reads and applies the map files and the scripts directory's manifest now, whether they
/// are watched or not (SIGHUP; [`crate::RunningGateway::reload`]). Each result is logged and
/// counted as for a changed file.
pub(crate) async fn reload_files(control: &Arc<Control>) {
    let maps = [
        (control.config.maps.dest_map.clone(), MapKind::Dest),
        (control.config.maps.message_map.clone(), MapKind::Message),
    ];
    for (path, kind) in maps {
        if let Some(path) = path {
            reload(control, &path, kind).await;
        }
    }
    if let Some(dir) = &control.config.scripts.dir {
        reload(control, &dir.join(MANIFEST_FILE), MapKind::Handlers).await;
    }
}

async fn reload(control: &Arc<Control>, path: &Path, kind: MapKind) {
    if let MapKind::Script(name) = kind {
        return deploy_file(control, path, name).await;
    }
    let (content, result) = match kind {
        MapKind::Script(_) => return,
        MapKind::Handlers => {
            // Hashing the components (Python/JS ones are 12-18 MB) is blocking work.
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let Ok(content) = tokio::task::spawn_blocking(move || manifest_fingerprint(&dir)).await else {
                return;
            };
            if control.applied.is_live(path, &content) {
                return tracing::debug!(path = %path.display(), "scripts directory unchanged; not reloaded");
            }
            (content, apply_manifest(control).await)
        }
        MapKind::Dest | MapKind::Message => {
            let text = match maps::read(path) {
                Ok(text) => text,
                Err(e) => return control.record(&path.display().to_string(), Err(e)),
            };
            let content = text_hash(&text);
            if control.applied.is_live(path, &content) {
                return tracing::debug!(path = %path.display(), "map file unchanged; not reloaded");
            }
            let result = match kind {
                MapKind::Dest => control.apply_dest_map(&text),
                _ => control.apply_message_map(&text).await,
            };
            (content, result)
        }
    };
    if result.is_ok() {
        control.applied.set(path, content);
    }
    control.record(&path.display().to_string(), result);
}

/// Re-applies the scripts directory's manifest: handler scripts, then built-in entries.
async fn apply_manifest(control: &Arc<Control>) -> Result<String, maps::MapError> {
    let invalid =
        |e: ScriptError| maps::MapError::Invalid { what: "scripts manifest", message: e.to_string() };
    let applied = control.scripts.handlers.apply(None).await.map_err(invalid)?;
    let builtins = control.apply_manifest_builtins().await.map_err(invalid)?;
    Ok(format!("handler scripts: {applied}; built-in scripts deployed: {builtins:?}"))
}

/// Deploys a changed script file (the deploy is counted and logged by the pipeline), unless
/// the manifest describes that script (then the manifest's reload deploys it, with its config).
async fn deploy_file(control: &Arc<Control>, path: &Path, name: ScriptName) {
    let name = name.name();
    let dir = path.parent().unwrap_or(Path::new("."));
    if Manifest::read(dir).is_ok_and(|m| m.get(name).is_some()) {
        return tracing::debug!(script = name, "script file changed; its manifest entry applies it");
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        // Deleted or renamed away: the live version stays.
        Err(e) => return tracing::debug!(path = %path.display(), "script file not readable: {e}"),
    };
    if let Ok(info) = control.deploy_script(name, &bytes, None).await
        && !info.unchanged
    {
        tracing::info!(path = %path.display(), script = name, version = info.version, "script file deployed");
    }
}
