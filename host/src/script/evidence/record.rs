//! Recordings of a live script (docs/evidence.md "Recording file"): JSON Lines, a [`Header`]
//! first, then one [`Entry`] per event in the order the events ended. Bounded in events and
//! bytes; events past a bound are counted, not kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::event::{Answer, Call, HostCall};
use crate::script::bindings::MessageRoute;

/// The `format` of every recording's header.
pub const FORMAT: &str = "wasmgate-recording";
/// The version of the file format this build writes and reads.
pub const VERSION: u32 = 1;

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The first line of a recording.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written; a reader refuses other versions.
    pub version: u32,
    /// The script recorded (`auth`, `router`, `rooms` or a handler script's name).
    pub script: String,
    /// Its world: `auth`, `router`, `rooms` or `handler`.
    pub world: String,
    /// The live version id when the recording started.
    pub script_version: String,
    /// The live version's JSON config (a replay's default).
    pub config: String,
    /// The router's `message_map` when the recording started (`init`'s argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_map: Option<Vec<MessageRoute>>,
    /// A stateful handler's `snapshot` when the recording started (a replay `restore`s it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<u8>>,
    /// The node recorded on.
    pub node_id: u32,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    /// Events in the file.
    pub events: u64,
    /// Events seen after a bound was reached, not in the file.
    pub dropped: u64,
    /// Why it ended: `seconds`, `events` or `bytes` (a bound), or `stopped`.
    pub ended_by: String,
}

/// One recorded event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// 0, 1, 2... in file order.
    pub seq: u64,
    /// When the call ended, ms since the Unix epoch.
    pub at_ms: u64,
    pub call: Call,
    pub answer: Answer,
    /// The host calls the script made, in order, with what they returned.
    #[serde(default)]
    pub host: Vec<HostCall>,
}

/// Bounds of one recording.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_events: u64,
    pub max_bytes: usize,
}

struct Lines {
    text: Vec<u8>,
    events: u64,
    dropped: u64,
    ended_by: Option<&'static str>,
}

/// A recording under way: events are appended as they end until a bound is reached.
pub struct Recording {
    header: Header,
    bounds: Bounds,
    lines: Mutex<Lines>,
    full: AtomicBool,
    /// Woken when a bound is reached.
    pub filled: tokio::sync::Notify,
}

impl Recording {
    /// A recording of `header`'s script (its counts and end are filled in by
    /// [`Self::finish`]).
    pub fn new(header: Header, bounds: Bounds) -> Self {
        let lines = Lines { text: Vec::new(), events: 0, dropped: 0, ended_by: None };
        Self {
            header,
            bounds,
            lines: Mutex::new(lines),
            full: AtomicBool::new(false),
            filled: Default::default(),
        }
    }

    /// Whether events are still kept (no bound reached).
    pub fn open(&self) -> bool {
        !self.full.load(Ordering::Relaxed)
    }

    /// Appends one event, or counts it as dropped once a bound is reached. The event is
    /// serialised before the lock is taken; only its `seq` is written under it.
    pub fn push(&self, at_ms: u64, call: &Call, answer: &Answer, host: &[HostCall]) {
        let entry = EntryRef { at_ms, call, answer, host };
        // `{"at_ms":...}` becomes `{"seq":N,"at_ms":...}` once N is known.
        let Ok(rest) = serde_json::to_vec(&entry) else { return };
        let mut lines = self.lines.lock();
        if lines.ended_by.is_some() {
            lines.dropped += 1;
            return;
        }
        let seq = format!("{{\"seq\":{},", lines.events);
        let size = seq.len() + rest.len(); // `rest` less its `{`, plus the newline
        if lines.text.len() + size > self.bounds.max_bytes {
            lines.dropped += 1;
            self.end(&mut lines, "bytes");
            return;
        }
        lines.text.extend_from_slice(seq.as_bytes());
        lines.text.extend_from_slice(&rest[1..]);
        lines.text.push(b'\n');
        lines.events += 1;
        if lines.events >= self.bounds.max_events {
            self.end(&mut lines, "events");
        }
    }

    fn end(&self, lines: &mut Lines, why: &'static str) {
        lines.ended_by = Some(why);
        self.full.store(true, Ordering::Relaxed);
        self.filled.notify_one();
    }

    /// The file: the header (with counts, end time and `ended_by`, unless a bound ended it
    /// first) and the events.
    pub fn finish(&self, ended_by: &str) -> Vec<u8> {
        let lines = self.lines.lock();
        let header = Header {
            ended_at_ms: unix_ms(),
            events: lines.events,
            dropped: lines.dropped,
            ended_by: lines.ended_by.unwrap_or(ended_by).to_string(),
            ..self.header.clone()
        };
        let mut file = serde_json::to_vec(&header).unwrap_or_default();
        file.push(b'\n');
        file.extend_from_slice(&lines.text);
        file
    }
}

/// [`Entry`] by reference and without its `seq`, for writing.
#[derive(Serialize)]
struct EntryRef<'a> {
    at_ms: u64,
    call: &'a Call,
    answer: &'a Answer,
    host: &'a [HostCall],
}

/// Reads a recording. Errors: not a recording, another version, or a line that does not
/// parse (the message names the line).
pub fn parse(text: &str) -> Result<(Header, Vec<Entry>), String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or("the file is empty")?;
    let header: Header =
        serde_json::from_str(first).map_err(|e| format!("line 1 is not a recording header: {e}"))?;
    if header.format != FORMAT {
        return Err(format!("line 1: format is `{}`, not `{FORMAT}`", header.format));
    }
    if header.version != VERSION {
        return Err(format!("recording version {} (this build reads version {VERSION})", header.version));
    }
    let entries = lines
        .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect::<Result<Vec<Entry>, _>>()?;
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::bindings::{Decision, Packet, Session, Transport};
    use crate::script::evidence::{HostFn, HostResult};

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            script: "router".into(),
            world: "router".into(),
            script_version: "v".into(),
            config: "{}".into(),
            message_map: Some(vec![MessageRoute { msg_id: 1, dest_id: 2 }]),
            state: None,
            node_id: 1,
            started_at_ms: 0,
            ended_at_ms: 0,
            events: 0,
            dropped: 0,
            ended_by: String::new(),
        }
    }

    fn call(n: u32) -> Call {
        let session =
            Session { id: 1, node_id: 1, transport: Transport::Tcp, peer_addr: "a".into(), user_id: None };
        Call::Route { session, packet: Packet { msg_id: n, seq: n, body: vec![1, 2] }, es_id: None }
    }

    #[test]
    fn round_trips_and_stops_at_its_bounds() {
        let recording = Recording::new(header(), Bounds { max_events: 2, max_bytes: 1 << 20 });
        let host = [HostCall { call: HostFn::NowMs, result: HostResult::Number(5) }];
        for n in 0..3 {
            assert_eq!(recording.open(), n < 2);
            recording.push(10, &call(n), &Answer::Route(Decision::Forward(2)), &host);
        }
        assert!(!recording.open());
        let file = String::from_utf8(recording.finish("seconds")).unwrap_or_default();
        let (header, entries) = parse(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((header.events, header.dropped, header.ended_by.as_str()), (2, 1, "events"));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].seq, 1);
        assert_eq!(entries[1].call, call(1));
        assert_eq!(entries[1].host, host);
    }

    #[test]
    fn refuses_other_versions_and_names_bad_lines() {
        let mut h = header();
        h.version = 2;
        let text = serde_json::to_string(&h).unwrap_or_default();
        assert!(parse(&text).unwrap_err().contains("version 2"));
        let text = format!("{}\n{{\"seq\":0}}\n", serde_json::to_string(&header()).unwrap_or_default());
        assert!(parse(&text).unwrap_err().starts_with("line 2"));
    }
}
