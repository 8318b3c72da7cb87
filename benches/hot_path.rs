//! The per-request decision work: credential extraction, target parsing, origin lookup by
//! digest, identification and the decision, at 10 and at 100,000 projects (1M allowlist
//! entries). Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

// The allocator the binary uses (src/main.rs).
#[global_allocator]
static GLOBAL: scopegate::allocator::Allocator = scopegate::allocator::Allocator;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use scopegate::credentials;
use scopegate::decide::{decide, Mode};
use scopegate::policy::{Defaults, LimitSpec, Policy, ProjectSpec, TokenSpec};
use scopegate::project::ProjectRef;
use scopegate::target::{self, Target};
use sha2::{Digest, Sha256};

const TOKEN: &str = "glcbt-64_benchmarkTokenValue0123456789abcdef";

/// `n` projects `bench/p<i>` with id i; each allows 10 others outbound and inbound (so 100k
/// projects carry 2M allowlist entries), plus a group entry.
fn policy(n: u64) -> Policy {
    let defaults = Defaults::default();
    let projects = (1..=n)
        .map(|i| {
            let mut spec = ProjectSpec::new(Some(i), Some(&format!("bench/p{i}")), &defaults);
            let others = |k: u64| (1..=5).map(move |d| (i + d * k) % n + 1);
            spec.outbound = LimitSpec {
                enabled: true,
                allow: others(7)
                    .map(ProjectRef::Id)
                    .chain(others(11).map(|j| ProjectRef::path(&format!("bench/p{j}"))))
                    .collect(),
                allow_groups: vec![format!("team{}", i % 100)],
            };
            spec.inbound = LimitSpec {
                enabled: true,
                allow: others(13)
                    .map(ProjectRef::Id)
                    .chain(others(17).map(|j| ProjectRef::path(&format!("bench/p{j}"))))
                    .collect(),
                allow_groups: vec![],
            };
            spec
        })
        .collect();
    let tokens = vec![TokenSpec {
        sha256: Sha256::digest(TOKEN.as_bytes()).into(),
        project: ProjectRef::Id(1),
    }];
    Policy::build(defaults, projects, tokens, "sha256:bench".into())
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "gitlab.example.com"),
        ("user-agent", "python-gitlab/4.4.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("x-request-source", "bot"),
        ("job-token", TOKEN),
    ] {
        h.insert(n, HeaderValue::from_static(v));
    }
    h
}

fn hot_path(c: &mut Criterion) {
    let headers = request_headers();
    let prefixes: Vec<Box<str>> = vec!["glcbt-".into()];
    let query = Some("state=opened&per_page=100");
    let numeric = "/api/v4/projects/8/merge_requests";
    let by_path = "/api/v4/projects/bench%2Fp8/merge_requests";

    c.bench_function("credentials::extract (8 headers, job token)", |b| {
        b.iter(|| credentials::extract(black_box(&headers), black_box(query), &prefixes))
    });
    let mut plain = headers.clone();
    plain.remove("job-token");
    c.bench_function("credentials::extract (no credentials)", |b| {
        b.iter(|| credentials::extract(black_box(&plain), black_box(query), &prefixes))
    });
    c.bench_function("target::parse (numeric id)", |b| {
        b.iter(|| target::parse(&Method::GET, black_box(numeric), black_box(query)))
    });
    c.bench_function("target::parse (encoded path)", |b| {
        b.iter(|| target::parse(&Method::GET, black_box(by_path), black_box(query)))
    });

    let mut group = c.benchmark_group("decision");
    for n in [10u64, 1_000, 100_000] {
        let policy = policy(n);
        let origin = policy.identify(&ProjectRef::Id(1));
        group.bench_with_input(BenchmarkId::new("decide", n), &policy, |b, p| {
            let target = p.identify(&ProjectRef::Id(8 % n + 1));
            b.iter(|| {
                decide(
                    black_box(p),
                    Mode::Enforce,
                    black_box(&origin),
                    black_box(&target),
                )
            })
        });
        // Everything the handler does before forwarding, with the origin from the digest
        // index (the cache-warm case).
        group.bench_with_input(BenchmarkId::new("whole hot path", n), &policy, |b, p| {
            b.iter(|| {
                let creds =
                    credentials::extract(black_box(&headers), black_box(query), &prefixes).ok()?;
                let token = creds.job_token?;
                let origin = p.static_token(&token.sha256())?;
                let Ok(Target::Project { project, .. }) =
                    target::parse(&Method::GET, black_box(by_path), query)
                else {
                    return None;
                };
                let target = p.identify(&project);
                Some(decide(p, Mode::Enforce, &origin, &target))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
