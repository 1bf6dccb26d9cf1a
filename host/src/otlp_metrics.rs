//! The gateway's metrics over OTLP/gRPC: the instruments of `/metrics` ([`Metrics`]),
//! exported by a periodic reader (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s) when span
//! export is on ([`crate::telemetry`]).
//!
//! The instruments are kept by prometheus-client, which offers no way to walk them other than
//! its text encoding; so each collection renders the OpenMetrics text once and observes every
//! sample from it: a counter family as an OTLP monotonic sum (name without `_total`), a gauge
//! as a gauge, a histogram as two sums, `<name>_count` and `<name>_sum` (an OTLP histogram
//! cannot be observed asynchronously). Labels become attributes. Names are the Prometheus ones
//! (`wasmgate_routed`), so dashboards can use either path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use parking_lot::Mutex;

use prometheus_client::metrics::MetricType;

use crate::metrics::Metrics;

/// One sample: its attributes and value.
type Sample = (Vec<KeyValue>, f64);

/// The samples of one render, by sample name (`wasmgate_routed_total`, ...).
struct Snapshot {
    at: Instant,
    samples: HashMap<String, Vec<Sample>>,
}

/// Exports `metrics` until the returned provider is shut down. `endpoint`: the collector URL,
/// or `None` for the standard `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`.
///
/// Errors: the exporter cannot be built (bad endpoint URL). Must run inside a tokio runtime.
pub fn start(
    metrics: Metrics,
    endpoint: Option<&str>,
    resource: opentelemetry_sdk::Resource,
) -> anyhow::Result<SdkMeterProvider> {
    let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint.to_string());
    }
    let exporter = exporter.build().context("building the OTLP metric exporter")?;
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(resource)
        .build();
    let meter = provider.meter("wasmgate");
    let metrics_families = metrics.families().to_vec();
    let snapshot =
        Arc::new(Mutex::new(Snapshot { at: Instant::now(), samples: parse(&metrics.render_openmetrics()) }));
    // Callbacks of one collection run back to back: render once per collection, not per family.
    let samples = move |name: &str| -> Vec<Sample> {
        let mut snapshot = snapshot.lock();
        if snapshot.at.elapsed() > Duration::from_millis(100) {
            *snapshot = Snapshot { at: Instant::now(), samples: parse(&metrics.render_openmetrics()) };
        }
        snapshot.samples.get(name).cloned().unwrap_or_default()
    };
    let samples = Arc::new(samples);
    for (family, kind) in metrics_families {
        let family = family.as_str();
        let observe_sum = |sample_name: String, instrument: String| {
            let samples = samples.clone();
            let _ = meter
                .f64_observable_counter(instrument)
                .with_callback(move |observer| {
                    for (attributes, value) in samples(&sample_name) {
                        observer.observe(value, &attributes);
                    }
                })
                .build();
        };
        match kind {
            MetricType::Counter => observe_sum(format!("{family}_total"), family.to_string()),
            MetricType::Histogram => {
                observe_sum(format!("{family}_count"), format!("{family}_count"));
                observe_sum(format!("{family}_sum"), format!("{family}_sum"));
            }
            _ => {
                let samples = samples.clone();
                let name = family.to_string();
                let _ = meter
                    .f64_observable_gauge(name.clone())
                    .with_callback(move |observer| {
                        for (attributes, value) in samples(&name) {
                            observer.observe(value, &attributes);
                        }
                    })
                    .build();
            }
        }
    }
    Ok(provider)
}

/// Every sample line of OpenMetrics `text`, grouped by sample name.
fn parse(text: &str) -> HashMap<String, Vec<Sample>> {
    let mut out: HashMap<String, Vec<Sample>> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((name, labels, value)) = sample(line) else { continue };
        out.entry(name.to_string()).or_default().push((labels, value));
    }
    out
}

/// `name{a="x",b="y"} 1` -> (name, attributes, value); `None` for a line it cannot read.
/// Label values are unescaped (`\\`, `\"`, `\n`; OpenMetrics 1.0 "ABNF").
fn sample(line: &str) -> Option<(&str, Vec<KeyValue>, f64)> {
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(' ')?;
        return Some((name, Vec::new(), value.trim().parse().ok()?));
    };
    let bytes = line.as_bytes();
    let mut i = open + 1;
    let mut labels = Vec::new();
    loop {
        match bytes.get(i)? {
            b'}' => break,
            b',' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let eq = i + line[i..].find('=')?;
        let key = line[i..eq].to_string();
        i = eq + 2; // past `="`
        let mut value = String::new();
        loop {
            match bytes.get(i)? {
                b'\\' => {
                    value.push(match bytes.get(i + 1)? {
                        b'n' => '\n',
                        &c => c as char,
                    });
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                _ => {
                    let c = line[i..].chars().next()?;
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        labels.push(KeyValue::new(key, value));
    }
    let value = line[i + 1..].trim().split(' ').next()?.parse().ok()?;
    Some((&line[..open], labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_escaped_labels() {
        let (name, labels, value) = sample(r#"wasmgate_routed_total{dest="101",outcome="ok"} 7"#).unwrap();
        assert_eq!((name, value), ("wasmgate_routed_total", 7.0));
        assert_eq!(labels, vec![KeyValue::new("dest", "101"), KeyValue::new("outcome", "ok")]);
        let (_, labels, value) = sample(r#"x{name="a\"b,c}d"} 2.5"#).unwrap();
        assert_eq!((labels, value), (vec![KeyValue::new("name", "a\"b,c}d")], 2.5));
        assert_eq!(sample("wasmgate_rooms 3").unwrap().2, 3.0);
    }

    use prometheus_client::metrics::MetricType;

    #[test]
    fn every_family_of_a_real_registry_is_read() {
        let metrics = Metrics::new();
        metrics.routed.get_or_create(&crate::metrics::DestOutcomeLabel { dest: 7, outcome: "ok" }).inc_by(3);
        let text = metrics.render_openmetrics();
        assert!(
            metrics
                .families()
                .iter()
                .any(|(n, t)| n == "wasmgate_routed" && matches!(t, MetricType::Counter))
        );
        // Registered, no sample yet (scripts' own counters have no known labels): not in the
        // text, but a family all the same.
        assert!(!text.contains("wasmgate_script_events"));
        assert!(metrics.families().iter().any(|(n, _)| n == "wasmgate_script_events"));
        let samples = parse(&text);
        assert_eq!(samples["wasmgate_routed_total"][0].1, 3.0);
    }
}
