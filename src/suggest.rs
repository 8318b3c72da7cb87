//! `scopegate suggest --project P`: the inbound allowlist that keeps every observed legitimate
//! caller of P working, from the authorization log.
//!
//! Legitimate callers are the origins whose requests to P were allowed or only reported
//! (`would_deny`); denied requests did not work before either. The proposal keeps every entry
//! P's allowlist already has, adds each observed origin not already covered (by id when the log
//! knows it, so that renames do not break it), and, when projects and groups together exceed
//! `max_allowlist`, compacts as GitLab's auto-populate does: the group that is the nearest
//! common parent of the most entries replaces them, again and again, until the list fits
//! (wider groups admit more than was observed; the output says so).
//!
//! `--apply` writes the proposal with the management API's safe writer (format-preserving,
//! atomic, validated) **and turns P's inbound limit on**, as GitLab's
//! `autopopulate_and_enforce` does: the allowlist exists to be enforced, and everything that
//! was observed working keeps working. `--no-enable` writes the allowlist only; `--enforce`
//! also switches the project's `report_only` off (the end of a report-only rollout). A running
//! gateway picks the change up on its next reload (`POST /-/reload`, SIGHUP).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::authlog::{self, Pair};
use crate::cli::SuggestArgs;
use crate::manage::write::{Direction, Entry, Named, ScopeWriter};
use crate::policy::Policy;
use crate::project::{ProjectIdentity, ProjectRef};
use crate::scope::{self, ScopeLimits};
use crate::settings::Settings;
use crate::snapshot::PolicyStore;

/// One project entry of the proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: Option<u64>,
    /// Lowercased full path, when known.
    pub path: Option<String>,
}

impl Candidate {
    fn entry(&self) -> Entry {
        match (self.id, &self.path) {
            (Some(id), _) => Entry::Id(id),
            (None, Some(p)) => Entry::Path(p.clone()),
            (None, None) => Entry::Id(0),
        }
    }
}

/// What `suggest` proposes for one project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub projects: Vec<Candidate>,
    pub groups: Vec<String>,
    /// Origins observed working, with their counts.
    pub observed: Vec<Pair>,
    /// Groups that replaced project entries to stay within the limit.
    pub compacted: Vec<String>,
}

/// Build the proposal. `who` is the project (id and path as far as known).
pub fn propose(
    policy: &Policy,
    who: &ProjectIdentity,
    pairs: &[Pair],
    max: usize,
) -> Result<Proposal, String> {
    let inbound = policy.effective(who).inbound;
    let mut projects: Vec<Candidate> = Vec::new();
    let mut ids: Vec<u64> = inbound.allowed_ids().collect();
    ids.sort_unstable();
    for id in ids {
        let known = policy.identify(&ProjectRef::Id(id));
        projects.push(Candidate {
            id: Some(id),
            path: known.path.as_deref().map(String::from),
        });
    }
    let mut paths: Vec<&str> = inbound.allowed_paths().collect();
    paths.sort_unstable();
    for p in paths {
        projects.push(Candidate {
            id: None,
            path: Some(p.to_string()),
        });
    }
    let mut groups: BTreeSet<String> = inbound.allowed_groups().map(str::to_string).collect();
    let mut observed = Vec::new();
    for pair in pairs.iter().filter(|p| p.legitimate()) {
        let origin = ProjectIdentity {
            id: pair.origin_id,
            path: pair
                .origin_path
                .as_deref()
                .map(|p| p.to_ascii_lowercase().into()),
        };
        if origin.same_as(who) || (origin.id.is_none() && origin.path.is_none()) {
            continue;
        }
        observed.push(pair.clone());
        if inbound.matches(&origin).is_some() {
            continue; // already allowed by an entry P has
        }
        let cand = Candidate {
            id: origin.id,
            path: origin.path.as_deref().map(String::from),
        };
        if !projects.iter().any(|c| {
            (c.id.is_some() && c.id == cand.id) || (c.path.is_some() && c.path == cand.path)
        }) {
            projects.push(cand);
        }
    }
    let compacted = compact(&mut projects, &mut groups, max)?;
    Ok(Proposal {
        projects,
        groups: groups.into_iter().collect(),
        observed,
        compacted,
    })
}

/// Replace entries by their most common parent group until at most `max` remain.
fn compact(
    projects: &mut Vec<Candidate>,
    groups: &mut BTreeSet<String>,
    max: usize,
) -> Result<Vec<String>, String> {
    let mut added = Vec::new();
    while projects.len() + groups.len() > max {
        // Parent group of every entry whose path is known, counted.
        let mut parents: BTreeMap<String, usize> = BTreeMap::new();
        let parent = |p: &str| p.rsplit_once('/').map(|(g, _)| g.to_string());
        for p in projects.iter().filter_map(|c| c.path.as_deref()) {
            if let Some(g) = parent(p) {
                *parents.entry(g).or_default() += 1;
            }
        }
        for g in groups.iter() {
            if let Some(g) = parent(g) {
                *parents.entry(g).or_default() += 1;
            }
        }
        // The most entries; among equals the deepest (narrowest), then the first by name.
        let Some((best, _)) = parents.into_iter().max_by(|(a, na), (b, nb)| {
            na.cmp(nb)
                .then(a.matches('/').count().cmp(&b.matches('/').count()))
                .then(b.cmp(a))
        }) else {
            return Err(format!(
                "cannot fit the allowlist within max_allowlist ({max}): {} project and {} group entries remain and none can be merged into a parent group",
                projects.len(),
                groups.len()
            ));
        };
        let under = |p: &str| {
            p.len() > best.len() && p.starts_with(&best) && p.as_bytes()[best.len()] == b'/'
        };
        projects.retain(|c| !c.path.as_deref().is_some_and(under));
        groups.retain(|g| !under(g));
        groups.insert(best.clone());
        added.retain(|g: &String| !under(g));
        added.push(best);
    }
    added.sort();
    added.dedup();
    Ok(added)
}

/// `scopegate suggest`.
pub fn run(args: &SuggestArgs) -> ExitCode {
    match suggest(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn suggest(args: &SuggestArgs) -> Result<(), String> {
    let settings = match &args.config {
        Some(c) => Settings::load(c).map_err(|e| e.to_string())?,
        None => Settings::default(),
    };
    let scopes: PathBuf = args
        .scopes
        .clone()
        .or(settings.scopes.clone())
        .ok_or("no scope file: pass --scopes FILE or --config FILE")?;
    let state_dir = args.state_dir.clone().unwrap_or(settings.state_dir.clone());
    let limits = ScopeLimits {
        max_allowlist: settings.max_allowlist.max(1),
    };
    let loaded = scope::load_file(&scopes, &limits).map_err(|e| e.to_string())?;
    let policy = loaded.policy;

    // The project, as completely as the scope file and the log name it.
    let asked = match args.project.parse::<u64>() {
        Ok(id) => ProjectRef::Id(id),
        Err(_) => ProjectRef::path(&args.project),
    };
    let mut who = policy.identify(&asked);
    let conn = authlog::open(&state_dir, false).map_err(|e| e.to_string())?;
    let mut pairs =
        authlog::query_target(&conn, who.id, who.path.as_deref()).map_err(|e| e.to_string())?;
    if who.id.is_none() || who.path.is_none() {
        // The log may know the other name (the forge told it); look again with both.
        for p in &pairs {
            who.id = who.id.or(p.target_id);
            if who.path.is_none() {
                who.path = p.target_path.as_deref().map(Into::into);
            }
        }
        pairs =
            authlog::query_target(&conn, who.id, who.path.as_deref()).map_err(|e| e.to_string())?;
    }
    let proposal = propose(&policy, &who, &pairs, limits.max_allowlist)?;
    print(&policy, &who, &proposal, limits.max_allowlist);
    if !args.apply {
        println!(
            "\n(dry run: pass --apply to write it{})",
            if args.no_enable {
                ""
            } else {
                " and turn the inbound limit on"
            }
        );
        return Ok(());
    }

    let store = Arc::new(PolicyStore::new(scopes.clone(), limits));
    let writer = ScopeWriter::new(store);
    let named = Named {
        id: who.id,
        path: who.path.as_deref().map(str::to_string),
    };
    let allow: Vec<Entry> = proposal.projects.iter().map(Candidate::entry).collect();
    let groups = proposal.groups.clone();
    let enable = !args.no_enable;
    let enforce = args.enforce;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(writer.apply(move |doc, _| {
            doc.set_lists(&named, Direction::Inbound, &allow, &groups);
            if enable {
                doc.set_enabled(&named, Direction::Inbound, true);
            }
            if enforce {
                doc.set_report_only(&named, false);
            }
            Ok(())
        }))
        .map_err(|e| e.to_string())?;
    println!(
        "\nwritten to {}{}{}; a running gateway uses it after its next reload (POST /-/reload on the admin listener, or SIGHUP)",
        scopes.display(),
        if enable { ", inbound limit on" } else { "" },
        if enforce { ", report_only off" } else { "" },
    );
    if !enforce && policy.effective(&who).report_only {
        println!("note: the project is report-only: denials are still only logged; pass --enforce (or set report_only = false) to enforce");
    }
    Ok(())
}

fn print(policy: &Policy, who: &ProjectIdentity, p: &Proposal, max: usize) {
    let eff = policy.effective(who);
    println!(
        "project {who}: inbound limit {}{}",
        if eff.inbound.enabled() { "on" } else { "off" },
        if eff.report_only {
            " (report-only)"
        } else {
            ""
        }
    );
    println!(
        "observed callers that worked (allowed or would_deny): {}",
        p.observed.len()
    );
    for o in &p.observed {
        let name = match (&o.origin_path, o.origin_id) {
            (Some(path), Some(id)) => format!("{path} (id {id})"),
            (Some(path), None) => path.clone(),
            (None, Some(id)) => format!("project {id}"),
            (None, None) => "?".into(),
        };
        println!(
            "  {name}: allowed {}, would_deny {}, denied {}, last seen {}",
            o.allowed,
            o.would_deny,
            o.denied,
            authlog::rfc3339(o.last_seen_ms)
        );
    }
    println!(
        "proposed inbound allowlist ({} projects, {} groups; max_allowlist {max}):",
        p.projects.len(),
        p.groups.len()
    );
    let allow: Vec<String> = p
        .projects
        .iter()
        .map(|c| match (c.id, &c.path) {
            (Some(id), _) => id.to_string(),
            (None, Some(path)) => format!("\"{path}\""),
            (None, None) => "?".into(),
        })
        .collect();
    let groups: Vec<String> = p.groups.iter().map(|g| format!("\"{g}\"")).collect();
    println!("  allow = [{}]", allow.join(", "));
    println!("  allow_groups = [{}]", groups.join(", "));
    for c in &p.projects {
        if let (Some(id), Some(path)) = (c.id, &c.path) {
            println!("  # {id} is {path}");
        }
    }
    if !p.compacted.is_empty() {
        println!(
            "  compacted to fit: {} now allowed as whole groups (every project under them may come in)",
            p.compacted.join(", ")
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pair(id: u64, path: &str, allowed: u64, would: u64, denied: u64) -> Pair {
        Pair {
            target_id: Some(12),
            target_path: Some("acme/app".into()),
            origin_id: Some(id),
            origin_path: Some(path.into()),
            allowed,
            would_deny: would,
            denied,
            ..Pair::default()
        }
    }

    fn policy(text: &str) -> Policy {
        scope::load_str("t", text, &ScopeLimits::default())
            .unwrap()
            .policy
    }

    const FILE: &str = r#"
[[project]]
id = 12
path = "acme/app"
[project.inbound]
enabled = false
allow = [10]
allow_groups = ["acme/platform"]
"#;

    fn app() -> ProjectIdentity {
        ProjectIdentity {
            id: Some(12),
            path: Some("acme/app".into()),
        }
    }

    #[test]
    fn keeps_entries_adds_legitimate_callers_only() {
        let p = policy(FILE);
        let pairs = vec![
            pair(10, "acme/deploy-bot", 5, 0, 0),
            pair(20, "acme/platform/ci", 1, 0, 0),
            pair(30, "globex/tool", 0, 2, 0),
            pair(40, "evil/thing", 0, 0, 9),
        ];
        let prop = propose(&p, &app(), &pairs, 200).unwrap();
        let ids: Vec<Option<u64>> = prop.projects.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![Some(10), Some(30)]);
        assert_eq!(prop.groups, vec!["acme/platform".to_string()]);
        assert_eq!(prop.observed.len(), 3);
        assert!(prop.compacted.is_empty());
    }

    #[test]
    fn compacts_to_the_most_common_parent_group() {
        let p = policy("");
        let who = ProjectIdentity {
            id: Some(1),
            path: Some("t/t".into()),
        };
        let mut pairs: Vec<Pair> = (0..6)
            .map(|i| pair(100 + i, &format!("acme/team/p{i}"), 1, 0, 0))
            .collect();
        pairs.push(pair(200, "globex/a/x", 1, 0, 0));
        pairs.push(pair(201, "globex/b/y", 1, 0, 0));
        let prop = propose(&p, &who, &pairs, 4).unwrap();
        assert_eq!(prop.groups, vec!["acme/team".to_string()]);
        assert_eq!(prop.projects.len(), 2);
        assert_eq!(prop.compacted, vec!["acme/team".to_string()]);
        // Tighter: the two globex projects merge too.
        let prop = propose(&p, &who, &pairs, 2).unwrap();
        assert_eq!(
            prop.groups,
            vec!["acme/team".to_string(), "globex".to_string()]
        );
        assert!(prop.projects.is_empty());
        // Impossible: two top-level groups cannot merge.
        assert!(propose(&p, &who, &pairs, 1).is_err());
    }
}
