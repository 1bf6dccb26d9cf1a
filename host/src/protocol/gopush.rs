//! go-push's JSON messages on WebSocket text frames, so go-push clients work
//! unchanged.
//!
//! Client -> gateway: `{"type": "PING"}`, `{"type": "JOIN", "data": {"room": "r"}}`,
//! `{"type": "LEAVE", "data": {"room": "r"}}`.
//!
//! Gateway -> client, by the message id of what is sent: heartbeat answers are
//! `{"type": "PONG", "data": {}}`; error frames `{"type": "ERROR", "data": {"code", "message"}}`;
//! join and leave answers `{"type": "JOIN"|"LEAVE", "data": <answer>}` (go-push sends none;
//! its clients ignore types they do not know); everything else, pushes included,
//! `{"type": "PUSH", "data": {"items": [<body>]}}` as go-push's merger does, one item per
//! frame. A body that is JSON is embedded as is, other UTF-8 as a JSON string, other bytes as
//! `{"data_b64": "..."}`.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A go-push request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Join { room: String },
    Leave { room: String },
}

/// The message ids whose answers get their own go-push type.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub heartbeat: u32,
    pub error: u32,
    pub join: u32,
    pub leave: u32,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RoomData {
    room: String,
}

/// Decodes a go-push request. Errors (a message for the client) when the text is not a go-push
/// message, the type is unknown, or JOIN/LEAVE lack `data.room`.
pub fn decode(text: &str) -> Result<Request, String> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let room = || -> Result<String, String> {
        let data = envelope.data.ok_or("JOIN and LEAVE need `data.room`")?;
        let data: RoomData = serde_json::from_str(data.get()).map_err(|e| format!("data: {e}"))?;
        Ok(data.room)
    };
    match envelope.kind {
        "PING" => Ok(Request::Ping),
        "JOIN" => Ok(Request::Join { room: room()? }),
        "LEAVE" => Ok(Request::Leave { room: room()? }),
        other => Err(format!("unknown go-push type `{other}`")),
    }
}

/// The body as a JSON value's text: JSON as is, other UTF-8 quoted, other bytes as base64.
fn json_value(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if serde_json::from_str::<&RawValue>(text).is_ok() => text.to_string(),
        Ok(text) => serde_json::Value::from(text).to_string(),
        Err(_) => serde_json::json!({ "data_b64": base64::engine::general_purpose::STANDARD.encode(body) })
            .to_string(),
    }
}

/// Encodes a packet for a go-push client (see the module docs).
pub fn encode(ids: &Ids, msg_id: u32, body: &[u8]) -> String {
    let kind = match msg_id {
        id if id == ids.heartbeat => return r#"{"type":"PONG","data":{}}"#.to_string(),
        id if id == ids.error => "ERROR",
        id if id == ids.join => "JOIN",
        id if id == ids.leave => "LEAVE",
        _ => return format!(r#"{{"type":"PUSH","data":{{"items":[{}]}}}}"#, json_value(body)),
    };
    let data = if body.is_empty() { "{}".to_string() } else { json_value(body) };
    format!(r#"{{"type":"{kind}","data":{data}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: Ids = Ids { heartbeat: 2, error: 4, join: 5, leave: 6 };

    #[test]
    fn go_push_requests_decode() {
        assert_eq!(decode(r#"{"type":"PING"}"#), Ok(Request::Ping));
        assert_eq!(decode(r#"{"type":"PING","data":{}}"#), Ok(Request::Ping));
        assert_eq!(
            decode(r#"{"type":"JOIN","data":{"room":"chrome-plugin"}}"#),
            Ok(Request::Join { room: "chrome-plugin".into() })
        );
        assert_eq!(
            decode(r#"{"type":"LEAVE","data":{"room":"r"}}"#),
            Ok(Request::Leave { room: "r".into() })
        );
        assert!(decode(r#"{"type":"JOIN"}"#).is_err());
        assert!(decode(r#"{"type":"DANCE"}"#).unwrap_err().contains("DANCE"));
        assert!(decode("[1]").is_err());
    }

    #[test]
    fn answers_and_pushes_encode_as_go_push_does() {
        assert_eq!(encode(&IDS, 2, b"{\"server_time_ms\":1}"), r#"{"type":"PONG","data":{}}"#);
        assert_eq!(encode(&IDS, 9, br#"{"a":1}"#), r#"{"type":"PUSH","data":{"items":[{"a":1}]}}"#);
        assert_eq!(encode(&IDS, 9, b"hi"), r#"{"type":"PUSH","data":{"items":["hi"]}}"#);
        assert_eq!(
            encode(&IDS, 4, br#"{"code":"x","message":"y"}"#),
            r#"{"type":"ERROR","data":{"code":"x","message":"y"}}"#
        );
        assert_eq!(encode(&IDS, 5, b""), r#"{"type":"JOIN","data":{}}"#);
        assert_eq!(encode(&IDS, 9, &[0xff]), r#"{"type":"PUSH","data":{"items":[{"data_b64":"/w=="}]}}"#);
    }
}
