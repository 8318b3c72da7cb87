"""python-gitlab against scopegate's management API, as a project maintainer would use it.

Run by tests/manage_python.rs:
    manage_scope.py GATEWAY_URL SCOPE_FILE
with MAINTAINER, DEVELOPER and OTHER_JOB_TOKEN in the environment. Exits non-zero on the first
failed check; prints one line per check.
"""

import os
import sys

import gitlab
import requests

GW, SCOPES = sys.argv[1], sys.argv[2]
MAINTAINER = os.environ["MAINTAINER"]
DEVELOPER = os.environ["DEVELOPER"]
OTHER_JOB = os.environ["OTHER_JOB_TOKEN"]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def job_call():
    """globex/tool's CI job token on acme/app: the request each change decides."""
    r = requests.get(
        f"{GW}/api/v4/projects/12/merge_requests",
        headers={"JOB-TOKEN": OTHER_JOB},
        timeout=30,
    )
    return r.status_code


def on_disk():
    with open(SCOPES, encoding="utf-8") as f:
        return f.read()


def expect_error(fn, cls, code, what):
    try:
        fn()
    except cls as e:
        check(e.response_code == code, f"{what}: {code} (got {e.response_code}: {e})")
        return e
    check(False, f"{what}: expected {cls.__name__} {code}, the call succeeded")


gl = gitlab.Gitlab(f"{GW}/-/scopegate", private_token=MAINTAINER)
project = gl.projects.get(12, lazy=True)

# Read the settings.
scope = project.job_token_scope.get()
check(scope.inbound_enabled is False, "the limit starts off")
check(scope.outbound_enabled is False, "outbound_enabled is reported")
check(job_call() == 200, "limit off: globex/tool's job token reaches acme/app")

# Turn the limit on: in force at once, on disk with the comments kept.
scope.enabled = True
scope.save()
check(job_call() == 403, "limit on: the same request is denied at once")
scope.refresh()
check(scope.inbound_enabled is True, "refresh() reads the limit on")
text = on_disk()
check("enabled = true   # turned on through the API" in text, "on disk, comment kept")
check(text.startswith("# Managed scope file"), "the file's header comment is kept")

# Add a project.
scope.allowlist.create({"target_project_id": 30})
check(job_call() == 200, "globex/tool allowed: the request passes again")
listed = [p.id for p in scope.allowlist.list(get_all=True)]
check(listed == [12, 30, 10], f"allowlist lists itself, globex/tool, the bot: {listed}")
tool = [p for p in scope.allowlist.list(get_all=True) if p.id == 30][0]
check(tool.path_with_namespace == "globex/tool", "projects come with their path")
check('"acme/deploy-bot", 30]' in on_disk(), "the entry is on disk")
expect_error(
    lambda: scope.allowlist.create({"target_project_id": 30}),
    gitlab.GitlabCreateError,
    400,
    "adding it twice",
)
expect_error(
    lambda: scope.allowlist.create({"target_project_id": 40}),
    gitlab.GitlabCreateError,
    404,
    "adding a project the maintainer cannot see",
)

# Pagination: python-gitlab follows the Link header.
paged = [p.id for p in scope.allowlist.list(iterator=True, per_page=1)]
check(paged == [12, 30, 10], f"per_page=1 walks every page: {paged}")

# Remove it.
scope.allowlist.delete(30)
check(job_call() == 403, "removed: denied again")
check(" 30]" not in on_disk(), "gone from disk")

# Groups.
scope.groups_allowlist.create({"target_group_id": 3})
check(job_call() == 200, "the globex group allowed: the request passes")
groups = scope.groups_allowlist.list(get_all=True)
check([g.id for g in groups] == [3], "groups_allowlist lists it")
check(groups[0].name == "globex" and groups[0].web_url.endswith("/groups/globex"), "group shape")
check('allow_groups = ["globex"]' in on_disk(), "stored by full path")
groups[0].delete()
check(job_call() == 403, "group removed: denied again")

# A Developer can neither read nor change anything, and the file does not move.
before = on_disk()
dev = gitlab.Gitlab(f"{GW}/-/scopegate", private_token=DEVELOPER)
dev_project = dev.projects.get(12, lazy=True)
expect_error(dev_project.job_token_scope.get, gitlab.GitlabGetError, 403, "developer reads")
expect_error(
    lambda: dev_project.job_token_scope.update(new_data={"enabled": False}),
    gitlab.GitlabUpdateError,
    403,
    "developer turns the limit off",
)
expect_error(
    lambda: dev.http_post(
        "/projects/12/job_token_scope/allowlist", post_data={"target_project_id": 30}
    ),
    gitlab.GitlabHttpError,
    403,
    "developer adds a project",
)
check(on_disk() == before, "the developer changed nothing on disk")
check(job_call() == 403, "nor in force")

expect_error(
    gl.projects.get(999, lazy=True).job_token_scope.get,
    gitlab.GitlabGetError,
    404,
    "unknown project",
)
print("ALL OK", flush=True)
