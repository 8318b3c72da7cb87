//! The decision for a container-registry token request (`/jwt/auth` with scopes).
//!
//! Pure, like [`crate::decide`]: a function of the snapshot, the mode, the origin and the parsed
//! scopes. A registry token is a bearer credential for every scope it names, so the request is
//! allowed only when **every** scope is; the first scope that is not decides the answer.
//!
//! - `service=dependency_proxy`: refused. The forge ignores the scopes and mints a token for
//!   every group dependency proxy the job's user can read; no project scope applies to it.
//! - `registry:catalog:*`: refused, it lists every repository of the instance.
//! - `repository:<image>:<actions>`: the forge resolves the image to the project at its longest
//!   prefix of two or more components (`ContainerRegistry::Path#repository_project`). When one of
//!   those candidate prefixes is the origin's own path, the image is the origin's own project:
//!   allowed, push and delete included (the forge's routes are unique, so no other candidate can
//!   be a project). Otherwise a write (`push`, `delete`, `*`) is refused, as the forge grants
//!   those to a job token only on its own project. A pull is decided like any other request,
//!   against the one candidate the scope file lists by path (longest first) when there is one,
//!   else against every candidate (the gateway cannot tell which prefix is the project, so all
//!   must be allowed).

use crate::decide::{decide, AllowReason, Decision, Mode};
use crate::policy::Policy;
use crate::project::{ProjectIdentity, ProjectRef};
use crate::target::{RegistryScope, RegistryService};

/// Why a registry token request is refused whatever the policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    DependencyProxy,
    Catalog,
    WriteToOtherProject,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::DependencyProxy => {
                "dependency proxy tokens reach every group the job's user can read, so they are not issued to CI/CD job tokens through the gateway"
            }
            Refusal::Catalog => "the registry catalog lists every repository of the instance",
            Refusal::WriteToOtherProject => {
                "a CI/CD job token may push to or delete from only its own project's container registry"
            }
        }
    }
}

/// The outcome for a whole `/jwt/auth` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryDecision {
    /// Every scope was decided; `decision` is the strictest of them and `target` the project it
    /// was made on (the first one decided that strictly).
    Decided {
        target: ProjectIdentity,
        decision: Decision,
    },
    Refused(Refusal),
}

/// Pure. `origin` comes completed by `Policy::identify_origin`.
pub fn decide_registry(
    policy: &Policy,
    mode: Mode,
    origin: &ProjectIdentity,
    service: RegistryService,
    scopes: &[RegistryScope],
) -> RegistryDecision {
    if service == RegistryService::DependencyProxy {
        return RegistryDecision::Refused(Refusal::DependencyProxy);
    }
    let mut strictest: Option<(ProjectIdentity, Decision)> = None;
    for scope in scopes {
        let (candidates, write) = match scope {
            RegistryScope::Registry => return RegistryDecision::Refused(Refusal::Catalog),
            RegistryScope::Repository {
                candidates, write, ..
            } => (candidates, *write),
        };
        if candidates.iter().any(|c| is_origin(origin, c)) {
            keep_strictest(
                &mut strictest,
                origin.clone(),
                Decision::Allow(AllowReason::SameProject),
            );
            continue;
        }
        if write {
            return RegistryDecision::Refused(Refusal::WriteToOtherProject);
        }
        let listed = candidates.iter().find(|c| policy.project(c).is_some());
        let decided: &[ProjectRef] = match listed {
            Some(c) => std::slice::from_ref(c),
            None => candidates,
        };
        for candidate in decided {
            let target = policy.identify(candidate);
            let decision = decide(policy, mode, origin, &target);
            keep_strictest(&mut strictest, target, decision);
            if matches!(decision, Decision::Deny(_)) {
                break;
            }
        }
        if let Some((_, Decision::Deny(_))) = &strictest {
            break;
        }
    }
    match strictest {
        Some((target, decision)) => RegistryDecision::Decided { target, decision },
        // The parser never yields a container-registry target without scopes; fail closed.
        None => RegistryDecision::Refused(Refusal::Catalog),
    }
}

fn is_origin(origin: &ProjectIdentity, candidate: &ProjectRef) -> bool {
    match (candidate, &origin.path) {
        (ProjectRef::Path(c), Some(own)) => c.eq_ignore_ascii_case(own),
        _ => false,
    }
}

fn keep_strictest(
    slot: &mut Option<(ProjectIdentity, Decision)>,
    target: ProjectIdentity,
    decision: Decision,
) {
    let replace = match slot {
        None => true,
        Some((_, current)) => decision.strictness() > current.strictness(),
    };
    if replace {
        *slot = Some((target, decision));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Limit;
    use crate::scope::{self, ScopeLimits};
    use crate::target::{self, Target};

    const SCOPES: &str = r#"
[defaults]
outbound = false
inbound = true

[[project]]
id = 1
path = "acme/app"

[[project]]
id = 2
path = "acme/lib"
[project.inbound]
enabled = true
allow = [1]

[[project]]
id = 3
path = "acme/secret"
"#;

    fn policy() -> Policy {
        scope::load_str("t.toml", SCOPES, &ScopeLimits::default())
            .unwrap()
            .policy
    }

    fn origin(policy: &Policy) -> ProjectIdentity {
        policy.identify_origin(1, Some("acme/app"))
    }

    fn run(query: &str) -> RegistryDecision {
        let policy = policy();
        let path_and_query = format!("/jwt/auth?{query}");
        let (path, query) = path_and_query.split_once('?').unwrap();
        let Ok(Target::Registry { service, scopes }) =
            target::parse(&http::Method::GET, path, Some(query))
        else {
            panic!("not a registry target: {query}");
        };
        decide_registry(&policy, Mode::Enforce, &origin(&policy), service, &scopes)
    }

    fn decision(d: RegistryDecision) -> Decision {
        match d {
            RegistryDecision::Decided { decision, .. } => decision,
            RegistryDecision::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn own_project_push_and_pull_of_any_image_below_it() {
        for scope in [
            "repository:acme/app:pull,push",
            "repository:acme/app/sub/image:push",
            "repository:ACME/App/x:delete",
            "repository:acme/app:*",
        ] {
            let d = decision(run(&format!("service=container_registry&scope={scope}")));
            assert_eq!(d, Decision::Allow(AllowReason::SameProject), "{scope}");
        }
    }

    #[test]
    fn writes_to_other_projects_are_refused_even_when_pull_is_allowed() {
        for scope in [
            "repository:acme/lib:push",
            "repository:acme/lib:pull,push",
            "repository:acme/lib/img:delete",
        ] {
            assert_eq!(
                run(&format!("service=container_registry&scope={scope}")),
                RegistryDecision::Refused(Refusal::WriteToOtherProject),
                "{scope}"
            );
        }
    }

    #[test]
    fn pulls_follow_the_policy_of_the_listed_project() {
        let d = decision(run(
            "service=container_registry&scope=repository:acme/lib/img:pull",
        ));
        assert_eq!(d, Decision::Allow(AllowReason::InScope));
        let d = decision(run(
            "service=container_registry&scope=repository:acme/secret:pull",
        ));
        assert_eq!(d, Decision::Deny(Limit::Inbound));
    }

    #[test]
    fn an_unlisted_image_needs_every_candidate_allowed() {
        // Neither prefix is listed: both fall to [defaults] inbound = true.
        let d = decision(run(
            "service=container_registry&scope=repository:other/team/img:pull",
        ));
        assert_eq!(d, Decision::Deny(Limit::Inbound));
    }

    #[test]
    fn every_scope_must_be_allowed() {
        let r = run("service=container_registry&scope=repository:acme/app:push&scope=repository:acme/secret:pull");
        match r {
            RegistryDecision::Decided { target, decision } => {
                assert_eq!(decision, Decision::Deny(Limit::Inbound));
                assert_eq!(target.id, Some(3));
            }
            other => panic!("{other:?}"),
        }
        let r = run("service=container_registry&scope=repository:acme/lib:pull registry:catalog:*");
        assert_eq!(r, RegistryDecision::Refused(Refusal::Catalog));
    }

    #[test]
    fn dependency_proxy_and_catalog_are_refused() {
        assert_eq!(
            run("service=dependency_proxy"),
            RegistryDecision::Refused(Refusal::DependencyProxy)
        );
        assert_eq!(
            run("service=container_registry&scope=registry:catalog:*"),
            RegistryDecision::Refused(Refusal::Catalog)
        );
    }

    #[test]
    fn report_mode_softens_pull_denials_but_not_refusals() {
        let policy = policy();
        let Ok(Target::Registry { service, scopes }) = target::parse(
            &http::Method::GET,
            "/jwt/auth",
            Some("service=container_registry&scope=repository:acme/secret:pull"),
        ) else {
            panic!()
        };
        let d = decide_registry(&policy, Mode::Report, &origin(&policy), service, &scopes);
        assert!(matches!(
            d,
            RegistryDecision::Decided {
                decision: Decision::WouldDeny(Limit::Inbound),
                ..
            }
        ));
    }
}
