//! `scopegate check` and `scopegate explain`: the policy, offline.

use std::process::ExitCode;

use crate::cli::{CheckArgs, ExplainArgs};
use crate::decide::{decide, Decision};
use crate::project::ProjectRef;
use crate::registry::{decide_registry, RegistryDecision};
use crate::scope::{self, ScopeLimits};
use crate::settings::Settings;
use crate::target::{self, Target};

/// Validate settings and scope file together; list every error; exit 0 or 1.
pub fn check(args: &CheckArgs) -> ExitCode {
    let mut errors: Vec<String> = Vec::new();
    let mut limits = ScopeLimits { max_allowlist: 200 };
    // Whether the settings name a lookup credential for unlisted paths (None: no settings given).
    let mut lookup = None;
    let scopes = match (&args.config, &args.scopes) {
        (Some(config), _) => match Settings::load(config) {
            Ok(settings) => {
                lookup = Some(settings.lookup_token_file.is_some());
                if let Err(e) = settings.validate() {
                    errors.extend(
                        e.to_string()
                            .lines()
                            .map(|l| format!("{}: {l}", config.display())),
                    );
                }
                limits.max_allowlist = settings.max_allowlist.max(1);
                settings.scopes.clone()
            }
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        },
        (None, Some(scopes)) => Some(scopes.clone()),
        (None, None) => None,
    };
    if let Some(path) = scopes {
        match scope::load_file(&path, &limits) {
            Ok(loaded) => {
                println!(
                    "{}: {} projects, {} tokens, {}",
                    path.display(),
                    loaded.policy.project_count(),
                    loaded.policy.token_count(),
                    loaded.policy.digest()
                );
                for w in &loaded.warnings {
                    println!("warning: {w}");
                }
                if !loaded.policy.defaults().inbound && lookup == Some(false) {
                    println!(
                        "warning: {}: [defaults] inbound = false and no lookup_token_file: a Git or \
                         LFS request by a renamed project's old path is decided as an unlisted, \
                         open project, while the forge serves the renamed project; set \
                         lookup_token_file so the gateway asks the forge what such paths are",
                        path.display()
                    );
                }
            }
            Err(e) => errors.extend(e.to_string().lines().map(str::to_string)),
        }
    }
    if errors.is_empty() {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

/// Print the decision for one request. Exit 0 when it would be forwarded, 1 when denied,
/// 2 when the input cannot be evaluated.
pub fn explain(args: &ExplainArgs) -> ExitCode {
    let loaded = match scope::load_file(&args.scopes, &ScopeLimits { max_allowlist: 200 }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let policy = &loaded.policy;
    let origin_ref = match args.origin.parse::<u64>() {
        Ok(id) => ProjectRef::Id(id),
        Err(_) => ProjectRef::path(&args.origin),
    };
    let origin = policy.identify(&origin_ref);
    let Ok(method) = http::Method::from_bytes(args.method.as_bytes()) else {
        eprintln!("not an HTTP method: {}", args.method);
        return ExitCode::from(2);
    };
    let (path, query) = split_url(&args.url);
    let parsed = match target::parse(&method, path, query) {
        Ok(t) => t,
        Err(e) => {
            println!("deny (400): undecodable target: {e}");
            return ExitCode::from(1);
        }
    };
    println!("origin: {origin}");
    println!("route:  {}", parsed.kind().as_str());
    match parsed {
        Target::ProjectLess => {
            println!("allow: this route acts on no project");
            ExitCode::SUCCESS
        }
        Target::Unattributed => {
            println!("deny (403): the gateway cannot tell which project this route acts on");
            ExitCode::from(1)
        }
        Target::Group { group, .. } => {
            println!("target: {group}");
            println!("deny (403): group-level routes are denied for job tokens");
            ExitCode::from(1)
        }
        Target::InstancePackages => {
            println!("deny (403): instance-level package routes are denied for job tokens");
            ExitCode::from(1)
        }
        Target::Registry { service, scopes } => {
            match decide_registry(policy, args.mode.into(), &origin, service, &scopes) {
                RegistryDecision::Refused(refusal) => {
                    println!("deny (403): {}", refusal.message());
                    ExitCode::from(1)
                }
                RegistryDecision::Decided { target, decision } => {
                    println!("target: {target}");
                    print_decision(decision)
                }
            }
        }
        Target::Job { job_id } => {
            println!("allow only for the token's own job: job {job_id} must be the token's job, else 403");
            ExitCode::SUCCESS
        }
        Target::Project { project, alias, .. } => {
            let target = policy.identify(&project);
            println!("target: {target}");
            let mut decision = decide(policy, args.mode.into(), &origin, &target);
            // The forge may read the request as the alias instead (`x.wiki.git` when a project
            // `x.wiki` exists): the stricter decision counts, as in the gateway.
            if let Some(alias) = alias {
                let other = policy.identify(&alias);
                println!("or target: {other}");
                let d = decide(policy, args.mode.into(), &origin, &other);
                if d.strictness() > decision.strictness() {
                    decision = d;
                }
            }
            print_decision(decision)
        }
    }
}

fn print_decision(decision: Decision) -> ExitCode {
    println!("{} ({})", decision.label(), decision.reason());
    match decision {
        Decision::Deny(_) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

/// `http://host/p?q`, `/p?q` → (`/p`, `q`).
fn split_url(url: &str) -> (&str, Option<&str>) {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => url,
    };
    match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split_into_path_and_query() {
        assert_eq!(
            split_url("https://gl.example/api/v4/projects/1?x=1"),
            ("/api/v4/projects/1", Some("x=1"))
        );
        assert_eq!(split_url("/api/v4/job"), ("/api/v4/job", None));
        assert_eq!(split_url("http://gl.example"), ("/", None));
    }
}
