//! OpenTelemetry export of Keel's tracing spans (cargo feature `otel`): OTLP over
//! HTTP/protobuf to `$OTEL_EXPORTER_OTLP_ENDPOINT` (and the other standard `OTEL_*`
//! variables), batched on the SDK's own thread. Without the variable nothing is exported.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// The layer that exports spans and the provider to shut down (flush) at exit, or `None`
/// when no endpoint is configured.
pub fn layer<S>() -> anyhow::Result<
    Option<(tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>, SdkTracerProvider)>,
>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let Some(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    // The base endpoint gets the signal path appended, as the OTLP spec says.
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()
        .context("cannot build the OTLP span exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("keel").build())
        .build();
    let tracer = provider.tracer("keel");
    Ok(Some((tracing_opentelemetry::layer().with_tracer(tracer), provider)))
}
