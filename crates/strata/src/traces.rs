//! OpenTelemetry traces of a node, exported over OTLP/gRPC when an
//! endpoint is configured (`[traces]`, or the standard `OTEL_*` variables,
//! which win): the resource names the service (`strata`) and the node
//! (`service.instance.id`). Without an endpoint nothing is installed and
//! the node makes no span at all.

use anyhow::{Context, bail};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;

/// `[traces]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    pub otlp_endpoint: String,
    pub sampler: String,
    pub sampler_arg: f64,
    pub service_name: String,
    pub max_traces_per_second: u32,
}

/// What is installed: the endpoint, the sampler and the service's name.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub sampler: String,
    pub ratio: f64,
    pub service_name: String,
    /// At most this many requests a second start a sampled trace here.
    pub max_per_second: u32,
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and `OTEL_SERVICE_NAME`
/// over the config; `None` when no endpoint is set.
pub fn settings(config: &TracesConfig, env: &[(String, String)]) -> anyhow::Result<Option<TraceSettings>> {
    let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned());
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_else(|| config.otlp_endpoint.trim().to_owned());
    if endpoint.is_empty() {
        return Ok(None);
    }
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        bail!("the OTLP endpoint '{endpoint}' must be a URL, e.g. http://127.0.0.1:4317");
    }
    let sampler = var("OTEL_TRACES_SAMPLER").unwrap_or_else(|| config.sampler.trim().to_owned());
    let ratio = match var("OTEL_TRACES_SAMPLER_ARG") {
        Some(raw) => raw.parse::<f64>().with_context(|| format!("OTEL_TRACES_SAMPLER_ARG={raw} is not a number"))?,
        None => config.sampler_arg,
    };
    if !(0.0..=1.0).contains(&ratio) {
        bail!("the sampling ratio {ratio} is not between 0 and 1");
    }
    let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.trim().to_owned());
    let settings =
        TraceSettings { endpoint, sampler, ratio, service_name, max_per_second: config.max_traces_per_second };
    sampler_of(&settings)?;
    Ok(Some(settings))
}

/// The head-sampling rule of the configured sampler: the share of new
/// traces, and whether a caller's decision is followed.
fn head_sampling(s: &TraceSettings) -> strata_server::HeadSampling {
    let (ratio, follow_parent) = match s.sampler.as_str() {
        "always_on" => (1.0, false),
        "always_off" => (0.0, false),
        "traceidratio" => (s.ratio, false),
        "parentbased_always_on" => (1.0, true),
        "parentbased_always_off" => (0.0, true),
        _ => (s.ratio, true),
    };
    strata_server::HeadSampling { ratio, follow_parent }
}

fn sampler_of(s: &TraceSettings) -> anyhow::Result<Sampler> {
    Ok(match s.sampler.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(s.ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(s.ratio))),
        other => bail!(
            "unknown sampler '{other}' (always_on, always_off, traceidratio, parentbased_always_on, \
             parentbased_always_off, parentbased_traceidratio)"
        ),
    })
}

/// Installs the process's tracer provider (within the tokio runtime: the
/// exporter's gRPC client needs it) and turns span recording on.
pub fn install(s: &TraceSettings, node_id: u64) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&s.endpoint)
        .build()
        .context("cannot set up the OTLP exporter")?;
    let resource = Resource::builder()
        .with_service_name(s.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", node_id.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    // Produce requests are sampled at their head (strata_raft::trace, by
    // the configured sampler's rule, before any span is made); the SDK
    // records what gets through, and whatever follows a sampled parent,
    // within the cap.
    sampler_of(s)?;
    let sampler = Capped::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), s.max_per_second);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    strata_server::enable_tracing(head_sampling(s));
    Ok(provider)
}

/// A sampler that decides as `inner` does, but lets at most `per_second`
/// requests a second (server spans: the `send` span of a produce) be
/// sampled, with bursts of as many. The caller's sampled flag is honoured
/// (parent-based), so without this a client could have every one of its
/// requests traced, on every replica. The spans under a request's (its
/// commit, fsyncs, replication, the followers' fsyncs) follow its decision.
#[derive(Debug, Clone)]
struct Capped {
    inner: Sampler,
    per_second: f64,
    /// Tokens left, and when they were last counted.
    bucket: std::sync::Arc<std::sync::Mutex<(f64, std::time::Instant)>>,
}

impl Capped {
    fn new(inner: Sampler, per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self {
            inner,
            per_second,
            bucket: std::sync::Arc::new(std::sync::Mutex::new((per_second, std::time::Instant::now()))),
        }
    }

    fn take(&self) -> bool {
        let Ok(mut b) = self.bucket.lock() else { return false };
        let now = std::time::Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * self.per_second).min(self.per_second);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl opentelemetry_sdk::trace::ShouldSample for Capped {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        kind: &opentelemetry::trace::SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::SamplingDecision;
        let result = self.inner.should_sample(parent, trace_id, name, kind, attributes, links);
        if *kind == SpanKind::Server && result.decision == SamplingDecision::RecordAndSample && !self.take() {
            return opentelemetry_sdk::trace::SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: result.trace_state,
            };
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TracesConfig {
        TracesConfig {
            otlp_endpoint: String::new(),
            sampler: "parentbased_traceidratio".into(),
            sampler_arg: 0.01,
            service_name: "strata".into(),
            max_traces_per_second: 100,
        }
    }

    #[test]
    fn a_caller_cannot_have_more_requests_traced_than_the_cap() {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let capped = Capped::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01))), 10);
        let sampled = SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sampled);
        let decide = |kind: SpanKind| {
            capped.should_sample(Some(&cx), TraceId::from_bytes([1; 16]), "send orders", &kind, &[], &[]).decision
        };
        let requests = (0..100).filter(|_| decide(SpanKind::Server) == SamplingDecision::RecordAndSample).count();
        assert!((10..=11).contains(&requests), "{requests} of 100 sampled requests traced, cap 10 a second");
        assert_eq!(decide(SpanKind::Internal), SamplingDecision::RecordAndSample, "spans under a request follow it");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_standard_variables_win_over_the_config_and_no_endpoint_is_off() {
        assert_eq!(settings(&config(), &[]).expect("valid"), None);
        let from_config = TracesConfig { otlp_endpoint: "http://collector:4317".into(), ..config() };
        let s = settings(&from_config, &[]).expect("valid").expect("on");
        assert_eq!((s.endpoint.as_str(), s.ratio, s.service_name.as_str()), ("http://collector:4317", 0.01, "strata"));
        let s = settings(
            &from_config,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4317"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
                ("OTEL_SERVICE_NAME", "strata-eu"),
            ]),
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.endpoint, "http://other:4317");
        assert_eq!((s.sampler.as_str(), s.ratio, s.service_name.as_str()), ("always_on", 0.5, "strata-eu"));
        for bad in [
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER", "sometimes")]),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER_ARG", "2")]),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER_ARG", "x")]),
        ] {
            assert!(settings(&config(), &bad).is_err(), "{bad:?}");
        }
    }
}
