//! Shadow runs (docs/evidence.md "Shadow deploy"): a candidate version of a script given a
//! sample of the live version's events after the live decision was applied, on its own
//! instances, off the sessions' path. Events wait in a bounded queue for one worker task;
//! what does not fit is dropped and counted. The candidate's host calls with effects are
//! noted, not performed ([`super::TapeMode::Shadow`]); its decisions are compared with the
//! live ones and never applied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::Target;
use super::event::{Answer, Call, Difference, HostCall, Tape, TapeMode};
use crate::metrics::{Metrics, ShadowKindLabel, ShadowLabel};
use crate::script::ScriptSource;

/// How a shadow samples and reports.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Share of live events given to the candidate, 0 < fraction <= 1.
    pub fraction: f64,
    /// Events waiting for the candidate at most; more are dropped (counted).
    pub queue: usize,
    /// Differing events kept for the report (the latest).
    pub keep: usize,
    /// Replace bodies by their length in the report.
    pub redact: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self { fraction: 1.0, queue: 4096, keep: 50, redact: false }
    }
}

/// Bytes of a body shown in a report.
const SHOWN_BODY: usize = 64;

/// Most bytes of events (their bodies and strings, roughly) waiting for the candidate; an
/// event beyond is dropped like one that finds the queue full.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

struct Event {
    at_ms: u64,
    call: Call,
    live: Answer,
    /// [`Call::weight`] + [`Answer::weight`], counted in [`Stats::queued_bytes`].
    weight: usize,
}

/// Event counts; each also feeds its `wasmgate_shadow_events_total` counter.
#[derive(Default)]
struct Counts {
    /// Live events given to the candidate (queued).
    offered: AtomicU64,
    /// Sampled events that found the queue full.
    dropped: AtomicU64,
    same: AtomicU64,
    different: AtomicU64,
}

/// The instruments of one shadow, created once (no label lookup per event).
struct Instruments {
    offered: Counter,
    dropped: Counter,
    same: Counter,
    different: Counter,
    by_kind: BTreeMap<Difference, Counter>,
}

impl Instruments {
    fn new(metrics: &Metrics, script: &str) -> Self {
        let event = |result| {
            metrics.shadow_events.get_or_create(&ShadowLabel { script: script.into(), result }).clone()
        };
        let kind = |d: Difference| {
            let label = ShadowKindLabel { script: script.into(), kind: d.name() };
            (d, metrics.shadow_differences.get_or_create(&label).clone())
        };
        Self {
            offered: event("offered"),
            dropped: event("dropped"),
            same: event("same"),
            different: event("different"),
            by_kind: Difference::ALL.into_iter().map(kind).collect(),
        }
    }
}

struct Stats {
    script: String,
    settings: Settings,
    instruments: Instruments,
    counts: Counts,
    /// Bytes of the events queued now (see [`MAX_QUEUED_BYTES`]).
    queued_bytes: AtomicU64,
    /// Differences by kind, and the latest differing events as reported.
    differences: Mutex<(BTreeMap<Difference, u64>, VecDeque<Value>)>,
}

/// A candidate running in the shadow of a live script.
pub struct Shadow {
    /// The candidate's source, under the script's own name (what `promote` deploys).
    pub source: ScriptSource,
    /// The candidate's version id.
    pub version: String,
    pub started_at_ms: u64,
    pub candidate: Arc<dyn Target>,
    sampled: AtomicU64,
    queue: mpsc::Sender<Event>,
    stats: Arc<Stats>,
}

impl Shadow {
    /// Starts the worker that runs `candidate` on the events [`Self::offer`] queues; it ends
    /// when the shadow is dropped.
    pub fn start(
        source: ScriptSource,
        version: String,
        candidate: Arc<dyn Target>,
        settings: Settings,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let (queue, mut events) = mpsc::channel::<Event>(settings.queue.max(1));
        let stats = Arc::new(Stats {
            script: source.name.clone(),
            settings,
            instruments: Instruments::new(metrics, &source.name),
            counts: Counts::default(),
            queued_bytes: AtomicU64::new(0),
            differences: Mutex::default(),
        });
        let (worker_stats, worker_candidate) = (stats.clone(), candidate.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                worker_stats.queued_bytes.fetch_sub(event.weight as u64, Ordering::Relaxed);
                let tape = Box::new(Tape::new(TapeMode::Shadow));
                let (answer, tape) = worker_candidate.run(&event.call, tape).await;
                let calls = tape.map(|t| t.calls).unwrap_or_default();
                worker_stats.compare(event, answer, calls);
            }
        });
        Arc::new(Self {
            source,
            version,
            started_at_ms: super::record::unix_ms(),
            candidate,
            sampled: AtomicU64::new(0),
            queue,
            stats,
        })
    }

    /// Whether the next live event is one of the sampled share.
    pub fn sample(&self) -> bool {
        let f = self.stats.settings.fraction;
        if f >= 1.0 {
            return true;
        }
        let n = self.sampled.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * f).floor() > (n * f).floor()
    }

    /// Queues a live event and its live answer for the candidate; a full queue (in events or
    /// in [`MAX_QUEUED_BYTES`]) drops it (counted).
    pub fn offer(&self, at_ms: u64, call: Call, live: Answer) {
        let (counts, instruments) = (&self.stats.counts, &self.stats.instruments);
        let weight = call.weight() + live.weight();
        let queued = &self.stats.queued_bytes;
        let fits =
            queued.fetch_add(weight as u64, Ordering::Relaxed) + weight as u64 <= MAX_QUEUED_BYTES as u64;
        let sent = match fits {
            true => self.queue.try_send(Event { at_ms, call, live, weight }).is_ok(),
            false => false,
        };
        if !sent {
            queued.fetch_sub(weight as u64, Ordering::Relaxed);
        }
        match sent {
            true => {
                counts.offered.fetch_add(1, Ordering::Relaxed);
                instruments.offered.inc();
            }
            false => {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                instruments.dropped.inc();
            }
        }
    }

    /// The report `GET /scripts/{name}/shadow` answers (docs/evidence.md).
    pub fn report(&self, live_version: &str) -> Value {
        let stats = &self.stats;
        // Under the lock: the differences listed and counted agree with `different`.
        let differences = stats.differences.lock();
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let c = &stats.counts;
        let (same, different) = (load(&c.same), load(&c.different));
        let offered = load(&c.offered);
        let by_kind: BTreeMap<&str, u64> = Difference::ALL
            .into_iter()
            .map(|d| (d.name(), differences.0.get(&d).copied().unwrap_or(0)))
            .collect();
        serde_json::json!({
            "script": stats.script,
            "live_version": live_version,
            "candidate_version": self.version,
            "started_at_ms": self.started_at_ms,
            "fraction": stats.settings.fraction,
            "queue": stats.settings.queue,
            "pending": offered.saturating_sub(same + different),
            "events": {
                "offered": offered,
                "compared": same + different,
                "same": same,
                "different": different,
                "dropped": load(&c.dropped),
            },
            "differences": by_kind,
            "recent": differences.1,
        })
    }
}

impl Stats {
    fn compare(&self, event: Event, candidate: Answer, calls: Vec<HostCall>) {
        let Some(kind) = Difference::of(&event.live, &candidate, None) else {
            self.instruments.same.inc();
            self.counts.same.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.instruments.different.inc();
        if let Some(counter) = self.instruments.by_kind.get(&kind) {
            counter.inc();
        }
        let redact = self.settings.redact;
        let shown = serde_json::json!({
            "at_ms": event.at_ms,
            "kind": kind.name(),
            "function": event.call.function(),
            "call": shown(&event.call, redact),
            "live": shown(&event.live, redact),
            "candidate": shown(&candidate, redact),
            "candidate_host_calls": shown(&calls, redact),
        });
        let mut differences = self.differences.lock();
        *differences.0.entry(kind).or_default() += 1;
        if self.settings.keep > 0 {
            if differences.1.len() >= self.settings.keep {
                differences.1.pop_front();
            }
            differences.1.push_back(shown);
        }
        // Counted last, under the lock: a report that sees it compared sees it listed.
        self.counts.different.fetch_add(1, Ordering::Relaxed);
    }
}

/// `value` as a report shows it: every `body` as text (or `base64:...`) cut at 64 bytes, or
/// with `redact` only its length; every login `token` by its length.
pub fn shown(value: &impl Serialize, redact: bool) -> Value {
    let mut value = serde_json::to_value(value).unwrap_or(Value::Null);
    shrink(&mut value, redact);
    value
}

fn shrink(value: &mut Value, redact: bool) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match (key.as_str(), &*field) {
                    ("body" | "state", Value::Array(bytes)) => {
                        *field = Value::String(body_text(bytes, redact))
                    }
                    ("token", Value::String(token)) => {
                        *field = Value::String(format!("<{} bytes>", token.len()))
                    }
                    _ => shrink(field, redact),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| shrink(v, redact)),
        _ => {}
    }
}

fn body_text(bytes: &[Value], redact: bool) -> String {
    if redact {
        return format!("<{} bytes>", bytes.len());
    }
    let raw: Vec<u8> = bytes.iter().take(SHOWN_BODY).filter_map(|b| b.as_u64()).map(|b| b as u8).collect();
    let more = if bytes.len() > SHOWN_BODY { format!("...({} bytes)", bytes.len()) } else { String::new() };
    match std::str::from_utf8(&raw) {
        Ok(text) if !text.starts_with("base64:") => format!("{text}{more}"),
        _ => format!("base64:{}{more}", base64::engine::general_purpose::STANDARD.encode(&raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::bindings::{Decision, Packet, Session, Transport};

    /// A candidate that never answers: everything offered stays queued.
    struct Stuck;

    impl Target for Stuck {
        fn run<'a>(&'a self, _call: &'a Call, _tape: Box<Tape>) -> super::super::TargetFuture<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_drops_what_does_not_fit() {
        let source =
            ScriptSource { name: "router".into(), bytes: Arc::from(Vec::new()), config_json: "{}".into() };
        let settings = Settings { queue: 1000, ..Settings::default() };
        let shadow = Shadow::start(source, "v".into(), Arc::new(Stuck), settings, &Metrics::new());
        let session =
            Session { id: 1, node_id: 1, transport: Transport::Tcp, peer_addr: String::new(), user_id: None };
        let body = vec![0u8; 1 << 20];
        for seq in 0..100 {
            let packet = Packet { msg_id: 1, seq, body: body.clone() };
            let call = Call::Route { session: session.clone(), packet, es_id: None };
            shadow.offer(0, call, Answer::Route(Decision::Drop));
        }
        let report = shadow.report("live");
        let fits = (MAX_QUEUED_BYTES / ((1 << 20) + 256)) as u64;
        assert_eq!(report["events"]["offered"], fits, "{report}");
        assert_eq!(report["events"]["dropped"], 100 - fits);
    }

    #[test]
    fn reports_show_bodies_as_text_and_hide_tokens() {
        let value = serde_json::json!({"body": [104, 105], "x": [{"body": [255]}], "token": "secret"});
        let mut shrunk = value.clone();
        shrink(&mut shrunk, false);
        assert_eq!(
            shrunk,
            serde_json::json!({"body": "hi", "x": [{"body": "base64:/w=="}], "token": "<6 bytes>"})
        );
        let long = serde_json::json!({"body": vec![97; 100]});
        assert_eq!(shown(&long, false)["body"], format!("{}...(100 bytes)", "a".repeat(64)));
        assert_eq!(shown(&value, true)["body"], "<2 bytes>");
    }
}
