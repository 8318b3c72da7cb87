//! Users, projects and groups of the stand-in forge for the management API tests, and the
//! scope file those tests start from (with comments that must survive every write).

use scopegate::standin::{Directory, StandinGroup, StandinProject, StandinUser};

use super::{APP, BOT};

/// Maintainer of acme/app (12).
pub const MAINTAINER: &str = "glpat-maintainer-0001";
/// Owner of the `acme` group (so of every acme project).
pub const OWNER: &str = "glpat-owner-0002";
/// Developer of acme/app.
pub const DEVELOPER: &str = "glpat-developer-0003";
/// Maintainer of globex/tool only; cannot see acme/app.
pub const OUTSIDER: &str = "glpat-outsider-0004";

/// Many public projects (ids 101..=140, `acme/many/p<id>`) for the concurrency tests.
pub const MANY: std::ops::RangeInclusive<u64> = 101..=140;

pub fn directory() -> Directory {
    let user = |token: &str, name: &str, projects: Vec<(u64, u64)>, groups: Vec<(&str, u64)>| {
        StandinUser {
            token: token.into(),
            username: name.into(),
            projects,
            groups: groups
                .into_iter()
                .map(|(g, l)| (g.to_string(), l))
                .collect(),
        }
    };
    let project = |id, path: &str, public| StandinProject {
        id,
        path: path.into(),
        public,
    };
    let group = |id, path: &str, public| StandinGroup {
        id,
        full_path: path.into(),
        public,
    };
    let mut projects = vec![
        project(10, "acme/deploy-bot", false),
        project(12, "acme/app", false),
        project(14, "acme/legacy", false),
        project(16, "acme/rollout", false),
        project(20, "acme/platform/ci", true),
        project(21, "acme/platform/sub/tooling", true),
        project(30, "globex/tool", true),
        project(40, "globex/secret", false),
    ];
    projects.extend(MANY.map(|i| project(i, &format!("acme/many/p{i}"), true)));
    Directory {
        users: vec![
            user(MAINTAINER, "maria", vec![(12, 40)], vec![]),
            user(OWNER, "olga", vec![], vec![("acme", 50)]),
            user(DEVELOPER, "dave", vec![(12, 30)], vec![]),
            user(OUTSIDER, "otto", vec![(30, 40)], vec![]),
        ],
        projects,
        groups: vec![
            group(1, "acme", false),
            group(2, "acme/platform", true),
            group(3, "globex", true),
            group(4, "acme/many", true),
            group(5, "hidden", false),
        ],
        // acme/app's and the bot's jobs run as maria.
        job_users: vec![(APP.into(), "maria".into()), (BOT.into(), "maria".into())],
    }
}

/// acme/app (12) starts with its inbound limit off; globex/tool (30) is another customer whose
/// job token the tests use to see each change take effect.
pub const MANAGED: &str = r#"# Managed scope file: ops comments must survive API writes.
[defaults]
outbound = true
inbound = true

# the bot
[[project]]
id = 10
path = "acme/deploy-bot"

[project.outbound]
enabled = true
allow = ["acme/app"]   # where it deploys
allow_groups = ["acme/platform"]

[project.inbound]
enabled = false

# the app: its maintainers manage it through the API
[[project]]
id = 12
path = "acme/app"

[project.outbound]
enabled = false

[project.inbound]
enabled = false   # turned on through the API
allow = ["acme/deploy-bot"]

[[project]]
id = 14
path = "acme/legacy"
inbound = { enabled = false }
outbound = { enabled = false }

[[project]]
id = 30
path = "globex/tool"   # another customer

[project.outbound]
enabled = false
"#;
