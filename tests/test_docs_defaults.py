"""Docs equal code: every default the README, ``--help``, the front doors' docstrings and BUILD_NOTES name.

Each text is read as a user reads it; the method it names per request kind, the step-budget rule and
the numeric defaults it states are extracted by pattern and checked against the resolver
(:mod:`famr_jax.methods.resolve`), never against another text. A source that no longer states a claim
it is expected to state fails too, so a rewording cannot silently drop the check.

BUILD_NOTES.md is the integrator's: its disagreements found here are listed in :data:`PENDING_NOTES_FIXES`
(the exact line and its fix, handed over in the protocol report); the checks read the notes with them
applied, and an entry becomes a no-op once the notes carry the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import famr_jax as fj
from famr_jax.cli import runs
from famr_jax.cli.compare_run import CompareRun
from famr_jax.cli.main import build_parser
from famr_jax.methods import scrub, ssd
from famr_jax.methods.defaults import SAMPLE_BUDGET_EPOCHS
from famr_jax.methods.registry import get_method, method_names
from famr_jax.methods.resolve import Request, recommended_method, resolve_config

ROOT = Path(__file__).resolve().parent.parent
# (old text, fixed text) of BUILD_NOTES.md lines that disagree with the code.
PENDING_NOTES_FIXES: list[tuple[str, str]] = []   # none: the notes carry every fix
METHOD = r"([a-z][a-z0-9+-]*)"


def _normal(text: str) -> str:
  """One line, no markup: backticks, quotes and ``*`` dropped, whitespace collapsed."""
  return " ".join(re.sub(r"[`\"'*]", "", text or "").split())


def _help(command: str) -> str:
  parser = build_parser()
  sub = next(a for a in parser._actions if a.dest == "command").choices[command]
  return sub.format_help()


def _notes() -> str:
  text = (ROOT / "BUILD_NOTES.md").read_text()
  for old, new in PENDING_NOTES_FIXES:
    text = text.replace(old, new)
  return text


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
  return {name: _normal(text) for name, text in {
      "README.md": (ROOT / "README.md").read_text(),
      "BUILD_NOTES.md": _notes(),
      "unlearn --help": _help("unlearn"),
      "compare --help": _help("compare"),
      "famr_jax.api": fj.api.__doc__,
      "famr_jax.unlearn": fj.unlearn.__doc__,
      "UnlearnRun": runs.UnlearnRun.__doc__,
      "unlearn_model": runs.unlearn_model.__doc__,
      "famr_jax.methods.ssd": ssd.__doc__,
      "famr_jax.methods.scrub": scrub.__doc__,
  }.items()}


def method_claims(text: str) -> list[tuple[str, str]]:
  """``(request kind, method)`` for every sentence form that names the method a request runs by default."""
  names = set(method_names())
  claims = []
  for kind, method in re.findall(r"\b(class|sample) requests?,? (?:runs |gets )?" + METHOD, text):
    claims.append(("classes" if kind == "class" else "samples", method))
  for method, kind in re.findall(METHOD + r" for (classes|samples)(?! without data)", text):
    claims.append((kind, method))
  for method, kind in re.findall(METHOD + r" for an? (class|sample) request", text):
    claims.append(("classes" if kind == "class" else "samples", method))
  claims += [("zero-shot", m) for m in re.findall(METHOD + r" for classes without data", text)]
  claims += [("classes", m) for m in re.findall(r"a whole class, with the training data: " + METHOD, text)]
  claims += [("samples", m) for m in re.findall(r"samples \(a random or given subset\), with the data: " + METHOD,
                                                 text)]
  claims += [("zero-shot", m) for m in re.findall(r"(?:a whole class with no data at all|[Ww]ith no data at all)[,:]? "
                                                  r"(?:--method )?" + METHOD, text)]
  return [(kind, m) for kind, m in claims if m in names]


EXPECTED_KINDS = {
    "README.md": {"classes", "samples", "zero-shot"}, "BUILD_NOTES.md": {"classes", "samples"},
    "unlearn --help": {"classes", "samples"}, "compare --help": {"classes", "samples"},
    "famr_jax.api": {"classes", "samples", "zero-shot"}, "famr_jax.unlearn": {"classes", "samples", "zero-shot"},
    "UnlearnRun": {"classes", "samples"}, "unlearn_model": {"classes", "samples"},
}


@pytest.mark.parametrize("source", sorted(EXPECTED_KINDS))
def test_the_method_each_text_names_per_request_is_the_resolvers(sources, source):
  claims = method_claims(sources[source])
  assert {kind for kind, _ in claims} >= EXPECTED_KINDS[source], (source, claims)
  wrong = [(kind, m) for kind, m in claims if m != recommended_method(kind)]
  assert not wrong, f"{source} names {wrong}; the resolver runs " + str(
      {kind: recommended_method(kind) for kind, _ in wrong})


def test_the_extractor_reads_the_forms_it_checks():
  # The patterns themselves, on sentences whose answer is known by hand (a wrong text must be caught).
  assert method_claims("a sample request runs famr; a class request runs famr-plus") == [
      ("samples", "famr"), ("classes", "famr-plus")]
  assert method_claims("(famr-plus for classes, ga for samples, impressions for classes without data)") == [
      ("classes", "famr-plus"), ("samples", "ga"), ("zero-shot", "impressions")]
  assert method_claims("The method (famr-plus for a class request and famr for a sample request)") == [
      ("classes", "famr-plus"), ("samples", "famr")]
  assert method_claims("a sample request with a target, a class request (--forget-classes) runs epochs") == []


@pytest.mark.parametrize("source", ["README.md", "BUILD_NOTES.md", "unlearn --help", "compare --help",
                                    "famr_jax.unlearn"])
def test_the_budget_cut_each_text_states_is_the_resolvers(sources, source):
  stated = {int(n) for n in re.findall(r"(\d+) passes over", sources[source])}
  assert stated == {SAMPLE_BUDGET_EPOCHS}, (source, stated)
  # What the rule means, by hand: a request of one minibatch gets that many steps, one of 10 minibatches
  # keeps the table's budget; the table's own number for famr is 25 Adam steps of batch 32.
  assert resolve_config("famr", Request("samples", 20)).steps == SAMPLE_BUDGET_EPOCHS
  assert resolve_config("famr", Request("samples", 320)).steps == 25


def _sample_budgets() -> dict[str, object]:
  out = {}
  for name in method_names():
    spec = get_method(name)
    if "samples" in spec.serves and spec.defaults is None and name != "retrain":
      config = resolve_config(name, Request("samples"))
      if getattr(config, "steps", None) is not None:
        out[name] = config
  return out


@pytest.mark.parametrize("source,pattern", [
    ("BUILD_NOTES.md", r"Sample defaults are step budgets, Adam but for ([a-z+, -]+?), tuned"),
    ("README.md", r"a small step budget, Adam but for ([a-z+, -]+?) \("),
])
def test_the_sample_budgets_optimizer_each_text_states(sources, source, pattern):
  found = re.search(pattern, sources[source])
  assert found, f"{source} no longer states the sample budgets' optimizer as this test reads it"
  exceptions = {m.strip() for m in re.split(r",| and ", found.group(1)) if m.strip()}
  budgets = _sample_budgets()
  assert len(budgets) >= 5 and {n for n, c in budgets.items() if c.optimizer != "adam"} == exceptions


def _scrub():
  return resolve_config("scrub", Request("classes"))


NUMBERS = [   # (source, pattern with the stated value as group 1, the resolver's value)
    ("BUILD_NOTES.md", r"SCRUB .*? The class default is a step budget \(steps=(\d+)\)",
     lambda: resolve_config("scrub", Request("classes")).steps),
    ("BUILD_NOTES.md", r"Zero-shot FAMR \(famr-zeroshot\).*? Adam lr ([0-9.e-]+)",
     lambda: resolve_config("famr-zeroshot", Request("zero-shot")).lr),
    ("BUILD_NOTES.md", r"the library default lr ([0-9.]+) wrecks small ViTs",
     lambda: resolve_config("famr", Request("classes")).lr),
    ("BUILD_NOTES.md", r"famrs ViT default is lr ([0-9.e-]+)",
     lambda: resolve_config("famr", Request("classes"), "vit_nano").lr),
    ("BUILD_NOTES.md", r"TOST, m = ([0-9.]+)\)", lambda: CompareRun.audit_margin),
    ("README.md", r"--audit-seeds K farm seeds \(default (\d+)\)", lambda: CompareRun.audit_seeds),
    ("famr_jax.methods.scrub", r"defaults \(gamma ([0-9.]+),", lambda: _scrub().gamma),
    ("famr_jax.methods.scrub", r"defaults \(gamma [0-9.]+, alpha ([0-9.]+),", lambda: _scrub().kl_weight),
    ("famr_jax.methods.scrub", r", T ([0-9.]+), \d+ max rounds\)", lambda: _scrub().temperature),
    ("famr_jax.methods.scrub", r", (\d+) max rounds\)", lambda: _scrub().max_epochs),
    ("README.md", r"inside \+-\s?--audit-margin, default ([0-9.]+)\)", lambda: CompareRun.audit_margin),
]


@pytest.mark.parametrize("source,pattern,value", NUMBERS)
def test_each_number_a_text_states_is_the_resolvers(sources, source, pattern, value):
  found = re.search(pattern, sources[source])
  assert found, f"{source} no longer states {pattern!r}"
  assert float(found.group(1)) == float(value()), (source, found.group(0))


WORDS = [   # (source, pattern, the resolver's fact it states)
    ("BUILD_NOTES.md", r"FAMRConfig.optimizer=sgd \(default\)",
     lambda: resolve_config("famr", Request("classes")).optimizer == "sgd"),
    ("BUILD_NOTES.md", r"Honest default: forget_objective=masked_kl",
     lambda: resolve_config("impressions", Request("zero-shot")).forget_objective == "masked_kl"),
    ("BUILD_NOTES.md", r"SSD .*? Default: the per-example diagonal Fisher",
     lambda: resolve_config("ssd", Request("classes")).importance == "fisher"),
    ("famr_jax.methods.ssd", r"what famr_jax.unlearn\(ssd, \.\.\.\) runs is fisher",
     lambda: resolve_config("ssd", Request("classes")).importance == "fisher"),
    ("README.md", r"a sample request runs ga \(a few Adam steps",
     lambda: resolve_config("ga", Request("samples")).optimizer == "adam"),
    ("famr_jax.api", r"samples \(a random or given subset\), with the data: ga \(its sample defaults: a step budget\)",
     lambda: resolve_config("ga", Request("samples")).steps is not None),
]


@pytest.mark.parametrize("source,pattern,fact", WORDS)
def test_each_default_a_text_describes_is_the_resolvers(sources, source, pattern, fact):
  assert re.search(pattern, sources[source]), f"{source} no longer states {pattern!r}"
  assert fact()
