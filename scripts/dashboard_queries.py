#!/usr/bin/env python3
"""Print every PromQL query of a Grafana dashboard, with its variables substituted.

One JSON object per line: {"panel": TITLE, "ref": REF_ID, "expr": PROMQL}, in dashboard
order. Grafana variables are replaced so that the expression is plain PromQL that Prometheus
(or `promtool`) can parse and run:

  $model, ${model}, ${model:regex}, [[model]]   the variable's "All" value (.*), or --var
  $__rate_interval, $__interval, $__range         1m, 15s, 1h unless given with --var

Used by scripts/check_deploy.sh (with --as-rules, to have promtool parse every query offline)
and scripts/check_prometheus_live.sh (to run every query against a live Prometheus).
Standard library only, so any python3 runs it.

  scripts/dashboard_queries.py                                  # JSON lines
  scripts/dashboard_queries.py --var model=iris --var __rate_interval=30s
  scripts/dashboard_queries.py --as-rules > /tmp/q.rules.json && promtool check rules /tmp/q.rules.json

Exits 1, naming the panel, when the dashboard is malformed: a panel without a query, a query
that is empty, a variable that is neither defined nor given, a datasource other than the
provisioned one, or two panels with the same title (titles identify panels in the checks).
"""

import argparse
import json
import os
import re
import sys

DEFAULT_DASHBOARD = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "grafana", "dashboards", "flotilla.json"
)
# Grafana's built-in interval variables, with values that suit a 15 s scrape interval.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}
DATASOURCE_UID = "prometheus"
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def panels_of(dashboard):
    """Every panel, rows' nested panels included, in order."""
    for panel in dashboard.get("panels", []):
        yield panel
        for inner in panel.get("panels", []) or []:
            yield inner


def variable_defaults(dashboard):
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var["name"]
        if var.get("includeAll") and var.get("allValue"):
            values[name] = var["allValue"]
        elif var.get("includeAll"):
            values[name] = ".*"
        else:
            current = var.get("current", {}).get("value")
            values[name] = current[0] if isinstance(current, list) and current else (current or ".*")
    return values


def substitute(expr, values, where, problems):
    def replace(match):
        name = next(g for g in match.groups() if g)
        if name not in values:
            problems.append(f"{where}: unknown variable ${name}")
            return match.group(0)
        return values[name]

    return VARIABLE.sub(replace, expr)


def queries(dashboard, overrides):
    """(queries, problems): queries as dicts panel/ref/expr."""
    values = dict(BUILTINS)
    values.update(variable_defaults(dashboard))
    values.update(overrides)
    out, problems, titles = [], [], {}
    for panel in panels_of(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "")
        where = f"panel {title!r} (id {panel.get('id')})"
        if not title:
            problems.append(f"{where}: no title")
        if title in titles:
            problems.append(f"{where}: same title as panel id {titles[title]}")
        titles[title] = panel.get("id")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        for source in [panel.get("datasource")] + [t.get("datasource") for t in targets]:
            if source is not None and source.get("uid") != DATASOURCE_UID:
                problems.append(f"{where}: datasource {source!r} is not the provisioned uid {DATASOURCE_UID!r}")
        for target in targets:
            expr = (target.get("expr") or "").strip()
            ref = target.get("refId", "")
            if not expr:
                problems.append(f"{where} query {ref}: empty expression")
                continue
            out.append({"panel": title, "ref": ref, "expr": substitute(expr, values, f"{where} query {ref}", problems)})
    return out, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboard", nargs="?", default=DEFAULT_DASHBOARD, help="dashboard JSON file")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="value of a variable")
    parser.add_argument("--as-rules", action="store_true",
                        help="print a Prometheus rules file (JSON, which is YAML) recording every query, for promtool check rules")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--var {item!r}: expected NAME=VALUE")
        overrides[name.lstrip("$")] = value
    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    found, problems = queries(dashboard, overrides)
    if problems:
        for problem in problems:
            print(f"{args.dashboard}: {problem}", file=sys.stderr)
        return 1
    if args.as_rules:
        rules = [{"record": f"dashboard:query_{i}", "expr": q["expr"]} for i, q in enumerate(found)]
        json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sys.stdout, indent=1)
        print()
    else:
        for q in found:
            print(json.dumps(q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
