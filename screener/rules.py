"""The flag rules: which users a run flags, and the reason a person reads for each.

A rule is one statement file, ``sql/rules/<rule>.sql``, plus the settings it reads. The file adds the users it
matches to the temp table ``screener_rule_hits``, reading the per-user window statistics that
``sql/flags/user_stats.sql`` puts in ``screener_user_stats`` (counts, negative counts and shares of the short and
long windows, the last N messages and the baseline, the Wilson lower bound, the escalation mark). Every rule binds
``$rule`` (its name), ``$priority`` (its place in ``FLAG_RULES``) and the settings ``FLAG_RULES`` lists for it,
each as ``$<setting>``.

The scan runs every rule of :data:`screener.settings.FLAG_RULES`. A user several rules match is flagged once, under
the first of them in that order, and all flagged users are ranked together by the Wilson lower bound of their
short-window negative share. ``screener_flags`` keeps each flag's rule and reason; the report (HTML, CSV, JSON) and
``screener flags --json`` show them, and the report lists every rule with its description filled in.
``escalating`` is a mark on flagged users, not a rule: on its own it flags nobody.

To add a rule, touch these three places and nothing else:

1. ``sql/rules/<rule>.sql``: ``-- name: <rule>``, then a one-line description for report readers in which
   ``$<setting>`` stands for a setting's value, then the statement::

       INSERT INTO screener_rule_hits (rule, priority, user_id, reason)
       SELECT $rule, $priority, user_id, printf('<reason with %d / %.0f%% slots>', <columns and settings>)
       FROM screener_user_stats
       WHERE <condition on the columns and $settings>;

2. ``screener/settings.py``: a field of ``Settings`` for each new setting (with its range, ``_ranged``), and
   ``"<rule>": ("<setting>", ...)`` in ``FLAG_RULES``, at the place of its priority.
3. ``tests/test_rules.py``: a tiny archive with the users the rule must and must not flag, and the reason it gives,
   computed by hand.
"""

from __future__ import annotations

import re
from typing import Any

from screener import queries
from screener.settings import FLAG_RULES, Settings
from screener.store import Store

_SETTING_REF = re.compile(r"\$([a-z_]+)")


def rule_names() -> list[str]:
    """The rules the scan runs, in priority order."""
    return list(FLAG_RULES)


def rule_params(rule: str, settings: Settings) -> dict[str, Any]:
    """The values a rule's statement binds: its name, priority and the settings ``FLAG_RULES`` lists for it."""
    priority = rule_names().index(rule)
    return {"rule": rule, "priority": priority, **{name: getattr(settings, name) for name in FLAG_RULES[rule]}}


def evaluate(store: Store, settings: Settings) -> None:
    """Fill the temp table ``screener_rule_hits`` from ``screener_user_stats``: one row per rule a user matches."""
    store.run("rule_hits_create")
    for rule in rule_names():
        store.run(rule, rule_params(rule, settings))


def describe(settings: Settings) -> list[dict[str, str]]:
    """Each rule's name and its description with the settings' values in place of ``$<setting>``, for the
    report."""
    out = []
    for rule in rule_names():
        values = {name: getattr(settings, name) for name in FLAG_RULES[rule]}
        text = _SETTING_REF.sub(lambda m: str(values.get(m.group(1), m.group(0))), queries.description(rule))
        out.append({"name": rule, "description": text})
    return out
