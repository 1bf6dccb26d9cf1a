//! Gateway metrics, exported on the admin port's `/metrics` as Prometheus text format 0.0.4
//! (the default; what `promtool check metrics` reads) or OpenMetrics 1.0 (when the scraper's
//! `Accept` asks for `application/openmetrics-text`, as Prometheus does).
//!
//! One [`Metrics`] per gateway (not a process-global recorder), so several gateways in one
//! process (the tests) keep separate counts. Names carry units and `_total` suffixes per
//! Prometheus conventions (prometheus-client appends `_total` to counters).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// `reason` label (session close reasons, see `CloseReason::name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// `code` + `blame` labels of error frames sent to clients (docs/protocol.md).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub code: &'static str,
    pub blame: &'static str,
}

/// `outcome` label of cluster bus messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// `target` label of pushes: `session`, `user`, `room`, `all`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: &'static str,
}

/// `from` label of script compiles: `memory_cache`, `disk_cache`, `compiler`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromLabel {
    pub from: &'static str,
}

/// `dest` label (dest id of `dest_map.json`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestLabel {
    pub dest: u32,
}

/// `dest` + `outcome` labels of upstream sends.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestOutcomeLabel {
    pub dest: u32,
    pub outcome: &'static str,
}

/// `script` + `version` + `outcome` labels (`ok`, `trap`, `deadline`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptOutcomeLabel {
    pub script: String,
    pub version: String,
    pub outcome: &'static str,
}

/// `script` + `version` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptVersionLabel {
    pub script: String,
    pub version: String,
}

/// Buckets of script call durations, seconds: 1 µs to 100 ms (a route call takes ~1 µs, an
/// HS256 authenticate ~10 µs; docs/benchmarks.md; the default epoch deadline is 100 ms).
const SCRIPT_CALL_BUCKETS: [f64; 12] =
    [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 0.025, 0.1];

/// The script call histograms' family type.
pub type ScriptCallHistograms = Family<ScriptVersionLabel, Histogram, fn() -> Histogram>;

/// A counter a script keeps through `host.counter-add`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptCounterLabel {
    pub script: String,
    pub name: String,
}

/// Every instrument of one gateway. Cloning shares the instruments.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Full name (`wasmgate_routed`) and type of every family, in registration order.
    families: Arc<Vec<(String, MetricType)>>,
    pub connections_total: Family<TransportLabel, Counter>,
    pub connections: Family<TransportLabel, Gauge>,
    pub messages_in: Family<TransportLabel, Counter>,
    pub messages_out: Family<TransportLabel, Counter>,
    pub sessions_closed: Family<ReasonLabel, Counter>,
    pub logins: Family<ReasonLabel, Counter>,
    pub client_errors: Family<ErrorLabel, Counter>,
    pub routed: Family<DestOutcomeLabel, Counter>,
    pub upstream_frames_in: Family<DestLabel, Counter>,
    pub upstream_connections_up: Family<DestLabel, Gauge>,
    pub upstream_connections_wanted: Family<DestLabel, Gauge>,
    pub undeliverable: Counter,
    pub script_drops: Counter,
    pub script_calls: Family<ScriptOutcomeLabel, Counter>,
    pub script_call_seconds: ScriptCallHistograms,
    pub script_counters: Family<ScriptCounterLabel, Counter>,
    pub script_output_bytes: Family<ScriptVersionLabel, Counter>,
    pub script_instance_memory: Family<ScriptVersionLabel, Gauge>,
    pub script_instances_max: Family<ScriptVersionLabel, Gauge>,
    pub upstream_queue_depth: Family<DestLabel, Gauge>,
    pub map_reloads: Family<ReasonLabel, Counter>,
    pub rooms: Gauge,
    pub room_members: Gauge,
    pub room_joins: Family<ReasonLabel, Counter>,
    pub fanout_delivered: Counter,
    pub fanout_undelivered: Counter,
    pub pushes: Family<TargetLabel, Counter>,
    pub script_compiles: Family<FromLabel, Counter>,
    /// Long script calls that had to wait for a long-call lane.
    pub script_lane_waits: Counter,
    /// Script calls judged long (a tick of CPU after their first 0-1 ms) that ran on a lane.
    pub script_long_calls: Counter,
    /// Long script calls that gave their place in their pool back (the pool may build an
    /// instance beside them while they run or wait for a lane).
    pub script_long_calls_released: Counter,
    pub script_deploys: Family<ReasonLabel, Counter>,
    pub cluster_messages: Family<OutcomeLabel, Counter>,
    pub cluster_nodes: Gauge,
    pub user_centre_notices: Family<OutcomeLabel, Counter>,
    pub limited: Family<LimitLabel, Counter>,
    pub upstream_bad_frames: Family<DestErrorLabel, Counter>,
    pub tls_handshakes: Family<OutcomeLabel, Counter>,
    pub tls_reloads: Family<OutcomeLabel, Counter>,
    pub shadow_events: Family<ShadowLabel, Counter>,
    pub shadow_differences: Family<ShadowKindLabel, Counter>,
}

/// A shadowed script and what became of one of its sampled events (docs/evidence.md).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabel {
    pub script: String,
    /// `offered`, `dropped` (queue full), `same` or `different`.
    pub result: &'static str,
}

/// A shadowed script and a kind of difference (`dest`, `kind`, `content`, `effects`,
/// `candidate_failed`, `reference_failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowKindLabel {
    pub script: String,
    pub kind: &'static str,
}

/// A dest and what was wrong with a frame from it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestErrorLabel {
    pub dest: u32,
    pub error: &'static str,
}

/// Which abuse limit refused something (docs/security.md).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// The `limit` label values of `wasmgate_limited_total`.
pub const LIMITS: [&str; 8] = [
    "conn_per_ip",
    "connect_rate",
    "login_per_ip",
    "login_per_user",
    "messages",
    "bytes",
    "room_list",
    "admin_connections",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every instrument.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("wasmgate");
        let mut families = Vec::new();
        let m = Self {
            registry: Arc::new(Registry::default()),
            families: Arc::default(),
            connections_total: Family::default(),
            connections: Family::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            sessions_closed: Family::default(),
            logins: Family::default(),
            client_errors: Family::default(),
            routed: Family::default(),
            upstream_frames_in: Family::default(),
            upstream_connections_up: Family::default(),
            upstream_connections_wanted: Family::default(),
            undeliverable: Counter::default(),
            script_drops: Counter::default(),
            script_calls: Family::default(),
            script_call_seconds: Family::new_with_constructor(|| Histogram::new(SCRIPT_CALL_BUCKETS)),
            script_counters: Family::default(),
            script_output_bytes: Family::default(),
            script_instance_memory: Family::default(),
            script_instances_max: Family::default(),
            upstream_queue_depth: Family::default(),
            map_reloads: Family::default(),
            rooms: Gauge::default(),
            room_members: Gauge::default(),
            room_joins: Family::default(),
            fanout_delivered: Counter::default(),
            fanout_undelivered: Counter::default(),
            pushes: Family::default(),
            script_compiles: Family::default(),
            script_lane_waits: Counter::default(),
            script_long_calls: Counter::default(),
            script_long_calls_released: Counter::default(),
            script_deploys: Family::default(),
            cluster_messages: Family::default(),
            cluster_nodes: Gauge::default(),
            user_centre_notices: Family::default(),
            limited: Family::default(),
            upstream_bad_frames: Family::default(),
            tls_handshakes: Family::default(),
            tls_reloads: Family::default(),
            shadow_events: Family::default(),
            shadow_differences: Family::default(),
        };
        register(
            &mut r,
            &mut families,
            "connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        register(&mut r, &mut families, "sessions", "Client sessions currently open", m.connections.clone());
        register(
            &mut r,
            &mut families,
            "messages_received",
            "Client packets received",
            m.messages_in.clone(),
        );
        register(&mut r, &mut families, "messages_sent", "Packets queued to clients", m.messages_out.clone());
        register(
            &mut r,
            &mut families,
            "sessions_closed",
            "Sessions closed, by reason",
            m.sessions_closed.clone(),
        );
        register(&mut r, &mut families, "logins", "Login attempts, by result", m.logins.clone());
        register(
            &mut r,
            &mut families,
            "client_errors",
            "Error frames sent to clients, by code and by who is to blame (client, script, upstream, gateway)",
            m.client_errors.clone(),
        );
        for code in crate::session::ErrorCode::ALL {
            let _ =
                m.client_errors.get_or_create(&ErrorLabel { code: code.name(), blame: code.blame().name() });
        }
        register(
            &mut r,
            &mut families,
            "routed",
            "Client packets sent upstream, by dest and outcome",
            m.routed.clone(),
        );
        register(
            &mut r,
            &mut families,
            "upstream_frames_received",
            "Frames from backends",
            m.upstream_frames_in.clone(),
        );
        register(
            &mut r,
            &mut families,
            "upstream_connections_up",
            "Queue-pool connections currently connected",
            m.upstream_connections_up.clone(),
        );
        register(
            &mut r,
            &mut families,
            "upstream_connections_configured",
            "Queue-pool connections configured (poolNums)",
            m.upstream_connections_wanted.clone(),
        );
        register(
            &mut r,
            &mut families,
            "undeliverable",
            "Backend frames for sessions or users not on this node",
            m.undeliverable.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_dropped",
            "Client packets the router script chose to drop",
            m.script_drops.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_calls",
            "Script calls, by script and outcome",
            m.script_calls.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_call_duration_seconds",
            "Script call durations (instance checkout to return), by script and version",
            m.script_call_seconds.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_instance_memory_bytes",
            "Linear memory of one instance of the script version after init",
            m.script_instance_memory.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_instances_max",
            "Most live instances of the script version (scripts.instances, capped by instance memory)",
            m.script_instances_max.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_output_bytes",
            "Bytes scripts wrote to stdout and stderr (discarded; logged at debug)",
            m.script_output_bytes.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_events",
            "Counters kept by scripts (host.counter-add)",
            m.script_counters.clone(),
        );
        register(
            &mut r,
            &mut families,
            "upstream_queue_depth",
            "Frames queued to a dest's queue-pool connections, not yet written",
            m.upstream_queue_depth.clone(),
        );
        register(
            &mut r,
            &mut families,
            "map_reloads",
            "dest_map/message_map reloads, by result",
            m.map_reloads.clone(),
        );
        register(&mut r, &mut families, "rooms", "Rooms currently open on this node", m.rooms.clone());
        register(
            &mut r,
            &mut families,
            "room_members",
            "Room memberships (a session in 3 rooms counts 3)",
            m.room_members.clone(),
        );
        register(&mut r, &mut families, "room_joins", "Room joins, by result", m.room_joins.clone());
        register(
            &mut r,
            &mut families,
            "fanout_delivered",
            "Room and push-to-all packets queued to sessions",
            m.fanout_delivered.clone(),
        );
        register(
            &mut r,
            &mut families,
            "fanout_undelivered",
            "Fan-out packets not queued: the member was closing or its queue was full (closed as a slow consumer)",
            m.fanout_undelivered.clone(),
        );
        register(
            &mut r,
            &mut families,
            "pushes",
            "Pushes received (HTTP API and backends), by target",
            m.pushes.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_compiles",
            "Script components loaded, by where the compiled code came from",
            m.script_compiles.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_lane_waits",
            "Long script calls (a tick of CPU after their first 0-1 ms) that waited for a long-call lane (scripts.long_calls)",
            m.script_lane_waits.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_long_calls",
            "Script calls judged long (a tick of CPU after their first 0-1 ms) that ran on a long-call lane (scripts.long_calls)",
            m.script_long_calls.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_long_calls_released",
            "Long script calls that gave their place in their script's pool back, so that the pool may build an instance for other calls beside them (at most scripts.instances per script at once)",
            m.script_long_calls_released.clone(),
        );
        register(
            &mut r,
            &mut families,
            "script_deploys",
            "Script deploys, by result (ok, rejected)",
            m.script_deploys.clone(),
        );
        register(
            &mut r,
            &mut families,
            "cluster_messages",
            "Cross-node bus messages: published, received, dropped (queue full), failed (Redis error), expired (older than cluster.bus_max_age_ms on receipt, not delivered)",
            m.cluster_messages.clone(),
        );
        register(
            &mut r,
            &mut families,
            "cluster_nodes",
            "Nodes in the discovery table (this one included)",
            m.cluster_nodes.clone(),
        );
        register(
            &mut r,
            &mut families,
            "user_centre_notices",
            "Login/logout notices to the user centre: ok, failed (retries spent), dropped (queue full)",
            m.user_centre_notices.clone(),
        );
        register(
            &mut r,
            &mut families,
            "upstream_bad_frames",
            "Frames from backends skipped as malformed (unknown_kind, truncated, not_utf8, gateway_to_backend_kind) or applied with a fault (kick_reason_not_utf8)",
            m.upstream_bad_frames.clone(),
        );
        register(
            &mut r,
            &mut families,
            "limited",
            "Connections, logins and messages refused by an abuse limit, by limit (docs/security.md)",
            m.limited.clone(),
        );
        register(
            &mut r,
            &mut families,
            "tls_handshakes",
            "TLS handshakes on the client and admin listeners: ok, failed (bad or no client hello, timeout)",
            m.tls_handshakes.clone(),
        );
        register(
            &mut r,
            &mut families,
            "tls_reloads",
            "Certificate reloads: ok, failed (the previous certificate stays in use)",
            m.tls_reloads.clone(),
        );
        register(
            &mut r,
            &mut families,
            "shadow_events",
            "Live events of a shadowed script, by what became of them: offered to the candidate, dropped (its queue was full), then compared: same or different",
            m.shadow_events.clone(),
        );
        register(
            &mut r,
            &mut families,
            "shadow_differences",
            "Shadow comparisons that differed, by kind: dest, kind, content, effects, candidate_failed, reference_failed",
            m.shadow_differences.clone(),
        );
        let m = Self { registry: Arc::new(r), families: Arc::new(families), ..m };
        m.precreate();
        m
    }

    /// Creates every known label value of the labelled families at zero, so dashboards and
    /// alerts see `0` before the first event rather than no series. Per-dest, per-script and
    /// close-reason series are created where those are known (pool start, script load,
    /// gateway start).
    fn precreate(&self) {
        for limit in LIMITS {
            let _ = self.limited.get_or_create(&LimitLabel { limit });
        }
        for outcome in ["ok", "failed"] {
            let _ = self.tls_handshakes.get_or_create(&OutcomeLabel { outcome });
            let _ = self.tls_reloads.get_or_create(&OutcomeLabel { outcome });
        }
        for transport in TRANSPORTS {
            for family in [&self.connections_total, &self.messages_in, &self.messages_out] {
                let _ = family.get_or_create(&TransportLabel { transport });
            }
            let _ = self.connections.get_or_create(&TransportLabel { transport });
        }
        let reasons: [(&Family<ReasonLabel, Counter>, &[&'static str]); 4] = [
            (
                &self.logins,
                &["ok", "rejected", "duplicate", "duplicate_refused", "script_error", "rate_limited"],
            ),
            (&self.map_reloads, &["ok", "invalid"]),
            (&self.script_deploys, &["ok", "unchanged", "rejected"]),
            (
                &self.room_joins,
                &[
                    "ok",
                    "already_member",
                    "room_full",
                    "too_many_rooms",
                    "forbidden",
                    "bad_request",
                    "script_error",
                ],
            ),
        ];
        for (family, values) in reasons {
            for &reason in values {
                let _ = family.get_or_create(&ReasonLabel { reason });
            }
        }
        for target in ["session", "user", "room", "all"] {
            let _ = self.pushes.get_or_create(&TargetLabel { target });
        }
        for from in ["compiler", "disk_cache", "memory_cache"] {
            let _ = self.script_compiles.get_or_create(&FromLabel { from });
        }
        for outcome in ["published", "failed", "dropped", "received", "expired"] {
            let _ = self.cluster_messages.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in ["ok", "failed", "dropped"] {
            let _ = self.user_centre_notices.get_or_create(&OutcomeLabel { outcome });
        }
    }

    /// OpenMetrics 1.0 text of every instrument (content type [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Prometheus text format 0.0.4 of every instrument (content type
    /// [`PROMETHEUS_CONTENT_TYPE`]): the OpenMetrics text with the three differences that
    /// matter to classic parsers (promtool, older scrapers) undone — a counter's `# HELP` and
    /// `# TYPE` name its samples' full name (`x_total`, where OpenMetrics names the family `x`),
    /// and there are no `# UNIT` or `# EOF` lines.
    pub fn render(&self) -> String {
        to_prometheus_text(&self.render_openmetrics())
    }

    /// Full name (`wasmgate_routed`, without a counter's `_total`) and type of every family,
    /// including those without a sample yet (which the text encodings leave out).
    pub fn families(&self) -> &[(String, MetricType)] {
        &self.families
    }

    /// Counts an error frame with `code` sent to a client.
    pub fn client_error(&self, code: crate::session::ErrorCode) {
        self.client_errors.get_or_create(&ErrorLabel { code: code.name(), blame: code.blame().name() }).inc();
    }

    /// Counts one refusal by the abuse limit `limit` (one of [`LIMITS`]).
    pub fn limited(&self, limit: &'static str) {
        self.limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// The counter of one transport, cached by callers on the hot path.
    pub fn transport_counter(
        family: &Family<TransportLabel, Counter>,
        transport: &'static str,
    ) -> Counter<u64, AtomicU64> {
        family.get_or_create(&TransportLabel { transport }).clone()
    }
}

/// The `transport` label values.
pub const TRANSPORTS: [&str; 2] = ["websocket", "tcp"];

/// Registers `metric` as `wasmgate_<name>` and notes its name and type in `families`.
fn register<M>(r: &mut Registry, families: &mut Vec<(String, MetricType)>, name: &str, help: &str, metric: M)
where
    M: prometheus_client::registry::Metric + TypedMetric,
{
    families.push((format!("wasmgate_{name}"), M::TYPE));
    r.register(name, help, metric);
}

/// Content type of [`Metrics::render`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`Metrics::render_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// See [`Metrics::render`]. OpenMetrics 1.0 section "Counter": the family `x` has the sample
/// `x_total`; Prometheus text 0.0.4 names the family by the sample.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, rest))) if counters.contains(name) => {
                out.push_str(&format!("{p}{name}_total {rest}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
