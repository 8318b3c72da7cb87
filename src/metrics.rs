//! Prometheus metrics. Labels carry bounded values only (decision, reason, route kind), never
//! a token, a project path or a client address.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

/// Status classes of upstream responses, in `upstream_classes` order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Distinct metrics instances (only tests make more than one), so that the per-thread
/// counter cache never hands out a counter of another instance.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Request counters a thread looked up, by (instance, decision, reason), at most this many.
const CACHED_COUNTERS: usize = 256;

type CounterCache = HashMap<(u64, &'static str, &'static str), Counter, foldhash::fast::FixedState>;

thread_local! {
    // A label family is a locked map hashed with SipHash: ~500 instructions a request for the
    // two counters. A counter is a shared atomic, so a thread keeps what it looked up.
    static REQUEST_COUNTERS: RefCell<CounterCache> = RefCell::default();
}

pub struct Metrics {
    registry: Registry,
    instance: u64,
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    upstream: Family<ClassLabels, Counter>,
    /// `upstream`'s counters of the five status classes, looked up once.
    upstream_classes: [Counter; 5],
    cache_hits: Counter,
    cache_misses: Counter,
    forge_lookups: Family<ResultLabels, Counter>,
    forge_lookup_duration: Histogram,
    reloads: Family<ResultLabels, Counter>,
    generation: Gauge,
    connections: Gauge,
    worker_connections: Family<WorkerLabels, Gauge>,
    scope_writes: Family<ResultLabels, Counter>,
    authlog_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("scopegate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by decision and reason",
            requests.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            duration.clone(),
        );
        let upstream = Family::<ClassLabels, Counter>::default();
        registry.register(
            "upstream_responses",
            "Upstream responses by status class, and errors",
            upstream.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "origin_cache_hits",
            "Token origins answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "origin_cache_misses",
            "Token origins not in the cache",
            cache_misses.clone(),
        );
        let forge_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "forge_lookups",
            "GET /api/v4/job calls by result",
            forge_lookups.clone(),
        );
        let forge_lookup_duration = Histogram::new(exponential_buckets(0.001, 2.5, 10));
        registry.register(
            "forge_lookup_duration_seconds",
            "Time the forge took to answer GET /api/v4/job",
            forge_lookup_duration.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Scope file reloads by result: success, failure, or unchanged (a watcher or poll check found the content in force, or one already rejected)",
            reloads.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Generation of the scope snapshot in force",
            generation.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open on the main listener",
            connections.clone(),
        );
        let worker_connections = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_connections",
            "Client connections each worker thread serves (new ones go to the worker serving the fewest)",
            worker_connections.clone(),
        );
        let scope_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "scope_writes",
            "Changes to the scope file through the management API, by result",
            scope_writes.clone(),
        );
        let authlog_dropped = Counter::default();
        registry.register(
            "authlog_dropped",
            "Job-token decisions not written to the authorization log because its queue was full",
            authlog_dropped.clone(),
        );
        let upstream_classes =
            CLASSES.map(|class| upstream.get_or_create(&ClassLabels { class }).clone());
        Metrics {
            registry,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            upstream_classes,
            scope_writes,
            authlog_dropped,
            requests,
            duration,
            upstream,
            cache_hits,
            cache_misses,
            forge_lookups,
            forge_lookup_duration,
            reloads,
            generation,
            connections,
            worker_connections,
        }
    }

    /// The open-connection gauge of worker `index` (taken once per worker, moved per connection).
    pub fn worker_connections(&self, index: usize) -> Gauge {
        self.worker_connections
            .get_or_create(&WorkerLabels {
                worker: index.to_string(),
            })
            .clone()
    }

    pub fn request(&self, decision: &'static str, reason: &'static str, elapsed: Duration) {
        let key = (self.instance, decision, reason);
        // `try_with`: a thread tearing down its locals counts through the family instead.
        let cached = REQUEST_COUNTERS
            .try_with(|cache| cache.borrow().get(&key).map(Counter::inc))
            .ok()
            .flatten();
        if cached.is_none() {
            let counter = self
                .requests
                .get_or_create(&RequestLabels { decision, reason })
                .clone();
            counter.inc();
            let _ = REQUEST_COUNTERS.try_with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() >= CACHED_COUNTERS {
                    cache.clear();
                }
                cache.insert(key, counter);
            });
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn upstream_status(&self, status: http::StatusCode) {
        let class = match status.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.upstream_classes[class].inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream
            .get_or_create(&ClassLabels { class: kind })
            .inc();
    }

    pub fn origin_cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn origin_cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn forge_lookup(&self, result: &'static str, elapsed: Duration) {
        self.forge_lookups
            .get_or_create(&ResultLabels { result })
            .inc();
        self.forge_lookup_duration.observe(elapsed.as_secs_f64());
    }

    pub fn reload(&self, ok: bool, generation: u64) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// A watcher or poll check found nothing new in the scope file (the content in force, or
    /// one already rejected and reported): `scopegate_reloads_total{result="unchanged"}`.
    pub fn reload_unchanged(&self) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: "unchanged",
            })
            .inc();
    }

    /// A management API write: `ok`, `refused`, `read_only` or `failed`. A written change
    /// also moves the generation gauge.
    pub fn scope_write(&self, result: &'static str) {
        self.scope_writes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The counter the authorization log increments for every decision it drops.
    pub fn authlog_dropped(&self) -> Counter {
        self.authlog_dropped.clone()
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(rendered: &str, prefix: &str) -> Option<f64> {
        rendered
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn each_instance_counts_its_own_requests_and_classes() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.request("allow", "in_scope", Duration::ZERO);
        }
        a.request("deny", "outbound_limit", Duration::ZERO);
        b.request("allow", "in_scope", Duration::ZERO);
        // The cache compares label contents: the same labels in another string count the same.
        let reason = String::from("in_scope").leak();
        b.request("allow", reason, Duration::ZERO);
        a.upstream_status(http::StatusCode::OK);
        a.upstream_status(http::StatusCode::NOT_FOUND);
        a.upstream_status(http::StatusCode::BAD_GATEWAY);
        a.upstream_status(http::StatusCode::CREATED);
        let (ra, rb) = (a.render(), b.render());
        let allowed = r#"scopegate_requests_total{decision="allow",reason="in_scope"}"#;
        let denied = r#"scopegate_requests_total{decision="deny",reason="outbound_limit"}"#;
        assert_eq!(line_value(&ra, allowed), Some(3.0), "{ra}");
        assert_eq!(line_value(&ra, denied), Some(1.0), "{ra}");
        assert_eq!(line_value(&rb, allowed), Some(2.0), "{rb}");
        assert_eq!(line_value(&rb, denied), None, "{rb}");
        for (class, n) in [("1xx", 0.0), ("2xx", 2.0), ("4xx", 1.0), ("5xx", 1.0)] {
            let series = format!("scopegate_upstream_responses_total{{class=\"{class}\"}}");
            assert_eq!(line_value(&ra, &series), Some(n), "{ra}");
        }
        assert_eq!(
            line_value(&ra, "scopegate_request_duration_seconds_count"),
            Some(4.0)
        );
    }
}
