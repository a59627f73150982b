"""One method protocol: every front door resolves the same config, refuses the same requests, before any work.

For every registered method and every request kind it serves, the CLI's parsing of an ``unlearn`` and a
``compare`` command resolves to the config :func:`famr_jax.unlearn_config` (what :func:`famr_jax.unlearn`
runs) resolves for the equivalent call -- with no method flag, with each flag given at its resolved
default (which must change nothing) and with one changed. The flags are derived from the config classes'
fields, not listed by hand. Then the capability refusals (each derived from the specs' fields), and the
regression of the issue's measurement: ``--forget-random 0.02 --method famr`` ran 5 steps, and 25 with
``--lr 0.0001`` (the default value) added.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famr_jax as fj
from famr_jax.cli.main import build_parser, main
from famr_jax.errors import FamrError
from famr_jax.methods.registry import get_method, method_names

N, C, MODEL = 500, 10, "lenet5"
FORGET_FLAGS = {"classes": ["--forget-classes", "1"], "samples": ["--forget-random", "0.02"],
                "zero-shot": ["--forget-classes", "1"]}
CASES = [(m, k) for m in method_names() for k in sorted(get_method(m).serves)]
BOARD_CASES = [(m, k) for m, k in CASES if k != "zero-shot" and m != "retrain"]   # compare's retrain: the recipe
# unlearn returns one model's params: a method whose result is a shard ensemble is refused there (tested below).
UNLEARN_CASES = [(m, k) for m, k in CASES if not get_method(m).ensemble]
ENSEMBLES = [m for m in method_names() if get_method(m).ensemble]


@pytest.fixture(scope="module")
def parser():
  return build_parser()


@pytest.fixture(scope="module")
def data():
  x = np.linspace(0.0, 1.0, N * 64, dtype=np.float32).reshape(N, 8, 8, 1)
  return fj.api.as_dataset((x, np.arange(C).repeat(N // C)), C)


@pytest.fixture(scope="module")
def fisher_checkpoint(tmp_path_factory):
  """A checkpoint that stores a Fisher (famr-fisher reads it; only its metadata is read here)."""
  path = tmp_path_factory.mktemp("protocol") / "with_fisher"
  fj.save_checkpoint(path, {"w": jnp.ones(2)}, {"model": MODEL}, extras={"fisher": {"w": jnp.ones(2)}})
  return path


def _flag_value(tp, value) -> list[str] | None:
  """The command-line words that set a field of type ``tp`` to ``value`` (None: not expressible)."""
  base, optional = tp, False
  if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base, optional = args[0], True
  if value is None:
    return ["none"] if optional and base in (int, float, str) else None
  if base is bool:
    return []
  if typing.get_origin(base) is tuple:
    return [",".join(map(str, value))] if value else None
  return [repr(value) if isinstance(value, float) else str(value)]


def _field_flags(cls, config) -> dict[str, list[str]]:
  """``{field: argv words}`` setting every field of ``config`` that has a flag to its current value."""
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    tp = hints[f.name]
    if tp is typing.Any or dataclasses.is_dataclass(tp):
      continue
    value = getattr(config, f.name)
    words = _flag_value(tp, value)
    if words is None:
      continue
    flag = "--" + f.name.replace("_", "-")
    if isinstance(value, bool):
      out[f.name] = [flag if value else "--no-" + f.name.replace("_", "-")]
    else:
      out[f.name] = [flag, *words]
  return out


def _api(method, kind, data, fisher_checkpoint, forget, options):
  """What the API resolves: ``unlearn_config``; for a shard ensemble (which unlearn refuses) the resolver
  ``compare`` calls, with the same arguments."""
  if get_method(method).ensemble:
    from famr_jax.methods.resolve import Request, resolve_config
    return resolve_config(method, Request.of(forget, kind != "zero-shot"), MODEL, options,
                          data=kind != "zero-shot", has_fisher=True, checkpoint=str(fisher_checkpoint))
  return fj.unlearn_config(method, forget, data=None if kind == "zero-shot" else data, model=object(),
                           model_name=MODEL, checkpoint=str(fisher_checkpoint), **options)


def _cli_unlearn(parser, method, kind, data, fisher_checkpoint, words):
  from famr_jax.cli.main import unlearn_run
  from famr_jax.cli.runs import make_forget_set, resolve_unlearn
  from famr_jax.methods.resolve import Request
  from famr_jax.theory.fisher import has_stored_fisher
  args = parser.parse_args(["unlearn", "--checkpoint", str(fisher_checkpoint), "--out", "unused",
                            *FORGET_FLAGS[kind], "--method", method, *words])
  run = unlearn_run(args)
  forget = make_forget_set(run, data)   # the CLI's own draw of the request
  return forget, resolve_unlearn(run, MODEL, Request.of(forget), has_stored_fisher(run.checkpoint))[1]


def _cli_board(parser, method, kind, data, words):
  from famr_jax.cli.compare_run import CompareRun, board_plan, seed_forget_set
  from famr_jax.cli import flags as cf
  from famr_jax.cli.main import method_flags
  from famr_jax.evaluation.compare import configs_for_request
  from famr_jax.methods.resolve import Request
  args = parser.parse_args(["compare", "--checkpoint", "unused", "--out", "unused", "--methods", method,
                            *FORGET_FLAGS[kind], *words])
  run = cf.build_config(CompareRun, args)
  metadata = {"model": MODEL, "extras": {"fisher": {}}}
  methods, options, fixed = board_plan(run, metadata, fj.TrainConfig(), flags=method_flags(args), log=lambda _: None)
  forget = seed_forget_set(run, data, 0)   # seed 0's request, as compare draws it
  specs = {name: get_method(name) for name in methods}
  return forget, configs_for_request(specs, Request.of(forget), MODEL, options, fixed)[method]


def _word_cases(method, base):
  """(words, api options, at default?) for: no flag, each flag at its resolved value, all of them, one changed."""
  flags = _field_flags(get_method(method).config_cls, base)
  cases = [([], {}, True)]
  cases += [(words, {name: getattr(base, name)}, True) for name, words in flags.items()]
  cases.append(([w for words in flags.values() for w in words], {n: getattr(base, n) for n in flags}, True))
  if getattr(base, "lr", None):
    cases.append((["--lr", repr(base.lr / 2)], {"lr": base.lr / 2}, False))
  return cases


@pytest.mark.parametrize("method,kind", UNLEARN_CASES)
def test_cli_unlearn_and_the_api_resolve_to_equal_configs(parser, data, fisher_checkpoint, method, kind):
  forget, base = _cli_unlearn(parser, method, kind, data, fisher_checkpoint, [])
  assert base == _api(method, kind, data, fisher_checkpoint, forget, {})
  for words, options, at_default in _word_cases(method, base):
    cli = _cli_unlearn(parser, method, kind, data, fisher_checkpoint, words)[1]
    assert cli == _api(method, kind, data, fisher_checkpoint, forget, options), words
    if at_default:   # an option given at its resolved value changes nothing
      assert cli == base, words
    else:
      assert cli != base, words


@pytest.mark.parametrize("method,kind", BOARD_CASES)
def test_cli_compare_and_the_api_resolve_to_equal_configs(parser, data, fisher_checkpoint, method, kind):
  forget, base = _cli_board(parser, method, kind, data, [])
  assert base == _api(method, kind, data, fisher_checkpoint, forget, {})
  for words, options, at_default in _word_cases(method, base):
    cli = _cli_board(parser, method, kind, data, words)[1]
    assert cli == _api(method, kind, data, fisher_checkpoint, forget, options), words
    assert (cli == base) == at_default, words


@pytest.mark.parametrize("method", ENSEMBLES)
def test_an_ensemble_method_is_refused_by_the_cli_and_the_api_alike(parser, data, fisher_checkpoint, method):
  assert ENSEMBLES == ["sisa"]   # the library's one shard-ensemble method
  forget = fj.forget_samples([0, 1], N, C)
  api = _refused(lambda: fj.unlearn_config(method, forget, data=data, model_name=MODEL))
  cli = _refused(lambda: _cli_unlearn(parser, method, "samples", data, fisher_checkpoint, []))
  assert api == cli and "returns a shard ensemble, not one model's params" in api


def test_the_budget_scales_with_the_request_by_hand(data, fisher_checkpoint):
  # famr's sample table: 25 Adam steps of batch 32; a request of n samples gets min(25, 5 ceil(n / 32)).
  for n, steps in ((1, 5), (32, 5), (33, 10), (150, 25), (400, 25)):
    forget = fj.forget_samples(list(range(n)), N, C)
    assert _api("famr", "samples", data, fisher_checkpoint, forget, {}).steps == steps
    assert _api("famr", "samples", data, fisher_checkpoint, forget, {"steps": 25}).steps == 25   # asked: kept
  # A user's own budget is kept; an epochs other than the default's means epochs.
  forget = fj.forget_samples([0, 1, 2], N, C)
  assert _api("famr", "samples", data, fisher_checkpoint, forget, {"steps": 7}).steps == 7
  assert _api("famr", "samples", data, fisher_checkpoint, forget, {"epochs": 2}).steps is None


@pytest.mark.parametrize("method", method_names())
def test_each_spec_documents_its_config_once_and_declares_its_capabilities(method):
  from famr_jax.cli.flags import field_flags
  from famr_jax.methods.protocol import NEEDS, REQUEST_KINDS
  spec = get_method(method)
  documented = {flag for flag, _, _ in field_flags(spec.config_cls)}
  for f in dataclasses.fields(spec.config_cls):   # a field's one description: its class's Attributes (--help's)
    assert any(f"    {f.name}:" in (k.__dict__.get("__doc__") or "") for k in spec.config_cls.__mro__), (method, f.name)
  assert documented and spec.serves <= set(REQUEST_KINDS) and spec.needs <= NEEDS
  assert ("zero-shot" in spec.serves) == (not spec.uses_data)


def test_a_spec_with_contradictory_capabilities_is_refused():
  from famr_jax.methods.baselines import GAConfig
  with pytest.raises(FamrError, match="zero-shot requests exactly when it needs no data"):
    fj.MethodSpec("x", GAConfig, lambda t, c: None, "x", serves=frozenset({"classes", "zero-shot"}))
  with pytest.raises(FamrError, match="needs must be a subset"):
    fj.MethodSpec("x", GAConfig, lambda t, c: None, "x", needs=frozenset({"data", "gpu"}))


# ----------------------------------------------------------------------------- refusals, before any work

def _exploding(params, x):
  raise AssertionError("apply_fn called: the refusal came after work began")


def _refused(call) -> str:
  with pytest.raises(FamrError) as err:
    call()
  message = str(err.value)
  assert message and "\n" not in message
  return message


@pytest.mark.parametrize("method", [m for m in method_names() if get_method(m).uses_data])
def test_a_data_free_request_to_a_method_that_reads_data(method):
  forget = fj.forget_classes(np.arange(C).repeat(3), [1], C)
  message = _refused(lambda: fj.unlearn(method, _exploding, {"w": jnp.ones(2)}, forget, jax.random.key(0)))
  assert "reads the training data" in message and method in message


@pytest.mark.parametrize("method", [m for m in method_names() if not get_method(m).scales])
def test_scale_settings_to_a_method_that_does_not_scale(method, data):
  forget = fj.forget_classes(data.y_train, [1], C)
  message = _refused(lambda: fj.unlearn(method, _exploding, {"w": jnp.ones(2)}, forget, jax.random.key(0),
                                        data=data, scale=fj.ScaleConfig(data_parallel=True)))
  assert "runs on one device" in message and method in message


@pytest.mark.parametrize("method", [m for m in method_names() if "samples" not in get_method(m).serves])
def test_a_samples_request_to_a_class_only_method(method, data):
  forget = fj.forget_samples([0, 1, 2], N, C)
  message = _refused(lambda: fj.unlearn(method, _exploding, {"w": jnp.ones(2)}, forget, jax.random.key(0),
                                        data=data))
  assert "cannot forget samples" in message and method in message


def test_resume_to_a_method_of_several_descents(data, tmp_path):
  forget = fj.forget_classes(data.y_train, [1], C)
  message = _refused(lambda: fj.unlearn("scrub", _exploding, {"w": jnp.ones(2)}, forget, jax.random.key(0),
                                        data=data, resume=fj.ResumeConfig(checkpoint_every=5,
                                                                          checkpoint_dir=str(tmp_path))))
  assert "cannot resume" in message


# ----------------------------------------------------------------------------- the CLI, end to end

@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("protocol_cli") / "original"
  assert main(["train", "--dataset", "digits", "--model", "logistic", "--max-train", "200", "--epochs", "1",
               "--out", str(path)]) == 0
  return path


def test_a_flag_at_its_default_value_changes_the_budget_not(small_checkpoint, tmp_path, monkeypatch):
  # The measurement: `unlearn --forget-random 0.02 --method famr` ran 5 steps, the same with
  # `--lr 0.0001` (famr's sample default) 25. A request of 4 samples is one minibatch a pass: 5 passes = 5 steps.
  from famr_jax.cli import main as cli_main, runs
  seen = {}

  def capture(**kwargs):
    seen[kwargs["out"]] = kwargs["method_config"]
    return {}
  monkeypatch.setattr(runs, "_unlearn_and_report", capture)
  monkeypatch.setattr(cli_main, "_print_summary", lambda rep, out: None)
  for name, extra in (("plain", []), ("lr", ["--lr", "0.0001"])):
    assert main(["unlearn", "--checkpoint", str(small_checkpoint), "--forget-random", "0.02", "--method", "famr",
                 *extra, "--out", str(tmp_path / name)]) == 0
  plain, with_lr = seen[str(tmp_path / "plain")], seen[str(tmp_path / "lr")]
  assert plain.lr == 1e-4 and plain.steps == 5 * math.ceil(4 / 32) == 5
  assert with_lr == plain


@pytest.mark.parametrize("extra,message", [
    (["--forget-random", "0.1", "--method", "famr-plus"], "cannot forget samples"),
    (["--forget-random", "0.1", "--method", "impressions"], "cannot forget samples"),
    (["--forget-classes", "1", "--method", "ssd", "--fsdp"], "runs on one device"),
    (["--forget-classes", "1", "--method", "ga", "--lam", "0.5"], "has no option --lam"),
])
def test_cli_refusals_are_one_line_and_write_nothing(small_checkpoint, tmp_path, capsys, extra, message):
  out = tmp_path / "out"
  assert main(["unlearn", "--checkpoint", str(small_checkpoint), "--out", str(out), *extra]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and message in err and not out.exists()


def test_the_report_records_the_resolved_config(small_checkpoint, tmp_path):
  # No method named: a sample request runs the recommended one with its resolved (scaled) budget.
  out = tmp_path / "out"
  assert main(["unlearn", "--checkpoint", str(small_checkpoint), "--forget-samples", "0,1,2", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  expected = fj.unlearn_config(None, fj.forget_samples([0, 1, 2], 200, 10),
                               data=(np.zeros((200, 8, 8, 1), np.float32), np.arange(10).repeat(20)),
                               model=object(), model_name="logistic")
  assert report["method"] == "ga" and report["config"]["method"] == dataclasses.asdict(expected)


def test_the_default_says_when_the_audit_does_not_back_it():
  # The honest default: no method named on a sample request runs ga and warns that the audit shows no sample
  # method equivalent to retraining; a named method, and the class default, say nothing.
  x = np.eye(3, dtype=np.float32).repeat(10, 0).reshape(30, 3, 1, 1)
  y = np.arange(3).repeat(10)
  apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"]   # noqa: E731
  params = {"w": 4.0 * jnp.eye(3)}
  samples = fj.forget_samples([0, 11], 30, 3)
  with pytest.warns(UserWarning, match="no method named, running 'ga': no sample method is shown equivalent"):
    r = fj.unlearn(None, apply_fn, params, samples, jax.random.key(0), data=(x, y))
  assert r.method == "ga"
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)
    fj.unlearn("ga", apply_fn, params, samples, jax.random.key(0), data=(x, y))
    assert fj.unlearn(None, apply_fn, params, fj.forget_classes(y, [1], 3), jax.random.key(0), data=(x, y),
                      epochs=1).method == "famr-plus"
