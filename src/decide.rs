//! The decision: may a job token of project *origin* act on project *target*?
//!
//! A pure function of the policy snapshot and the two identities (design.md, "Policy
//! semantics"): no I/O, no clock, no locks, no allocation when paths are lowercase (as
//! `Policy::identify*` and `ProjectRef::path` make them). Its cost is a few hash probes plus one
//! per ancestor group of the two paths, independent of the size of the scope file.
//!
//! 1. Same project (ids equal, or lowercased paths equal) → allow.
//! 2. The origin's outbound limit (its entry, else `[defaults]`): when on, the target must be on
//!    the origin's outbound allowlist (by id or by path) or under one of its groups.
//! 3. The target's inbound limit (its entry, else `[defaults]`): when on, the origin must be on
//!    the target's inbound allowlist or under one of its groups.
//! 4. Both must pass. An outbound denial is softened (forwarded, counted as `would_deny`) by the
//!    origin's `report_only`, an inbound one by the target's, and every denial by
//!    [`Mode::Report`]. Any unsoftened denial denies (outbound named first); otherwise a softened
//!    one gives `WouldDeny` (outbound named first).

use std::fmt;

use crate::policy::{AllowMatch, Effective, Policy};
use crate::project::ProjectIdentity;

/// The settings file's global mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Denials are enforced, except where a project's `report_only` softens them.
    #[default]
    Enforce,
    /// Every denial is only reported.
    Report,
}

/// Which limit denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The origin's "Limit access from this project".
    Outbound,
    /// The target's "Limit access to this project".
    Inbound,
}

impl Limit {
    /// `"outbound"` | `"inbound"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Limit::Outbound => "outbound",
            Limit::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(AllowReason),
    /// Report-only: denied by `limit`, forwarded anyway, logged and counted as would_deny.
    WouldDeny(Limit),
    Deny(Limit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowReason {
    SameProject,
    InScope,
}

impl Decision {
    /// Whether the request goes upstream (`Allow` and `WouldDeny`).
    pub fn is_forwarded(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }

    /// Bounded machine-readable reason: "same_project", "in_scope", "outbound_limit",
    /// "inbound_limit".
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow(AllowReason::SameProject) => "same_project",
            Decision::Allow(AllowReason::InScope) => "in_scope",
            Decision::WouldDeny(Limit::Outbound) | Decision::Deny(Limit::Outbound) => {
                "outbound_limit"
            }
            Decision::WouldDeny(Limit::Inbound) | Decision::Deny(Limit::Inbound) => "inbound_limit",
        }
    }

    /// 0 allow, 1 would_deny, 2 deny: when a request may act on several projects, the
    /// strictest decision is the request's.
    pub fn strictness(&self) -> u8 {
        match self {
            Decision::Allow(_) => 0,
            Decision::WouldDeny(_) => 1,
            Decision::Deny(_) => 2,
        }
    }

    /// "allow" | "would_deny" | "deny"
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::WouldDeny(_) => "would_deny",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Pure. `origin` and `target` come already completed by `Policy::identify*`.
pub fn decide(
    policy: &Policy,
    mode: Mode,
    origin: &ProjectIdentity,
    target: &ProjectIdentity,
) -> Decision {
    evaluate(policy, mode, origin, target, false).decision
}

/// How one limit was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check<'a> {
    pub limit: Limit,
    /// The project whose setting it is (origin for outbound, target for inbound) has a
    /// `[[project]]` entry; `false` means `[defaults]` applied.
    pub listed: bool,
    /// Line of that entry in the scope file.
    pub line: Option<usize>,
    /// The limit is on.
    pub enabled: bool,
    /// The allowlist entry that matched the other project, if any.
    pub matched: Option<AllowMatch<'a>>,
    /// A denial by this limit would only be reported (the project's `report_only`, or
    /// [`Mode::Report`]).
    pub softened: bool,
}

impl Check<'_> {
    /// The limit lets the request through (off, or the other project is allowlisted).
    pub fn passed(&self) -> bool {
        !self.enabled || self.matched.is_some()
    }
}

/// The decision and why: what `scopegate explain` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Explanation<'a> {
    pub decision: Decision,
    pub mode: Mode,
    pub origin: &'a ProjectIdentity,
    pub target: &'a ProjectIdentity,
    /// `None` when the origin and the target are the same project (no limit applies).
    pub outbound: Option<Check<'a>>,
    pub inbound: Option<Check<'a>>,
}

/// [`decide`], with the details of each check. `explain(..).decision == decide(..)` always.
pub fn explain<'a>(
    policy: &'a Policy,
    mode: Mode,
    origin: &'a ProjectIdentity,
    target: &'a ProjectIdentity,
) -> Explanation<'a> {
    evaluate(policy, mode, origin, target, true)
}

fn check<'a>(limit: Limit, owner: Effective<'a>, other: &ProjectIdentity, mode: Mode) -> Check<'a> {
    let list = match limit {
        Limit::Outbound => owner.outbound,
        Limit::Inbound => owner.inbound,
    };
    let enabled = list.enabled();
    Check {
        limit,
        listed: owner.entry.is_some(),
        line: owner.entry.and_then(|e| e.line()),
        enabled,
        // An off limit needs no probe; `decide` stays as cheap as the policy allows.
        matched: if enabled { list.matches(other) } else { None },
        softened: owner.report_only || mode == Mode::Report,
    }
}

/// Rule 1: the ids agree, or the paths agree in any letter case (`ProjectIdentity::same_as`,
/// without relying on the paths being lowercased already).
fn same_project(a: &ProjectIdentity, b: &ProjectIdentity) -> bool {
    matches!((a.id, b.id), (Some(x), Some(y)) if x == y)
        || matches!((&a.path, &b.path), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y))
}

fn evaluate<'a>(
    policy: &'a Policy,
    mode: Mode,
    origin: &'a ProjectIdentity,
    target: &'a ProjectIdentity,
    full: bool,
) -> Explanation<'a> {
    if same_project(origin, target) {
        return Explanation {
            decision: Decision::Allow(AllowReason::SameProject),
            mode,
            origin,
            target,
            outbound: None,
            inbound: None,
        };
    }
    let denied = |c: &Check<'_>| !c.passed();
    let outbound = check(Limit::Outbound, policy.effective(origin), target, mode);
    if !full && denied(&outbound) && !outbound.softened {
        // Denied whatever the inbound limit says; `decide` does not need the details.
        return Explanation {
            decision: Decision::Deny(Limit::Outbound),
            mode,
            origin,
            target,
            outbound: Some(outbound),
            inbound: None,
        };
    }
    let inbound = check(Limit::Inbound, policy.effective(target), origin, mode);
    let decision = if denied(&outbound) && !outbound.softened {
        Decision::Deny(Limit::Outbound)
    } else if denied(&inbound) && !inbound.softened {
        Decision::Deny(Limit::Inbound)
    } else if denied(&outbound) {
        Decision::WouldDeny(Limit::Outbound)
    } else if denied(&inbound) {
        Decision::WouldDeny(Limit::Inbound)
    } else {
        Decision::Allow(AllowReason::InScope)
    };
    Explanation {
        decision,
        mode,
        origin,
        target,
        outbound: Some(outbound),
        inbound: Some(inbound),
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}): origin {}, target {}",
            self.decision.label(),
            self.decision.reason(),
            self.origin,
            self.target
        )?;
        let (Some(out), Some(inb)) = (self.outbound, self.inbound) else {
            return writeln!(
                f,
                "  same project: a job token always reaches its own project"
            );
        };
        for (c, owner, other) in [
            (out, self.origin, self.target),
            (inb, self.target, self.origin),
        ] {
            let side = match c.limit {
                Limit::Outbound => "outbound limit (\"Limit access from this project\")",
                Limit::Inbound => "inbound limit (\"Limit access to this project\")",
            };
            let from = match (c.listed, c.line) {
                (true, Some(line)) => format!("its [[project]] entry, line {line}"),
                (true, None) => "its [[project]] entry".to_owned(),
                (false, _) => "[defaults]: it has no [[project]] entry".to_owned(),
            };
            write!(f, "  {side} of {owner}: ")?;
            if !c.enabled {
                write!(f, "off (from {from})")?;
            } else if let Some(m) = c.matched {
                write!(f, "on (from {from}); {other} allowed by {m}")?;
            } else {
                write!(f, "on (from {from}); {other} is not on its allowlist")?;
                if c.softened {
                    let why = if self.mode == Mode::Report {
                        "global mode is report"
                    } else {
                        "report_only"
                    };
                    write!(f, " (only reported: {why})")?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::policy::{Defaults, LimitSpec, ProjectSpec};
    use crate::project::ProjectRef;

    fn id(n: u64) -> ProjectIdentity {
        ProjectIdentity::from_ref(&ProjectRef::Id(n))
    }
    fn path(p: &str) -> ProjectIdentity {
        ProjectIdentity::from_ref(&ProjectRef::path(p))
    }
    fn both(n: u64, p: &str) -> ProjectIdentity {
        ProjectIdentity {
            id: Some(n),
            path: Some(p.to_ascii_lowercase().into()),
        }
    }
    pub(crate) fn limit(enabled: bool, allow: &[ProjectRef], groups: &[&str]) -> LimitSpec {
        LimitSpec {
            enabled,
            allow: allow.to_vec(),
            allow_groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
    fn project(
        id: Option<u64>,
        path: Option<&str>,
        outbound: LimitSpec,
        inbound: LimitSpec,
    ) -> ProjectSpec {
        ProjectSpec {
            outbound,
            inbound,
            ..ProjectSpec::new(id, path, &Defaults::default())
        }
    }
    fn open() -> LimitSpec {
        limit(false, &[], &[])
    }
    fn policy(defaults: Defaults, projects: Vec<ProjectSpec>) -> Policy {
        Policy::build(defaults, projects, vec![], String::new())
    }
    fn enforce(p: &Policy, o: &ProjectIdentity, t: &ProjectIdentity) -> Decision {
        decide(p, Mode::Enforce, o, t)
    }
    const OPEN: Defaults = Defaults {
        outbound: false,
        inbound: false,
        report_only: false,
    };
    const ALLOW: Decision = Decision::Allow(AllowReason::InScope);
    const SAME: Decision = Decision::Allow(AllowReason::SameProject);
    const DENY_OUT: Decision = Decision::Deny(Limit::Outbound);
    const DENY_IN: Decision = Decision::Deny(Limit::Inbound);

    #[test]
    fn decision_labels_and_reasons() {
        assert_eq!((SAME.label(), SAME.reason()), ("allow", "same_project"));
        assert_eq!((ALLOW.label(), ALLOW.reason()), ("allow", "in_scope"));
        let wd = Decision::WouldDeny(Limit::Inbound);
        assert_eq!((wd.label(), wd.reason()), ("would_deny", "inbound_limit"));
        assert_eq!(
            (DENY_OUT.label(), DENY_OUT.reason()),
            ("deny", "outbound_limit")
        );
        assert!(ALLOW.is_forwarded() && wd.is_forwarded() && !DENY_IN.is_forwarded());
        assert_eq!(Mode::default(), Mode::Enforce);
        assert_eq!(
            (Limit::Outbound.as_str(), Limit::Inbound.as_str()),
            ("outbound", "inbound")
        );
    }

    #[test]
    fn same_project_by_id_and_by_path_even_when_limited() {
        let p = Policy::empty();
        assert_eq!(enforce(&p, &id(1), &id(1)), SAME);
        assert_eq!(enforce(&p, &both(1, "a/b"), &path("A/B")), SAME);
        assert_eq!(enforce(&p, &both(1, "a/b"), &id(1)), SAME);
        // Unrelated forms of possibly the same project do not count as the same.
        assert_eq!(enforce(&p, &id(1), &path("a/b")), DENY_OUT);
    }

    #[test]
    fn empty_policy_limits_everything() {
        let p = Policy::empty();
        assert_eq!(enforce(&p, &both(1, "a/b"), &both(2, "a/c")), DENY_OUT);
        assert_eq!(
            decide(&p, Mode::Report, &id(1), &id(2)),
            Decision::WouldDeny(Limit::Outbound)
        );
    }

    #[test]
    fn outbound_on_and_off() {
        let p = policy(
            OPEN,
            vec![
                project(
                    Some(1),
                    Some("acme/bot"),
                    limit(
                        true,
                        &[ProjectRef::Id(2), ProjectRef::path("Acme/App")],
                        &[],
                    ),
                    open(),
                ),
                project(Some(5), Some("acme/free"), open(), open()),
            ],
        );
        assert_eq!(enforce(&p, &id(1), &id(2)), ALLOW);
        assert_eq!(enforce(&p, &id(1), &path("acme/app")), ALLOW);
        assert_eq!(enforce(&p, &id(1), &path("ACME/APP")), ALLOW);
        assert_eq!(enforce(&p, &id(1), &id(3)), DENY_OUT);
        assert_eq!(enforce(&p, &id(1), &path("acme/other")), DENY_OUT);
        // Outbound off: anything goes out (inbound is open by default here).
        assert_eq!(enforce(&p, &id(5), &id(3)), ALLOW);
    }

    #[test]
    fn inbound_on_and_off() {
        let p = policy(
            OPEN,
            vec![
                project(
                    Some(2),
                    Some("acme/app"),
                    open(),
                    limit(true, &[ProjectRef::Id(1), ProjectRef::path("acme/ci")], &[]),
                ),
                project(Some(3), Some("acme/open"), open(), open()),
            ],
        );
        assert_eq!(enforce(&p, &id(1), &id(2)), ALLOW);
        assert_eq!(enforce(&p, &path("ACME/CI"), &id(2)), ALLOW);
        assert_eq!(enforce(&p, &id(9), &id(2)), DENY_IN);
        assert_eq!(enforce(&p, &id(9), &path("acme/app")), DENY_IN);
        assert_eq!(enforce(&p, &id(9), &id(3)), ALLOW);
    }

    #[test]
    fn both_limits_must_pass_and_outbound_is_named_first() {
        let p = policy(
            Defaults::default(),
            vec![
                project(
                    Some(1),
                    Some("a/bot"),
                    limit(true, &[ProjectRef::Id(2)], &[]),
                    open(),
                ),
                project(Some(2), Some("a/app"), open(), limit(true, &[], &[])),
                project(
                    Some(3),
                    Some("a/lib"),
                    open(),
                    limit(true, &[ProjectRef::Id(1)], &[]),
                ),
            ],
        );
        assert_eq!(enforce(&p, &id(1), &id(2)), DENY_IN);
        assert_eq!(enforce(&p, &id(1), &id(3)), DENY_OUT);
        assert_eq!(enforce(&p, &id(2), &id(3)), DENY_IN);
    }

    #[test]
    fn groups_cover_subgroups_outbound() {
        let p = policy(
            OPEN,
            vec![project(
                Some(1),
                Some("x/bot"),
                limit(true, &[], &["Acme/Platform"]),
                open(),
            )],
        );
        assert_eq!(enforce(&p, &id(1), &path("acme/platform/app")), ALLOW);
        assert_eq!(
            enforce(&p, &id(1), &path("acme/platform/deep/er/app")),
            ALLOW
        );
        assert_eq!(enforce(&p, &id(1), &both(8, "ACME/Platform/App")), ALLOW);
        assert_eq!(enforce(&p, &id(1), &path("acme/platform")), DENY_OUT);
        assert_eq!(enforce(&p, &id(1), &path("acme/platformx/app")), DENY_OUT);
        assert_eq!(enforce(&p, &id(1), &path("acme/app")), DENY_OUT);
        // A target named by id only has no known path, hence no groups.
        assert_eq!(enforce(&p, &id(1), &id(8)), DENY_OUT);
    }

    #[test]
    fn groups_cover_subgroups_inbound() {
        let p = policy(
            OPEN,
            vec![project(
                Some(2),
                Some("acme/app"),
                open(),
                limit(true, &[], &["acme"]),
            )],
        );
        assert_eq!(enforce(&p, &path("acme/x"), &id(2)), ALLOW);
        assert_eq!(enforce(&p, &both(7, "acme/sub/group/x"), &id(2)), ALLOW);
        assert_eq!(enforce(&p, &path("other/acme/x"), &id(2)), DENY_IN);
        assert_eq!(enforce(&p, &id(7), &id(2)), DENY_IN);
    }

    #[test]
    fn unlisted_projects_take_defaults() {
        let out_only = Defaults {
            outbound: true,
            inbound: false,
            report_only: false,
        };
        let p = policy(out_only, vec![project(Some(1), None, open(), open())]);
        assert_eq!(enforce(&p, &id(5), &id(6)), DENY_OUT);
        assert_eq!(enforce(&p, &id(5), &id(1)), DENY_OUT);
        assert_eq!(enforce(&p, &id(1), &id(5)), ALLOW);
        let in_only = Defaults {
            outbound: false,
            inbound: true,
            report_only: false,
        };
        let p = policy(in_only, vec![project(Some(1), None, open(), open())]);
        assert_eq!(enforce(&p, &id(5), &id(6)), DENY_IN);
        assert_eq!(enforce(&p, &id(1), &id(6)), DENY_IN);
        assert_eq!(enforce(&p, &id(5), &id(1)), ALLOW);
        let p = policy(OPEN, vec![]);
        assert_eq!(enforce(&p, &id(5), &id(6)), ALLOW);
    }

    #[test]
    fn report_only_softens_its_own_side_only() {
        let mut origin_ro = project(Some(1), None, limit(true, &[], &[]), open());
        origin_ro.report_only = true;
        let mut target_ro = project(Some(2), None, open(), limit(true, &[], &[]));
        target_ro.report_only = true;
        let strict_out = project(Some(3), None, limit(true, &[], &[]), open());
        let strict_in = project(Some(4), None, open(), limit(true, &[], &[]));
        let p = policy(OPEN, vec![origin_ro, target_ro, strict_out, strict_in]);
        // Origin's report_only softens its outbound denial…
        assert_eq!(
            enforce(&p, &id(1), &id(9)),
            Decision::WouldDeny(Limit::Outbound)
        );
        // …but not the target's inbound denial.
        assert_eq!(enforce(&p, &id(1), &id(4)), DENY_IN);
        // Target's report_only softens its inbound denial…
        assert_eq!(
            enforce(&p, &id(9), &id(2)),
            Decision::WouldDeny(Limit::Inbound)
        );
        // …but not the origin's outbound denial.
        assert_eq!(enforce(&p, &id(3), &id(2)), DENY_OUT);
        // Both softened: the outbound one is named.
        assert_eq!(
            enforce(&p, &id(1), &id(2)),
            Decision::WouldDeny(Limit::Outbound)
        );
    }

    #[test]
    fn defaults_report_only_applies_to_unlisted_projects_only() {
        let d = Defaults {
            outbound: true,
            inbound: true,
            report_only: true,
        };
        let listed = project(Some(1), None, limit(true, &[], &[]), limit(true, &[], &[]));
        // ProjectSpec::new took report_only from the defaults; a listed entry says false here.
        let p = policy(
            d,
            vec![ProjectSpec {
                report_only: false,
                ..listed
            }],
        );
        assert_eq!(
            enforce(&p, &id(5), &id(6)),
            Decision::WouldDeny(Limit::Outbound)
        );
        assert_eq!(enforce(&p, &id(1), &id(6)), DENY_OUT);
        assert_eq!(enforce(&p, &id(5), &id(1)), DENY_IN);
        assert_eq!(
            enforce(&p, &id(6), &id(5)),
            Decision::WouldDeny(Limit::Outbound)
        );
    }

    #[test]
    fn report_mode_softens_every_denial() {
        let p = policy(
            Defaults::default(),
            vec![project(Some(2), None, open(), limit(true, &[], &[]))],
        );
        assert_eq!(
            decide(&p, Mode::Report, &id(1), &id(3)),
            Decision::WouldDeny(Limit::Outbound)
        );
        let p = policy(
            OPEN,
            vec![project(Some(2), None, open(), limit(true, &[], &[]))],
        );
        assert_eq!(
            decide(&p, Mode::Report, &id(1), &id(2)),
            Decision::WouldDeny(Limit::Inbound)
        );
        assert_eq!(decide(&p, Mode::Report, &id(1), &id(3)), ALLOW);
        assert_eq!(decide(&p, Mode::Report, &id(1), &id(1)), SAME);
    }

    #[test]
    fn naming_rule_7_id_and_path_forms_are_kept_apart() {
        // The bot allows 20 by id and acme/lib by path; neither is listed with both forms.
        let p = policy(
            OPEN,
            vec![
                project(
                    Some(1),
                    Some("acme/bot"),
                    limit(
                        true,
                        &[
                            ProjectRef::Id(20),
                            ProjectRef::path("acme/lib"),
                            ProjectRef::Id(30),
                        ],
                        &[],
                    ),
                    open(),
                ),
                project(Some(30), Some("acme/known"), open(), open()),
            ],
        );
        let target = |r: ProjectRef| p.identify(&r);
        assert_eq!(enforce(&p, &id(1), &target(ProjectRef::Id(20))), ALLOW);
        // Project 20 named by its path: the file does not say it is 20.
        assert_eq!(
            enforce(&p, &id(1), &target(ProjectRef::path("acme/twenty"))),
            DENY_OUT
        );
        assert_eq!(
            enforce(&p, &id(1), &target(ProjectRef::path("acme/lib"))),
            ALLOW
        );
        // acme/lib named by an id: unknown, denied.
        assert_eq!(enforce(&p, &id(1), &target(ProjectRef::Id(40))), DENY_OUT);
        // 30 is listed with both forms: either name matches the id entry.
        assert_eq!(
            enforce(&p, &id(1), &target(ProjectRef::path("Acme/Known"))),
            ALLOW
        );
        // An origin the forge described by id and path is known by both.
        let p2 = policy(
            OPEN,
            vec![project(
                Some(2),
                None,
                open(),
                limit(true, &[ProjectRef::path("acme/bot")], &[]),
            )],
        );
        assert_eq!(
            enforce(&p2, &p2.identify_origin(1, Some("acme/bot")), &id(2)),
            ALLOW
        );
        assert_eq!(enforce(&p2, &p2.identify_origin(1, None), &id(2)), DENY_IN);
    }

    #[test]
    fn explanation_says_what_matched() {
        let p = policy(
            Defaults::default(),
            vec![project(
                Some(1),
                Some("acme/bot"),
                limit(true, &[], &["acme"]),
                open(),
            )],
        );
        let (o, t) = (both(1, "acme/bot"), path("acme/app"));
        let e = explain(&p, Mode::Enforce, &o, &t);
        assert_eq!(e.decision, DENY_IN);
        let out = e.outbound.unwrap();
        assert_eq!(out.matched, Some(AllowMatch::Group("acme")));
        assert!(out.listed && out.passed());
        let inb = e.inbound.unwrap();
        assert!(!inb.listed && !inb.passed() && !inb.softened);
        let text = e.to_string();
        assert!(text.starts_with("deny (inbound_limit)"), "{text}");
        assert!(text.contains("allowed by group acme"), "{text}");
        assert!(text.contains("[defaults]"), "{text}");
        let same = explain(&p, Mode::Enforce, &o, &o);
        assert!(same.outbound.is_none() && same.to_string().contains("same project"));
    }

    #[test]
    fn a_hundred_thousand_projects_still_decide() {
        // 100k projects, 1M allowlist entries: each project allows the next five by id (out)
        // and the previous five by path (in), and every tenth allows a group.
        const N: u64 = 100_000;
        let path_of = |i: u64| format!("g{}/s{}/p{i}", i % 100, i % 7);
        let projects = (1..=N)
            .map(|i| {
                let out: Vec<ProjectRef> = (1..=5)
                    .map(|k| ProjectRef::Id((i + k - 1) % N + 1))
                    .collect();
                let inb: Vec<ProjectRef> = (1..=5)
                    .map(|k| ProjectRef::path(&path_of((i + N - k - 1) % N + 1)))
                    .collect();
                let groups: Vec<String> = if i % 10 == 0 {
                    vec![format!("g{}", i % 100 + 1)]
                } else {
                    vec![]
                };
                ProjectSpec {
                    outbound: LimitSpec {
                        enabled: true,
                        allow: out,
                        allow_groups: groups,
                    },
                    inbound: LimitSpec {
                        enabled: true,
                        allow: inb,
                        allow_groups: vec![],
                    },
                    ..ProjectSpec::new(Some(i), Some(&path_of(i)), &Defaults::default())
                }
            })
            .collect();
        let p = Policy::build(Defaults::default(), projects, vec![], String::new());
        assert_eq!(p.project_count(), N as usize);
        let o = p.identify_origin(500, None);
        for (t, want) in [
            (ProjectRef::Id(501), ALLOW),
            (ProjectRef::path(&path_of(505)), ALLOW),
            (ProjectRef::Id(506), DENY_OUT),
            (ProjectRef::Id(499), DENY_OUT),
            (ProjectRef::Id(500), SAME),
            (ProjectRef::Id(N + 7), DENY_OUT),
        ] {
            assert_eq!(enforce(&p, &o, &p.identify(&t)), want, "{t}");
        }
        // Wrap-around, and a group entry (project 1000 allows group g1).
        assert_eq!(
            enforce(
                &p,
                &p.identify_origin(N, None),
                &p.identify(&ProjectRef::Id(1))
            ),
            ALLOW
        );
        // Project 1000 also allows group g1 outbound: 1101 (g1/…) is let out by the group, but
        // 1101's inbound allowlist (1096..=1100 by path) does not let 1000 in.
        let o1000 = p.identify_origin(1000, None);
        let t = p.identify(&ProjectRef::Id(1101));
        assert_eq!(t.path.as_deref(), Some(path_of(1101).as_str()));
        let e = explain(&p, Mode::Enforce, &o1000, &t);
        assert_eq!(e.outbound.unwrap().matched, Some(AllowMatch::Group("g1")));
        assert_eq!(e.decision, DENY_IN);
        assert_eq!(enforce(&p, &p.identify_origin(1096, None), &t), ALLOW);
        assert_eq!(enforce(&p, &p.identify_origin(999, None), &t), DENY_OUT);
        assert_eq!(
            enforce(&p, &o1000, &p.identify(&ProjectRef::Id(1005))),
            ALLOW
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod props {
    //! Property tests over random small policies (a universe of 8 projects and 6 groups, so that
    //! random allowlists hit often).
    use super::*;
    use crate::policy::{Defaults, LimitSpec, ProjectSpec};
    use crate::project::ProjectRef;
    use proptest::prelude::*;

    pub(crate) const PATHS: [&str; 8] = [
        "a/p1", "a/b/p2", "a/b/c/p3", "x/p4", "x/y/p5", "a/p6", "q/p7", "z/z/p8",
    ];
    const GROUPS: [&str; 6] = ["a", "a/b", "a/b/c", "x", "x/y", "z"];

    /// Project `i` (0-based) named by id, by path, or by both.
    pub(crate) fn identity(i: usize, form: u8) -> ProjectIdentity {
        ProjectIdentity {
            id: (form != 1).then_some(i as u64 + 1),
            path: (form != 0).then(|| PATHS[i].into()),
        }
    }

    pub(crate) fn project_ref() -> impl Strategy<Value = ProjectRef> {
        prop_oneof![
            (1u64..=8).prop_map(ProjectRef::Id),
            (0usize..8).prop_map(|i| ProjectRef::path(&PATHS[i].to_ascii_uppercase())),
        ]
    }

    pub(crate) fn group() -> impl Strategy<Value = String> {
        (0usize..GROUPS.len()).prop_map(|i| GROUPS[i].to_owned())
    }

    fn limit() -> impl Strategy<Value = LimitSpec> {
        (
            any::<bool>(),
            prop::collection::vec(project_ref(), 0..4),
            prop::collection::vec(group(), 0..2),
        )
            .prop_map(|(enabled, allow, allow_groups)| LimitSpec {
                enabled,
                allow,
                allow_groups,
            })
    }

    pub(crate) fn defaults() -> impl Strategy<Value = Defaults> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(outbound, inbound, report_only)| Defaults {
                outbound,
                inbound,
                report_only,
            },
        )
    }

    /// Projects 1..=6 may be listed (8 and 7 never are), each by id, path or both.
    pub(crate) fn projects() -> impl Strategy<Value = Vec<ProjectSpec>> {
        prop::collection::vec(
            prop::option::of((0u8..3, any::<bool>(), limit(), limit())),
            6,
        )
        .prop_map(|slots| {
            slots
                .into_iter()
                .enumerate()
                .filter_map(|(i, slot)| {
                    let (form, report_only, outbound, inbound) = slot?;
                    let who = identity(i, form);
                    Some(ProjectSpec {
                        id: who.id,
                        path: who.path.as_deref().map(String::from),
                        report_only,
                        outbound,
                        inbound,
                        line: None,
                    })
                })
                .collect()
        })
    }

    /// An origin or target: raw (as a request might name it) or completed from the policy.
    #[derive(Clone, Debug)]
    struct Who {
        index: usize,
        form: u8,
        complete: bool,
    }

    fn who() -> impl Strategy<Value = Who> {
        (0usize..8, 0u8..3, any::<bool>()).prop_map(|(index, form, complete)| Who {
            index,
            form,
            complete,
        })
    }

    impl Who {
        fn resolve(&self, p: &Policy) -> ProjectIdentity {
            let raw = identity(self.index, self.form);
            if !self.complete {
                return raw;
            }
            match (raw.id, &raw.path) {
                (Some(id), path) => p.identify_origin(id, path.as_deref()),
                (None, Some(path)) => p.identify(&ProjectRef::Path(Box::from(&**path))),
                (None, None) => raw,
            }
        }
    }

    fn rank(d: Decision) -> u8 {
        match d {
            Decision::Deny(_) => 0,
            Decision::WouldDeny(_) => 1,
            Decision::Allow(_) => 2,
        }
    }

    fn build(d: Defaults, projects: &[ProjectSpec]) -> Policy {
        Policy::build(d, projects.to_vec(), vec![], String::new())
    }

    #[derive(Clone, Debug)]
    enum Addition {
        Project(ProjectRef),
        Group(String),
    }

    fn addition() -> impl Strategy<Value = Addition> {
        prop_oneof![
            project_ref().prop_map(Addition::Project),
            group().prop_map(Addition::Group)
        ]
    }

    fn modes() -> [Mode; 2] {
        [Mode::Enforce, Mode::Report]
    }

    proptest! {
        #[test]
        fn adding_an_allowlist_entry_never_restricts(
            d in defaults(), ps in projects(), o in who(), t in who(),
            k in any::<prop::sample::Index>(), outbound in any::<bool>(), add in addition(),
        ) {
            prop_assume!(!ps.is_empty());
            let before = build(d, &ps);
            let mut more = ps.clone();
            let spec = &mut more[k.index(ps.len())];
            let list = if outbound { &mut spec.outbound } else { &mut spec.inbound };
            match add {
                Addition::Project(r) => list.allow.push(r),
                Addition::Group(g) => list.allow_groups.push(g),
            }
            let after = build(d, &more);
            for mode in modes() {
                let (o1, t1) = (o.resolve(&before), t.resolve(&before));
                let (o2, t2) = (o.resolve(&after), t.resolve(&after));
                prop_assert_eq!(&o1, &o2);
                let (a, b) = (decide(&before, mode, &o1, &t1), decide(&after, mode, &o2, &t2));
                prop_assert!(rank(b) >= rank(a), "{:?} became {:?}", a, b);
                if a == Decision::Allow(AllowReason::InScope) || a == Decision::Allow(AllowReason::SameProject) {
                    prop_assert_eq!(a, b);
                }
            }
        }

        #[test]
        fn report_mode_never_denies(d in defaults(), ps in projects(), o in who(), t in who()) {
            let p = build(d, &ps);
            let (o, t) = (o.resolve(&p), t.resolve(&p));
            let report = decide(&p, Mode::Report, &o, &t);
            prop_assert!(report.is_forwarded());
            // Report mode changes only whether a denial is enforced, never which limit.
            match (decide(&p, Mode::Enforce, &o, &t), report) {
                (Decision::Allow(a), Decision::Allow(b)) => prop_assert_eq!(a, b),
                (Decision::WouldDeny(_) | Decision::Deny(_), Decision::WouldDeny(_)) => {}
                (e, r) => prop_assert!(false, "enforce {:?} vs report {:?}", e, r),
            }
        }

        #[test]
        fn enabling_report_only_never_denies_what_was_forwarded(
            d in defaults(), ps in projects(), o in who(), t in who(),
            k in any::<prop::sample::Index>(), on_defaults in any::<bool>(),
        ) {
            let before = build(d, &ps);
            let mut d2 = d;
            let mut more = ps.clone();
            if on_defaults || more.is_empty() {
                d2.report_only = true;
            } else {
                let n = more.len();
                more[k.index(n)].report_only = true;
            }
            let after = build(d2, &more);
            for mode in modes() {
                let (o1, t1) = (o.resolve(&before), t.resolve(&before));
                let a = decide(&before, mode, &o1, &t1);
                let b = decide(&after, mode, &o.resolve(&after), &t.resolve(&after));
                prop_assert!(rank(b) >= rank(a), "{:?} became {:?}", a, b);
                if a.is_forwarded() {
                    prop_assert!(b.is_forwarded());
                }
            }
        }

        #[test]
        fn turning_a_limit_off_never_restricts(
            d in defaults(), ps in projects(), o in who(), t in who(),
            k in any::<prop::sample::Index>(), outbound in any::<bool>(),
        ) {
            prop_assume!(!ps.is_empty());
            let before = build(d, &ps);
            let mut more = ps.clone();
            let spec = &mut more[k.index(ps.len())];
            if outbound { spec.outbound.enabled = false } else { spec.inbound.enabled = false }
            let after = build(d, &more);
            let (o, t) = (o.resolve(&before), t.resolve(&before));
            let a = decide(&before, Mode::Enforce, &o, &t);
            let b = decide(&after, Mode::Enforce, &o, &t);
            prop_assert!(rank(b) >= rank(a), "{:?} became {:?}", a, b);
        }

        #[test]
        fn decide_is_deterministic_and_agrees_with_explain(
            d in defaults(), ps in projects(), o in who(), t in who(), report in any::<bool>(),
        ) {
            let mode = if report { Mode::Report } else { Mode::Enforce };
            // Two builds: different hash seeds, same answers.
            let (p1, p2) = (build(d, &ps), build(d, &ps));
            let (o1, t1) = (o.resolve(&p1), t.resolve(&p1));
            let first = decide(&p1, mode, &o1, &t1);
            prop_assert_eq!(first, decide(&p1, mode, &o1, &t1));
            prop_assert_eq!(first, decide(&p2, mode, &o.resolve(&p2), &t.resolve(&p2)));
            let e = explain(&p1, mode, &o1, &t1);
            prop_assert_eq!(e.decision, first);
            prop_assert!(!e.to_string().is_empty());
            if o1.same_as(&t1) || same_project(&o1, &t1) {
                prop_assert_eq!(first, Decision::Allow(AllowReason::SameProject));
            }
            // Letter case of a raw path never changes anything.
            let upper = ProjectIdentity { id: t1.id, path: t1.path.as_deref().map(|p| p.to_ascii_uppercase().into()) };
            prop_assert_eq!(first, decide(&p1, mode, &o1, &upper));
        }
    }
}
