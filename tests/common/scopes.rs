//! The scope file most gateway tests run against.

/// acme/deploy-bot (10) is the bot: outbound-limited to acme/app, project 14 and the
/// acme/platform group. acme/app (12) is inbound-limited to the bot and acme/platform.
/// acme/legacy (14) is an existing project with both limits off. acme/rollout (16) switched its
/// inbound limit on in report-only mode. globex/tool (30) is another customer.
pub const MATRIX: &str = r#"
# Test scope file
[defaults]
outbound = true
inbound = true

[[project]]
id = 10
path = "acme/deploy-bot"
[project.outbound]
enabled = true
allow = ["acme/app", 14]
allow_groups = ["acme/platform"]
[project.inbound]
enabled = false

[[project]]
id = 12
path = "acme/app"
[project.outbound]
enabled = false
[project.inbound]
enabled = true
allow = ["acme/deploy-bot"]
allow_groups = ["acme/platform"]

[[project]]
id = 14
path = "acme/legacy"
[project.outbound]
enabled = false
[project.inbound]
enabled = false

[[project]]
id = 16
path = "acme/rollout"
report_only = true
[project.outbound]
enabled = false
[project.inbound]
enabled = true

[[project]]
id = 20
path = "acme/platform/ci"
[project.outbound]
enabled = false

[[project]]
id = 21
path = "acme/platform/sub/tooling"
[project.inbound]
enabled = false

[[project]]
id = 30
path = "globex/tool"
[project.outbound]
enabled = false
"#;
