//! The config centre (connectsrv: "get the config from the config centre, set the global
//! config, register the dest_map update callback"): with `[config_centre] enabled`, three etcd
//! keys under the prefix (default `/<cluster.prefix>/config/<node.name>/`) take part:
//!
//! - `wasmgate.toml`: merged over the local config file at start (etcd wins, table by table;
//!   [`load`]). A later change is logged; it applies at the next start.
//! - `dest_map.json`, `message_map.json`: when present at start, they replace the map files
//!   (which are then not watched) and are watched: a put is applied live exactly like a
//!   changed file ([`super::watch`]), an invalid one is refused and counted, a delete keeps the
//!   running map.
//!
//! The keys are followed with [`etcd_watch`] (read, watch, read again when the watch breaks);
//! a value is applied when it differs from the last one seen.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::GetOptions;

use super::Control;
use crate::cluster::etcd_watch::{self, Change};
use crate::config::Config;
use crate::config_overrides::{self, merge};

/// Key (under the prefix) of the gateway config merged over the local file.
pub const CONFIG_KEY: &str = "wasmgate.toml";
/// Key of the dest map.
pub const DEST_MAP_KEY: &str = "dest_map.json";
/// Key of the message map.
pub const MESSAGE_MAP_KEY: &str = "message_map.json";

/// How long a read from etcd at start may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Loads the config file at `path` (`None`: the built-in defaults) and, when its
/// `[config_centre]` is enabled, merges the TOML held in etcd at `<prefix>wasmgate.toml` over
/// it (absent key: the file alone); `overrides` (environment and `--set` flags,
/// [`crate::config_overrides`]) go over both.
///
/// Errors: the file's own errors ([`Config::load`]); etcd unreachable within 5 s; the etcd
/// TOML unparsable or the merged config invalid (the message names the key and the field).
pub async fn load(path: Option<&Path>, overrides: &toml::Table) -> anyhow::Result<Config> {
    let (mut table, local) =
        config_overrides::load(path, overrides).context("the config with its overrides")?;
    let path = path.unwrap_or(Path::new("(defaults)"));
    if !local.config_centre.enabled {
        return Ok(local);
    }
    let mut client = connect(&local).await?;
    let key = format!("{}{CONFIG_KEY}", local.config_centre_prefix());
    let Some((text, _)) = get(&mut client, &key).await? else {
        tracing::info!(key, "no gateway config in etcd; using the file alone");
        return Ok(local);
    };
    let overlay: toml::Table = toml::from_str(&text).with_context(|| format!("etcd key {key}"))?;
    merge(&mut table, overlay);
    merge(&mut table, overrides.clone());
    let config =
        Config::from_table(table, path).with_context(|| format!("the file merged with etcd key {key}"))?;
    tracing::info!(key, "gateway config merged from etcd");
    Ok(config)
}

async fn connect(config: &Config) -> anyhow::Result<etcd_client::Client> {
    let endpoints = config.config_centre_endpoints();
    let options = crate::cluster::etcd_options(endpoints, config.cluster.etcd_ca.as_deref())?;
    tokio::time::timeout(TIMEOUT, etcd_client::Client::connect(endpoints, options))
        .await
        .context("connecting to the config centre (etcd) timed out")?
        .with_context(|| format!("connecting to the config centre at {endpoints:?}"))
}

/// The value of `key` and the store revision, `None` if absent.
async fn get(client: &mut etcd_client::Client, key: &str) -> anyhow::Result<Option<(String, i64)>> {
    let response = tokio::time::timeout(TIMEOUT, client.get(key, None))
        .await
        .with_context(|| format!("reading {key} from etcd timed out"))?
        .with_context(|| format!("reading {key} from etcd"))?;
    let revision = response.header().map_or(0, |h| h.revision());
    Ok(response.kvs().first().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), revision)))
}

/// The maps found in etcd at start, and what the watch needs to follow them.
pub struct Maps {
    /// `dest_map.json` text, if the key exists.
    pub dest_map: Option<String>,
    /// `message_map.json` text, if the key exists.
    pub message_map: Option<String>,
    client: etcd_client::Client,
    prefix: String,
}

/// Reads the map keys (`None` when the config centre is off).
///
/// Errors: etcd unreachable or slower than 5 s.
pub async fn read_maps(config: &Config) -> anyhow::Result<Option<Maps>> {
    if !config.config_centre.enabled {
        return Ok(None);
    }
    let mut client = connect(config).await?;
    let prefix = config.config_centre_prefix();
    let response =
        tokio::time::timeout(TIMEOUT, client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
            .await
            .context("reading the config centre timed out")?
            .context("reading the config centre")?;
    let value = |name: &str| {
        let key = format!("{prefix}{name}");
        response
            .kvs()
            .iter()
            .find(|kv| kv.key() == key.as_bytes())
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    };
    let (dest_map, message_map) = (value(DEST_MAP_KEY), value(MESSAGE_MAP_KEY));
    Ok(Some(Maps { dest_map, message_map, client, prefix }))
}

impl Maps {
    /// Follows the map keys that were present at start until the gateway shuts down,
    /// applying each new value live (a burst of puts is applied as its last value).
    pub(crate) async fn watch(self, control: Arc<Control>) {
        let Maps { dest_map, message_map, client, prefix } = self;
        let mut applied = vec![(DEST_MAP_KEY, dest_map), (MESSAGE_MAP_KEY, message_map)];
        applied.retain(|(_, text)| text.is_some());
        if applied.is_empty() {
            return;
        }
        let followed: Vec<String> = applied.iter().map(|(name, _)| format!("{prefix}{name}")).collect();
        // The latest value etcd holds for each followed key (same order as `applied`).
        let initial: Vec<Option<String>> = applied.iter().map(|(_, text)| text.clone()).collect();
        let (latest_tx, mut latest) = tokio::sync::watch::channel(initial);
        let on_change = |change: Change| {
            let set = |key: &str, value: Option<String>| match followed.iter().position(|k| k == key) {
                Some(i) if value.is_some() => latest_tx.send_modify(|latest| latest[i] = value),
                Some(_) => tracing::warn!(key, "map key deleted from etcd; keeping the running map"),
                None => {}
            };
            match change {
                Change::Snapshot(all) => {
                    for key in &followed {
                        set(key, all.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()));
                    }
                }
                Change::Put(key, value) => set(&key, Some(value)),
                Change::Delete(key) => set(&key, None),
            }
        };
        let apply_changes = async {
            loop {
                tokio::select! {
                    _ = control.shutdown.cancelled() => return,
                    changed = latest.changed() => if changed.is_err() { return },
                }
                let now = latest.borrow_and_update().clone();
                for ((name, running), text) in applied.iter_mut().zip(now) {
                    let Some(text) = text.filter(|t| running.as_ref() != Some(t)) else { continue };
                    let result = match *name {
                        DEST_MAP_KEY => control.apply_dest_map(&text),
                        _ => control.apply_message_map(&text).await,
                    };
                    // A refused text is remembered too: it is not retried until it changes.
                    *running = Some(text);
                    control.record(&format!("etcd:{prefix}{name}"), result);
                }
            }
        };
        let follow =
            etcd_watch::follow(client, prefix.clone(), "config centre", control.shutdown.clone(), on_change);
        tokio::join!(follow, apply_changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_values_and_recurses_into_tables() {
        let mut base: toml::Table =
            toml::from_str("[timeouts]\nlogin_ms = 5000\nheartbeat_ms = 20000\n[node]\nname = \"a\"\n")
                .unwrap();
        let overlay: toml::Table =
            toml::from_str("[timeouts]\nlogin_ms = 7000\n[rooms]\nlist_limit = 9\n").unwrap();
        merge(&mut base, overlay);
        assert_eq!(base["timeouts"]["login_ms"].as_integer(), Some(7000));
        assert_eq!(base["timeouts"]["heartbeat_ms"].as_integer(), Some(20000));
        assert_eq!(base["node"]["name"].as_str(), Some("a"));
        assert_eq!(base["rooms"]["list_limit"].as_integer(), Some(9));
    }
}
