//! `wasmgate replay`: a recording run offline against a candidate component — no gateway,
//! Redis or etcd. Each event's call is given to the candidate with the recorded host-call
//! results ([`super::TapeMode::Replay`]), and its answer compared with the recorded one, as a
//! shadow compares (docs/evidence.md "Replay").

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::Target;
use super::event::{Difference, Tape};
use super::record::{self, Header};
use super::shadow::shown;
use crate::metrics::Metrics;
use crate::script::deploy::version_id;
use crate::script::{Auth, Handler, Limits, Rooms, Router, ScriptSource};

/// Differing events a summary lists (the first ones).
const LISTED: usize = 20;

/// What a replay found.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub script: String,
    pub world: String,
    pub recorded_version: String,
    pub candidate_version: String,
    pub events: u64,
    pub same: u64,
    pub different: u64,
    /// Differing events by kind (every kind, 0 included).
    pub differences: BTreeMap<&'static str, u64>,
    /// The first differing events: `seq`, `kind`, the call, both answers (bodies shown as
    /// text, cut at 64 bytes; tokens by their length).
    pub listed: Vec<serde_json::Value>,
    pub seconds: f64,
    pub events_per_second: f64,
}

/// Replays the recording `text` against `bytes` with `config` (default: the recorded
/// version's), under `limits`. Errors: the file does not parse, or the candidate is refused
/// (the deploy pipeline's error, or `restore` of the recorded state).
pub async fn replay(
    text: &str,
    bytes: Vec<u8>,
    config: Option<String>,
    limits: Limits,
) -> Result<Summary, String> {
    let (header, entries) = record::parse(text)?;
    let config_json = config.unwrap_or_else(|| header.config.clone());
    let source = ScriptSource { name: header.script.clone(), bytes: bytes.into(), config_json };
    let candidate_version = version_id(&source.bytes, &source.config_json);
    let target = load(&header, &source, limits).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut summary = Summary {
        script: header.script.clone(),
        world: header.world.clone(),
        recorded_version: header.script_version.clone(),
        candidate_version,
        events: 0,
        same: 0,
        different: 0,
        differences: Difference::ALL.into_iter().map(|d| (d.name(), 0)).collect(),
        listed: Vec::new(),
        seconds: 0.0,
        events_per_second: 0.0,
    };
    for entry in &entries {
        let tape = Box::new(Tape::replay(entry.host.clone(), entry.at_ms));
        let (answer, tape) = target.run(&entry.call, tape).await;
        let calls = tape.map(|t| t.calls).unwrap_or_default();
        summary.events += 1;
        match Difference::of(&entry.answer, &answer, Some((&entry.host, &calls))) {
            None => summary.same += 1,
            Some(kind) => {
                summary.different += 1;
                *summary.differences.entry(kind.name()).or_default() += 1;
                if summary.listed.len() < LISTED {
                    summary.listed.push(serde_json::json!({
                        "seq": entry.seq,
                        "kind": kind.name(),
                        "function": entry.call.function(),
                        "call": shown(&entry.call, false),
                        "recorded": shown(&entry.answer, false),
                        "candidate": shown(&answer, false),
                    }));
                }
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_second = summary.events as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// The candidate as a [`Target`] of the recorded world, initialised as the recorded version
/// was (the router with the recorded `message_map`; a stateful handler restored from the
/// recorded snapshot).
async fn load(
    header: &Header,
    source: &ScriptSource,
    limits: Limits,
) -> Result<Arc<dyn Target>, crate::script::ScriptError> {
    let metrics = Metrics::new();
    Ok(match header.world.as_str() {
        "auth" => Arc::new(Auth::load(source, limits, &metrics).await?),
        "router" => {
            let map = header.message_map.clone().unwrap_or_default();
            Arc::new(Router::load(source, limits, &metrics, map).await?)
        }
        "rooms" => Arc::new(Rooms::load(source, limits, &metrics).await?),
        "handler" => {
            let handler = Handler::load(header.state.is_some(), source, limits, &metrics).await?;
            if let Some(state) = &header.state {
                handler.restore(state.clone()).await?;
            }
            Arc::new(handler)
        }
        other => {
            let message = format!("the recording's world `{other}` is none of auth, router, rooms, handler");
            return Err(crate::script::ScriptError::Load { script: header.script.clone(), message });
        }
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replayed {} events of `{}` ({} world): recorded version {}, candidate {}",
            self.events, self.script, self.world, self.recorded_version, self.candidate_version
        )?;
        writeln!(f, "same: {}", self.same)?;
        let kinds: Vec<String> = self.differences.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "different: {} ({})", self.different, kinds.join(", "))?;
        for listed in &self.listed {
            writeln!(f, "  {listed}")?;
        }
        writeln!(f, "speed: {:.0} events/s ({:.3} s)", self.events_per_second, self.seconds)
    }
}
