//! `dest_map.json` and `message_map.json`, in connectsrv's formats.
//!
//! ```json
//! // dest_map.json: dest id -> queue pool
//! { "101": { "poolNums": 4, "srvAddr": "127.0.0.1:7201", "srvName": "echo" } }
//! // message_map.json: message id -> dest id, or -> the name of a handler script
//! { "100": 101, "101": 101, "110": "inventory" }
//! ```
//!
//! Keys are decimal strings (JSON object keys); parsing rejects anything else with an error
//! naming the key. Dest id ranges by convention (connectsrv): 0-99 connection services,
//! 100-199 other services, 200-299 user centre, 300-499 game dispatch, 1000+ games.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Most connections one dest may ask for.
pub const MAX_POOL_NUMS: usize = 256;

/// One upstream service (a `dest_map.json` entry).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestEntry {
    /// TCP connections in the queue pool; given as `poolNums`, or as seed 001's `count` x
    /// `size` (the parse sets it to their product).
    #[serde(default)]
    pub pool_nums: usize,
    /// Seed 001's RPC proxy shape: `count` clients of `size` connections each.
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub size: Option<usize>,
    /// What the service speaks.
    #[serde(default)]
    pub protocol: DestProtocol,
    /// Thrift settings (`protocol: "thrift"` only).
    #[serde(default)]
    pub thrift: Option<ThriftSettings>,
    /// `host:port` of the service.
    pub srv_addr: String,
    /// Service name, for logs.
    #[serde(default)]
    pub srv_name: String,
    /// TLS to the service; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<DestTls>,
}

/// TLS to one upstream service (`"tls": {"ca": "/etc/wasmgate/backend-ca.pem", "serverName":
/// "chat.internal"}` in a `dest_map.json` entry; `"tls": {}` uses the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestTls {
    /// PEM file of the CA(s) to trust (absolute, or relative to the working directory);
    /// absent: the system's trusted roots.
    pub ca: Option<std::path::PathBuf>,
    /// The name the service's certificate must carry; absent: the host of `srvAddr`.
    pub server_name: Option<String>,
}

/// What a dest's service speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DestProtocol {
    /// Backend protocol v1 (docs/protocol.md).
    #[default]
    #[serde(rename = "wasmgate-v1")]
    WasmgateV1,
    /// Seed 001's Thrift RPC: `ProtoRequest`/`ProtoReply` (docs/protocol.md, "Thrift upstreams").
    #[serde(rename = "thrift")]
    Thrift,
}

/// Which id a Thrift `ProtoRequest` carries as `sharding_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardingId {
    /// The session id.
    #[default]
    Session,
    /// The user id as a signed 64-bit decimal (the session id when it is not one).
    User,
}

/// How a Thrift dest is called (`"thrift": {...}` in a `dest_map.json` entry; every key
/// optional).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ThriftSettings {
    /// `"framed"` (default) or `"buffered"`.
    pub transport: crate::protocol::thrift::Framing,
    /// `"binary"` (default) or `"compact"`.
    pub protocol: crate::protocol::thrift::Encoding,
    /// The service method taking a `ProtoRequest` and returning a `ProtoReply`.
    pub method: String,
    /// What `sharding_id` carries.
    pub sharding_id: ShardingId,
    /// Milliseconds a call may wait for its reply before the client gets `upstream_timeout`.
    pub timeout_ms: u64,
    /// Calls one connection may have waiting for replies; more wait in its queue.
    pub max_in_flight: usize,
}

impl Default for ThriftSettings {
    fn default() -> Self {
        Self {
            transport: Default::default(),
            protocol: Default::default(),
            method: "call".into(),
            sharding_id: ShardingId::Session,
            timeout_ms: 5_000,
            max_in_flight: 1_024,
        }
    }
}

/// dest id -> upstream service.
pub type DestMap = BTreeMap<u32, DestEntry>;
/// Where `message_map.json` sends a message id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// A dest id (connectsrv): the router script decides, usually forwarding to this dest.
    Dest(u32),
    /// The name of a handler script from the scripts directory's manifest, which handles the
    /// message instead of the router.
    Script(String),
}

/// message id -> dest id or handler script.
pub type MessageMap = BTreeMap<u32, Target>;

/// Longest handler script name, in bytes.
pub const MAX_SCRIPT_NAME_LEN: usize = 64;

/// Checks a handler script name: 1 to [`MAX_SCRIPT_NAME_LEN`] bytes of `a-z`, `0-9`, `_`, `-`
/// (it appears in metric labels, URLs and file names), and not a built-in script's name.
pub fn check_script_name(name: &str) -> Result<(), String> {
    let charset_ok =
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_SCRIPT_NAME_LEN || !charset_ok {
        return Err(format!(
            "script name `{name}` must be 1 to {MAX_SCRIPT_NAME_LEN} characters of a-z, 0-9, `_`, `-`"
        ));
    }
    if ["auth", "router", "rooms"].contains(&name) {
        return Err(format!("`{name}` is a built-in script, not a handler script"));
    }
    Ok(())
}

/// A map file that cannot be used; the running map stays.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// A JSON object's entries in file order, duplicates kept (a plain map would keep only the
/// last of two equal keys, silently).
struct Entries<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The entries keyed by id. Errors: a key that is not a u32 id, or two keys naming one id
/// (`"101"` twice, or `"101"` and `" 101"`).
fn parse_keys<V>(what: &'static str, raw: Entries<V>) -> Result<BTreeMap<u32, V>, MapError> {
    let mut map = BTreeMap::new();
    for (key, value) in raw.0 {
        let id = key
            .trim()
            .parse::<u32>()
            .map_err(|_| MapError::Invalid { what, message: format!("key `{key}` is not a u32 id") })?;
        if map.insert(id, value).is_some() {
            return Err(MapError::Invalid { what, message: format!("id {id} appears twice") });
        }
    }
    Ok(map)
}

/// Whether `addr` is `host:port`: a port number, and a DNS name or IPv4 address without `:`,
/// or an IPv6 address in brackets (`[::1]:7201`).
fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains([':', '[', ']']),
    };
    host_ok && port.parse::<u16>().is_ok()
}

/// Parses and validates `dest_map.json` text.
pub fn parse_dest_map(text: &str) -> Result<DestMap, MapError> {
    const WHAT: &str = "dest_map";
    let raw: Entries<DestEntry> =
        serde_json::from_str(text).map_err(|e| MapError::Invalid { what: WHAT, message: e.to_string() })?;
    let mut map = parse_keys(WHAT, raw)?;
    for (id, entry) in &mut map {
        let invalid =
            |message: String| MapError::Invalid { what: WHAT, message: format!("dest {id}: {message}") };
        match (entry.pool_nums, entry.count, entry.size) {
            (0, Some(count), Some(size)) => entry.pool_nums = count.saturating_mul(size),
            (_, None, None) => {}
            _ => return Err(invalid("give either poolNums or both count and size".into())),
        }
        if entry.pool_nums == 0 || entry.pool_nums > MAX_POOL_NUMS {
            return Err(invalid(format!("poolNums (or count x size) must be 1..={MAX_POOL_NUMS}")));
        }
        match (entry.protocol, &mut entry.thrift) {
            (DestProtocol::Thrift, thrift @ None) => *thrift = Some(ThriftSettings::default()),
            (DestProtocol::Thrift, Some(settings)) => {
                if settings.method.is_empty() || settings.timeout_ms == 0 || settings.max_in_flight == 0 {
                    return Err(invalid(
                        "thrift: method must be non-empty, timeoutMs and maxInFlight at least 1".into(),
                    ));
                }
            }
            (DestProtocol::WasmgateV1, Some(_)) => {
                return Err(invalid("`thrift` settings need \"protocol\": \"thrift\"".into()));
            }
            (DestProtocol::WasmgateV1, None) => {}
        }
        if !is_host_port(&entry.srv_addr) {
            return Err(invalid(format!("srvAddr `{}` is not host:port", entry.srv_addr)));
        }
    }
    Ok(map)
}

/// Parses `message_map.json` text: each value a dest id (number) or a handler script name
/// (string, see [`check_script_name`]).
pub fn parse_message_map(text: &str) -> Result<MessageMap, MapError> {
    const WHAT: &str = "message_map";
    let raw: Entries<Target> = serde_json::from_str(text).map_err(|e| MapError::Invalid {
        what: WHAT,
        message: format!("{e} (each value is a dest id or a handler script name)"),
    })?;
    let map = parse_keys(WHAT, raw)?;
    for (id, target) in &map {
        if let Target::Script(name) = target {
            check_script_name(name).map_err(|message| MapError::Invalid {
                what: WHAT,
                message: format!("message {id}: {message}"),
            })?;
        }
    }
    Ok(map)
}

/// The dest entries of a message map (what the router's `init` receives).
pub fn dest_routes(map: &MessageMap) -> impl Iterator<Item = (u32, u32)> + '_ {
    map.iter().filter_map(|(&msg, target)| match target {
        Target::Dest(dest) => Some((msg, *dest)),
        Target::Script(_) => None,
    })
}

/// The handler script entries of a message map: message id -> script name.
pub fn script_routes(map: &MessageMap) -> BTreeMap<u32, String> {
    map.iter()
        .filter_map(|(&msg, target)| match target {
            Target::Script(name) => Some((msg, name.clone())),
            Target::Dest(_) => None,
        })
        .collect()
}

/// Reads a map file.
pub fn read(path: &Path) -> Result<String, MapError> {
    std::fs::read_to_string(path)
        .map_err(|source| MapError::Read { path: path.display().to_string(), source })
}

/// The example maps of `examples/maps/`, used when the config names no files.
pub mod embedded {
    pub const DEST_MAP: &str = include_str!("../../examples/maps/dest_map.json");
    pub const MESSAGE_MAP: &str = include_str!("../../examples/maps/message_map.json");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_formats_parse() {
        let dest =
            parse_dest_map(r#"{"21": {"poolNums": 16, "srvAddr": "srv.test.lan:8505", "srvName": "proxy"}}"#)
                .unwrap();
        assert_eq!(dest[&21].pool_nums, 16);
        let msgs = parse_message_map(r#"{"1": 1, "100": 101, "102": 101, "110": "inventory"}"#).unwrap();
        assert_eq!(msgs.get(&102), Some(&Target::Dest(101)));
        assert_eq!(dest_routes(&msgs).count(), 3);
        assert_eq!(script_routes(&msgs).get(&110).map(String::as_str), Some("inventory"));
    }

    /// The fenced block after `<!-- doc-test: NAME -->` in docs/configuration.md.
    fn doc_example(name: &str) -> &'static str {
        doc_block(include_str!("../../docs/configuration.md"), name)
    }

    fn doc_block(doc: &'static str, name: &str) -> &'static str {
        let marker = format!("<!-- doc-test: {name} -->");
        let after = &doc[doc.find(&marker).expect("marker") + marker.len()..];
        let body = &after[after.find("```json\n").expect("json block") + "```json\n".len()..];
        &body[..body.find("```").expect("closing fence")]
    }

    #[test]
    fn the_docs_map_examples_parse_as_documented() {
        let dest = parse_dest_map(doc_example("dest_map.json")).unwrap();
        assert_eq!((dest[&101].pool_nums, dest[&300].pool_nums), (4, 16));
        assert_eq!(dest[&300].srv_name, "", "srvName is optional");
        let messages = parse_message_map(doc_example("message_map.json")).unwrap();
        assert_eq!(messages.get(&100), Some(&Target::Dest(101)));
        assert_eq!(messages.get(&110), Some(&Target::Script("inventory".into())));
    }

    #[test]
    fn thrift_dests_take_defaults_and_the_seed_s_count_times_size() {
        let dest = parse_dest_map(doc_example("dest_map.json thrift")).unwrap();
        let rpc = &dest[&400];
        assert_eq!((rpc.protocol, rpc.pool_nums), (DestProtocol::Thrift, 8), "count 2 x size 4");
        let settings = rpc.thrift.as_ref().unwrap();
        assert_eq!((settings.method.as_str(), settings.timeout_ms), ("call", 3_000));
        let defaults = dest[&401].thrift.as_ref().unwrap();
        assert_eq!(*defaults, ThriftSettings { sharding_id: ShardingId::User, ..ThriftSettings::default() });
        assert_eq!(dest[&401].pool_nums, 4);
        let migrating = include_str!("../../docs/migrating-from-fkserver.md");
        let seed_shaped = parse_dest_map(doc_block(migrating, "dest_map.json")).unwrap();
        assert_eq!((seed_shaped[&400].pool_nums, seed_shaped[&401].protocol), (8, DestProtocol::Thrift));
        for (bad, says) in [
            (r#"{"poolNums": 2, "count": 2, "size": 2, "srvAddr": "a:1"}"#, "either poolNums"),
            (r#"{"count": 2, "srvAddr": "a:1"}"#, "either poolNums"),
            (r#"{"count": 200, "size": 2, "srvAddr": "a:1"}"#, "1..=256"),
            (r#"{"poolNums": 1, "srvAddr": "a:1", "thrift": {}}"#, "need \"protocol\""),
            (
                r#"{"poolNums": 1, "srvAddr": "a:1", "protocol": "thrift", "thrift": {"timeoutMs": 0}}"#,
                "timeoutMs",
            ),
            (
                r#"{"poolNums": 1, "srvAddr": "a:1", "protocol": "thrift", "thrift": {"transport": "http"}}"#,
                "framed",
            ),
            (r#"{"poolNums": 1, "srvAddr": "a:1", "protocol": "grpc"}"#, "thrift"),
        ] {
            let e = parse_dest_map(&format!(r#"{{"1": {bad}}}"#)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn embedded_examples_are_valid() {
        parse_dest_map(embedded::DEST_MAP).unwrap();
        parse_message_map(embedded::MESSAGE_MAP).unwrap();
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_message_map(r#"{"abc": 1}"#).unwrap_err().to_string();
        assert!(e.contains("`abc`"), "{e}");
        let e = parse_message_map(r#"{"7": "Bad Name"}"#).unwrap_err().to_string();
        assert!(e.contains("message 7") && e.contains("Bad Name"), "{e}");
        let e = parse_message_map(r#"{"7": "router"}"#).unwrap_err().to_string();
        assert!(e.contains("built-in"), "{e}");
        let e = parse_message_map(r#"{"7": 1.5}"#).unwrap_err().to_string();
        assert!(e.contains("handler script name"), "{e}");
        let e = parse_dest_map(r#"{"1": {"poolNums": 0, "srvAddr": "a:1"}}"#).unwrap_err().to_string();
        assert!(e.contains("poolNums"), "{e}");
        for bad in ["nohost", "::::1:80", "[::1:80", "a:b:80", ":80", "[nothex]:80", "host:99999"] {
            let text = format!(r#"{{"1": {{"poolNums": 1, "srvAddr": "{bad}"}}}}"#);
            let e = parse_dest_map(&text).unwrap_err().to_string();
            assert!(e.contains("srvAddr"), "{bad}: {e}");
        }
        for good in ["[::1]:7201", "127.0.0.1:7201", "name.internal:8505"] {
            let text = format!(r#"{{"1": {{"poolNums": 1, "srvAddr": "{good}"}}}}"#);
            parse_dest_map(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let e = parse_dest_map(
            r#"{"1": {"poolNums": 1, "srvAddr": "a:1"}, "1": {"poolNums": 2, "srvAddr": "b:1"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("id 1 appears twice"), "{e}");
        let e = parse_message_map(r#"{"100": 101, " 100": 102}"#).unwrap_err().to_string();
        assert!(e.contains("id 100 appears twice"), "{e}");
        let e = parse_dest_map(r#"{"1": {"poolNums": 1, "srvAddr": "a:1", "bogus": 2}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
