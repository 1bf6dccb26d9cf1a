//! Logs and traces: `RUST_LOG`-filtered logs on stderr (text or JSON lines), and, when asked
//! for, the gateway's spans exported over OTLP/gRPC to an OpenTelemetry collector.
//!
//! Spans (docs/operations.md lists them with their attributes) are at `debug` level under the
//! `wasmgate` target: the log filter (default `info`) does not enable them, so with export
//! off a span site costs one cached interest check. With export on, the exporter's own filter
//! enables them whatever `RUST_LOG` says, sampling follows `OTEL_TRACES_SAMPLER` or
//! `telemetry.sample_ratio`, and a batch processor sends them off the hot path. The gateway's
//! metrics then go to the same collector ([`crate::otlp_metrics`]).

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};
use tracing_throttle::{Policy, TracingRateLimitLayer};

use crate::config::TelemetryConfig;
use crate::metrics::Metrics;

/// `log`'s level filter letting through what a `tracing` filter whose most verbose level is
/// `hint` can pass (all of it when the filter gives no hint).
fn log_level(hint: Option<LevelFilter>) -> log::LevelFilter {
    match hint.map(LevelFilter::into_level) {
        None => log::LevelFilter::Trace,
        Some(None) => log::LevelFilter::Off,
        Some(Some(tracing::Level::ERROR)) => log::LevelFilter::Error,
        Some(Some(tracing::Level::WARN)) => log::LevelFilter::Warn,
        Some(Some(tracing::Level::INFO)) => log::LevelFilter::Info,
        Some(Some(tracing::Level::DEBUG)) => log::LevelFilter::Debug,
        Some(Some(_)) => log::LevelFilter::Trace,
    }
}

/// Keeps the trace and metric exporters; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
    endpoint: Option<String>,
    resource: Resource,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl Telemetry {
    /// Installs the global subscriber: logs on stderr filtered by `RUST_LOG` (default `info`),
    /// plus, when `export`, span export if `config` or the environment names an OTLP endpoint.
    ///
    /// Errors: `OTEL_EXPORTER_OTLP_PROTOCOL` (or its `_TRACES_` form) names a protocol other
    /// than `grpc` (only gRPC is built in), the exporter cannot be built (bad endpoint URL), or
    /// a global subscriber is already installed. Must run inside a tokio runtime (the gRPC
    /// channel lives on it).
    pub fn init(format: LogFormat, config: &TelemetryConfig, export: bool) -> anyhow::Result<Self> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let most_verbose = filter.max_level_hint();
        // Logs go to stderr (journald keeps it); stdout is for the CLI commands' answers.
        // Colour only on a terminal: escape codes in journald or a log file are noise.
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(terminal);
        let logs = match format {
            LogFormat::Text => logs.boxed(),
            LogFormat::Json => logs.json().boxed(),
        };
        let resource = resource();
        let provider = match export && wanted(config) {
            true => Some(provider(config, resource.clone())?),
            false => None,
        };
        let spans = provider.as_ref().map(|provider| {
            let only_ours = Targets::new().with_target("wasmgate", LevelFilter::DEBUG);
            tracing_opentelemetry::layer().with_tracer(provider.tracer("wasmgate")).with_filter(only_ours)
        });
        let subscriber = Registry::default().with(logs.with_filter(filter.and(throttle()?)));
        // Not `.with(spans)` with `spans` an `Option`: tracing-subscriber's `None` layer
        // declares interest in every callsite, so every debug span (each session's, each
        // message's) would be built and kept in the span registry with nothing reading it:
        // ~120 bytes of every idle session (docs/benchmarks.md, "Spans only when exported").
        let installed = match spans {
            Some(spans) => subscriber.with(spans).try_init(),
            None => subscriber.try_init(),
        };
        installed.context("installing the log subscriber")?;
        // `try_init` also bridges the `log` crate (tungstenite, hyper and others log through
        // it) and opens `log`'s own level check to every level, so each of their trace records
        // was built and dispatched into the subscriber only to be refused there: ~2 % of the
        // gateway's CPU in the relay benchmark. Only levels the filter can pass get through.
        log::set_max_level(log_level(most_verbose));
        if provider.is_some() {
            tracing::info!("exporting spans over OTLP/gRPC");
        }
        Ok(Self { provider, meters: None, endpoint: config.otlp_endpoint.clone(), resource })
    }

    /// When spans are exported, exports `metrics` to the same collector too
    /// ([`crate::otlp_metrics`]; off with `OTEL_METRICS_EXPORTER=none`).
    ///
    /// Errors: the metric exporter cannot be built.
    pub fn export_metrics(&mut self, metrics: Metrics) -> anyhow::Result<()> {
        if self.provider.is_none() || std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v == "none") {
            return Ok(());
        }
        let meters = crate::otlp_metrics::start(metrics, self.endpoint.as_deref(), self.resource.clone())?;
        self.meters = Some(meters);
        tracing::info!("exporting metrics over OTLP/gRPC");
        Ok(())
    }

    /// Exports what is still buffered (at most the exporters' timeouts) and stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("wasmgate: flushing spans failed: {e}");
        }
        if let Some(meters) = self.meters
            && let Err(e) = meters.shutdown()
        {
            eprintln!("wasmgate: flushing metrics failed: {e}");
        }
    }
}

/// Lines of one kind (level, target, message, and fields other than the per-connection ones)
/// may come [`LOG_BURST`] at once, then [`LOG_PER_S`] a second; the rest are suppressed and
/// summarised every [`LOG_SUMMARY`] ("N suppressed"), so a flood (a trapping script on every
/// event, a backend sending junk, a client storm) costs a bounded number of lines.
pub const LOG_BURST: f64 = 50.0;
/// See [`LOG_BURST`].
pub const LOG_PER_S: f64 = 1.0;
/// See [`LOG_BURST`].
pub const LOG_SUMMARY: std::time::Duration = std::time::Duration::from_secs(30);

/// Fields that name one connection, session or peer: lines differing only in them are one kind.
const PER_CONNECTION_FIELDS: [&str; 8] =
    ["peer", "user", "session_id", "conn", "addr", "seen", "seq", "room"];

fn throttle() -> anyhow::Result<TracingRateLimitLayer> {
    let policy = Policy::token_bucket(LOG_BURST, LOG_PER_S).context("log rate limit")?;
    TracingRateLimitLayer::builder()
        .with_policy(policy)
        .with_excluded_fields(PER_CONNECTION_FIELDS.iter().map(|f| f.to_string()).collect())
        .with_max_signatures(10_000)
        .with_active_emission(true)
        .with_summary_interval(LOG_SUMMARY)
        .build()
        .context("log rate limit")
}

/// Whether span export is asked for: by the config, or by the standard variables (unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
fn wanted(config: &TelemetryConfig) -> bool {
    let env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
    {
        return false;
    }
    config.otlp_endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// `service.name` (`OTEL_SERVICE_NAME`, default `wasmgate`), `service.version`, and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource() -> Resource {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("wasmgate");
    }
    resource
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn provider(config: &TelemetryConfig, resource: Resource) -> anyhow::Result<SdkTracerProvider> {
    for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Ok(protocol) = std::env::var(name) {
            anyhow::ensure!(
                protocol == "grpc",
                "{name}={protocol}: wasmgate exports OTLP over gRPC only (set it to `grpc`, port 4317)"
            );
        }
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &config.otlp_endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    let exporter = exporter.build().context("building the OTLP span exporter")?;
    let mut builder = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource);
    if let Some(ratio) = config.sample_ratio.filter(|_| std::env::var_os("OTEL_TRACES_SAMPLER").is_none()) {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `log`'s check lets through exactly the levels the filter may pass.
    #[test]
    fn log_level_follows_the_filter() {
        let hint = |directives: &str| EnvFilter::new(directives).max_level_hint();
        assert_eq!(log_level(hint("info")), log::LevelFilter::Info);
        assert_eq!(log_level(hint("warn,wasmgate::script=debug")), log::LevelFilter::Debug);
        assert_eq!(log_level(hint("info,tungstenite=trace")), log::LevelFilter::Trace);
        assert_eq!(log_level(hint("off")), log::LevelFilter::Off);
        assert_eq!(log_level(hint("error")), log::LevelFilter::Error);
        assert_eq!(log_level(None), log::LevelFilter::Trace);
    }
}
