//! Config overrides from the environment and the command line, applied over the config file
//! (and over the config centre's TOML): precedence file < config centre < environment <
//! `--set` flags, later layers winning key by key.
//!
//! Both name a key by its TOML path: `--set limits.max_conn_num=5000`, or
//! `WASMGATE__LIMITS__MAX_CONN_NUM=5000` (prefix `WASMGATE__`, sections separated by `__`,
//! case-insensitive; a double underscore keeps keys' own single underscores unambiguous). A
//! value is read as a TOML value (`5000`, `true`, `["a", "b"]`, `"quoted"`) and, when it is
//! not one, as a string (`127.0.0.1:7100`). The merged table is checked like a file, so a bad
//! value is refused with the field's name.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// Prefix of the environment variables read by [`from_env`].
pub const ENV_PREFIX: &str = "WASMGATE__";

/// The overrides named by the environment variables among `vars` that start with
/// [`ENV_PREFIX`] (others are ignored), as a TOML table.
///
/// Errors: [`ConfigError::Invalid`] when a variable names no key (`WASMGATE__=1`) or puts a
/// key under a value (`WASMGATE__LIMITS=1` with `WASMGATE__LIMITS__X=2`).
pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<toml::Table, ConfigError> {
    let mut table = toml::Table::new();
    let mut vars: Vec<(String, String)> =
        vars.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> =
            name[ENV_PREFIX.len()..].split("__").map(|part| part.to_ascii_lowercase()).collect();
        insert(&mut table, &path, &value)?;
    }
    Ok(table)
}

/// The overrides of `--set KEY=VALUE` arguments (`KEY` a dotted TOML path), as a TOML table;
/// a later `--set` of the same key wins.
///
/// Errors: [`ConfigError::Invalid`] when an argument has no `=` or an empty key part.
pub fn from_sets(sets: &[String]) -> Result<toml::Table, ConfigError> {
    let mut table = toml::Table::new();
    for set in sets {
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::Invalid {
            field: "--set",
            problem: format!("`{set}` is not KEY=VALUE"),
        })?;
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        insert(&mut table, &path, value)?;
    }
    Ok(table)
}

/// The TOML table of the file at `path` (`None`: empty, the built-in defaults) and the
/// configuration it gives with `overrides` merged over it. Errors: the file's
/// ([`Config::read_table`]) and the merged table's ([`Config::from_table`]).
pub fn load(path: Option<&Path>, overrides: &toml::Table) -> Result<(toml::Table, Config), ConfigError> {
    let (table, path) = match path {
        Some(path) => (Config::read_table(path)?, path),
        None => (toml::Table::new(), Path::new("(defaults)")),
    };
    let mut merged = table.clone();
    merge(&mut merged, overrides.clone());
    let config = Config::from_table(merged, path)?;
    Ok((table, config))
}

/// Merges `overlay` into `base`: tables recursively, any other value replaced.
pub fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (name, value) in overlay {
        match (base.get_mut(&name), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => merge(inner, over),
            (_, value) => {
                base.insert(name, value);
            }
        }
    }
}

fn insert(table: &mut toml::Table, path: &[String], value: &str) -> Result<(), ConfigError> {
    let shown = path.join(".");
    let invalid =
        |problem: &str| ConfigError::Invalid { field: "override", problem: format!("`{shown}` {problem}") };
    let (last, sections) = path.split_last().ok_or_else(|| invalid("names no key"))?;
    if path.iter().any(String::is_empty) {
        return Err(invalid("has an empty key part"));
    }
    let mut at = table;
    for section in sections {
        let entry = at.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| invalid("puts a key under a value"))?;
    }
    at.insert(last.clone(), parse_value(value));
    Ok(())
}

/// `text` as a TOML value, or as a string when it is not one.
fn parse_value(text: &str) -> toml::Value {
    let probe = format!("v = {text}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_names_nested_keys_and_reads_typed_values() {
        let table = from_env(vars(&[
            ("WASMGATE__LIMITS__MAX_CONN_NUM", "5000"),
            ("WASMGATE__LISTEN__WS", "127.0.0.1:9000"),
            ("WASMGATE__MAPS__NO_WATCH", "true"),
            ("WASMGATE_CONFIG", "ignored.toml"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(table["limits"]["max_conn_num"].as_integer(), Some(5000));
        assert_eq!(table["listen"]["ws"].as_str(), Some("127.0.0.1:9000"));
        assert_eq!(table["maps"]["no_watch"].as_bool(), Some(true));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let mut base: toml::Table =
            toml::from_str("[limits]\nmax_conn_num = 1\npending_write_num = 7").unwrap();
        merge(&mut base, from_env(vars(&[("WASMGATE__LIMITS__MAX_CONN_NUM", "2")])).unwrap());
        merge(&mut base, from_sets(&["limits.max_conn_num=3".into()]).unwrap());
        assert_eq!(base["limits"]["max_conn_num"].as_integer(), Some(3));
        assert_eq!(base["limits"]["pending_write_num"].as_integer(), Some(7));
    }

    #[test]
    fn malformed_overrides_are_refused() {
        assert!(from_sets(&["limits.max_conn_num".into()]).is_err());
        assert!(from_sets(&["limits..x=1".into()]).is_err());
        assert!(from_env(vars(&[("WASMGATE__", "1")])).is_err());
        let clash = from_sets(&["limits=1".into(), "limits.x=2".into()]);
        assert!(clash.is_err());
    }
}
