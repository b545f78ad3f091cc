#!/usr/bin/env python3
"""The Python half of scripts/check_deploy.sh: checks that need a YAML parser and jsonschema.

  compose      docker-compose.yml against deploy/compose-spec/compose-spec.json (the Compose
               Specification's JSON schema, vendored with its licence), and every bind-mounted
               ./path exists
  references   hosts Prometheus scrapes are compose services; jobs named in the rules and
               the dashboard are scrape jobs; Grafana's datasource uid is the dashboard's
  alert-tests  every alert in deploy/prometheus/rules/alerts.yml has, in
               deploy/prometheus/tests/*.yml, a case where it fires and one where it does not
  runbooks     every `runbook` annotation points at a heading of docs/operations.md

Prints one line per problem and exits 1 if there was any. Run from anywhere.
"""

import glob
import json
import os
import re
import sys

import jsonschema
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
problems = []


def path(*parts):
    return os.path.join(ROOT, *parts)


def load_yaml(rel):
    with open(path(rel), encoding="utf-8") as f:
        return yaml.safe_load(f)


def problem(section, message):
    problems.append(f"{section}: {message}")


def check_compose():
    schema_file = "deploy/compose-spec/compose-spec.json"
    with open(path(schema_file), encoding="utf-8") as f:
        schema = json.load(f)
    # The schema declares draft-07 (with a URL spelling jsonschema does not look up).
    validator = jsonschema.Draft7Validator(schema)
    compose = load_yaml("docker-compose.yml")
    for error in sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problem("compose", f"docker-compose.yml {where}: {error.message}")
    for name, service in (compose.get("services") or {}).items():
        for volume in service.get("volumes", []) or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("./") and not os.path.exists(path(source)):
                problem("compose", f"service {name} mounts {source}, which does not exist")
    return compose


def check_references(compose):
    services = set((compose.get("services") or {}).keys())
    prometheus = load_yaml("deploy/prometheus/prometheus.yml")
    jobs = set()
    for job in prometheus.get("scrape_configs", []):
        jobs.add(job["job_name"])
        hosts = []
        for sd in job.get("dns_sd_configs", []):
            hosts += sd.get("names", [])
        for static in job.get("static_configs", []):
            hosts += [t.rsplit(":", 1)[0] for t in static.get("targets", [])]
        for host in hosts:
            if host != "localhost" and host not in services:
                problem("references", f"prometheus job {job['job_name']} scrapes {host!r}, not a compose service")
    texts = {}
    for rel in glob.glob(path("deploy/prometheus/rules/*.yml")) + [path("deploy/grafana/dashboards/flotilla.json")]:
        with open(rel, encoding="utf-8") as f:
            texts[os.path.relpath(rel, ROOT)] = f.read()
    for rel, text in texts.items():
        for job in sorted(set(re.findall(r'job\s*=\s*\\?"([^"\\]+)\\?"', text))):
            if job not in jobs:
                problem("references", f"{rel} uses job {job!r}; prometheus.yml scrapes {sorted(jobs)}")
    datasources = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    uids = {d.get("uid") for d in datasources}
    with open(path("deploy/grafana/dashboards/flotilla.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    used = set(re.findall(r'"uid":\s*"([^"]+)"', json.dumps(dashboard))) - {"-- Grafana --", dashboard.get("uid")}
    for uid in sorted(used - uids):
        problem("references", f"dashboard uses datasource uid {uid!r}; provisioned: {sorted(uids)}")
    provider = load_yaml("deploy/grafana/provisioning/dashboards/flotilla.yml")
    mounted = {v.split(":")[1] for v in compose["services"]["grafana"].get("volumes", []) if isinstance(v, str)}
    for p in provider["providers"]:
        if p["options"]["path"] not in mounted:
            problem("references", f"Grafana dashboard provider reads {p['options']['path']}, which compose does not mount")


def alerts():
    names = []
    for group in load_yaml("deploy/prometheus/rules/alerts.yml")["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                names.append((rule["alert"], rule.get("annotations", {})))
    return names


def check_alert_tests():
    firing, quiet = set(), set()
    for rel in glob.glob(path("deploy/prometheus/tests/*.yml")):
        with open(rel, encoding="utf-8") as f:
            tests = yaml.safe_load(f)
        for test in tests.get("tests", []):
            for case in test.get("alert_rule_test", []) or []:
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name, _ in alerts():
        if name not in firing:
            problem("alert-tests", f"{name} has no test case where it fires")
        if name not in quiet:
            problem("alert-tests", f"{name} has no test case where it must not fire")


def anchor(heading):
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_runbooks():
    if not os.path.exists(path("docs/operations.md")):
        problem("runbooks", "docs/operations.md is missing")
        return
    with open(path("docs/operations.md"), encoding="utf-8") as f:
        anchors = {anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", f.read(), re.M)}
    for name, annotations in alerts():
        runbook = annotations.get("runbook", "")
        file, _, fragment = runbook.partition("#")
        if file != "docs/operations.md" or fragment not in anchors:
            problem("runbooks", f"{name}: runbook {runbook!r} is not a heading of docs/operations.md")


def main():
    compose = check_compose()
    check_references(compose)
    check_alert_tests()
    check_runbooks()
    for line in problems:
        print(line)
    if not problems:
        print("compose schema, references, alert test coverage and runbook links: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
