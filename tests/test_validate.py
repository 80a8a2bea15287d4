"""``mconv validate`` tells a correct conversion from subtly wrong ones; ``translate --validate`` refuses
to commit an output that computes something else; ``roundtrip`` compares A -> B -> A."""

from __future__ import annotations

import os
import sys
import types
from typing import Callable

import numpy as np
import pytest

from testlib import cli, random_model

from mconv.core import registry
from mconv.core.convert import write_model
from mconv.core.hookspecs import hookimpl
from mconv.core.ir import Model, Tensor, permute_rows
from mconv.core.names import rope_permute_order, rope_unpermute_order
from mconv.core.registry import get_registry
from mconv.core.validate import TOLERANCES, Tolerance, compare_logits, tolerance_for_models

#: GQA with head size 8 and 2 query heads per kv head, theta and eps off their defaults
HP = dict(n_vocab=128, n_embd=64, n_layer=2, n_head=8, n_head_kv=4, n_ff=96, n_ctx=128, norm_eps=1e-6,
          rope_theta=500000.0)


def _write(model: Model, path: str, dtype: str | None = None) -> str:
    write_model(model, path, get_registry().format("safetensors"), dtype=dtype, quiet=True)
    return path


def _with(model: Model, **tensors: Tensor) -> Model:
    new = dict(model.tensors)
    new.update({k.replace("__", "."): v for k, v in tensors.items()})
    return model.derive(new)


def _rename(t: Tensor, name: str) -> Tensor:
    return t.with_name(name)


def _permute(t: Tensor, heads: int, order: Callable[[int, int, int], np.ndarray]) -> Tensor:
    return permute_rows(t, order(t.shape[0], heads, t.n_rows), "test")


def _each_layer(model: Model, fn: Callable[[str, dict[str, Tensor]], None]) -> Model:
    new = dict(model.tensors)
    for b in range(model.hparams["n_layer"]):
        fn(f"blk.{b}.", new)
    return model.derive(new)


def hf_layout_left_in(m: Model) -> Model:
    def fn(p: str, t: dict[str, Tensor]) -> None:
        t[p + "attn_q.weight"] = _permute(t[p + "attn_q.weight"], m.hparams["n_head"], rope_permute_order)
        t[p + "attn_k.weight"] = _permute(t[p + "attn_k.weight"], m.hparams["n_head_kv"], rope_permute_order)
    return _each_layer(m, fn)


def k_unpermuted_with_n_head(m: Model) -> Model:
    """The classic GQA bug: HF -> Meta un-permute of K with n_head instead of n_head_kv."""
    def fn(p: str, t: dict[str, Tensor]) -> None:
        hf = _permute(t[p + "attn_k.weight"], m.hparams["n_head_kv"], rope_permute_order)
        t[p + "attn_k.weight"] = _permute(hf, m.hparams["n_head"], rope_unpermute_order)
    return _each_layer(m, fn)


def gate_up_swapped(m: Model) -> Model:
    def fn(p: str, t: dict[str, Tensor]) -> None:
        g, u = t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"]
        t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"] = _rename(u, g.name), _rename(g, u.name)
    return _each_layer(m, fn)


def wo_transposed(m: Model) -> Model:
    from mconv.core.ir import tensor_from_array

    def fn(p: str, t: dict[str, Tensor]) -> None:
        wo = t[p + "attn_output.weight"]
        t[wo.name] = tensor_from_array(wo.name, wo.f32().T.copy(), wo.dtype)
    return _each_layer(m, fn)


def layers_swapped(m: Model) -> Model:
    new = dict(m.tensors)
    for name, t in m.tensors.items():
        if name.startswith("blk.0."):
            other = "blk.1." + name[6:]
            new[name], new[other] = _rename(m.tensors[other], name), _rename(t, other)
    return m.derive(new)


def untied_classifier_dropped(m: Model) -> Model:
    return m.derive({k: v for k, v in m.tensors.items() if k != "output.weight"})


def eps_default(m: Model) -> Model:
    return m.derive(hparams=dict(m.hparams, norm_eps=1e-5))


def theta_default(m: Model) -> Model:
    return m.derive(hparams=dict(m.hparams, rope_theta=10000.0))


def norms_swapped(m: Model) -> Model:
    def fn(p: str, t: dict[str, Tensor]) -> None:
        a, f = t[p + "attn_norm.weight"], t[p + "ffn_norm.weight"]
        t[a.name], t[f.name] = _rename(f, a.name), _rename(a, f.name)
    return _each_layer(m, fn)


CORRUPTIONS = {
    "hf-qk-layout-left-in": hf_layout_left_in,
    "k-unpermuted-with-n_head": k_unpermuted_with_n_head,
    "ffn-gate-up-swapped": gate_up_swapped,
    "attn-output-transposed": wo_transposed,
    "layers-0-1-swapped": layers_swapped,
    "classifier-dropped": untied_classifier_dropped,
    "eps-1e-5-instead-of-1e-6": eps_default,
    "theta-10000-instead-of-5e5": theta_default,
    "attn-ffn-norms-swapped": norms_swapped,
}
#: corruptions so gross that even the f16 tolerance must catch them
GROSS = ["hf-qk-layout-left-in", "k-unpermuted-with-n_head", "ffn-gate-up-swapped", "attn-output-transposed",
         "layers-0-1-swapped", "classifier-dropped", "theta-10000-instead-of-5e5"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("validate")
    good = random_model(HP, seed=11)
    out = {"good": _write(good, str(d / "good.safetensors")),
           "good_f16": _write(good, str(d / "good_f16.safetensors"), "f16")}
    for name, fn in CORRUPTIONS.items():
        bad = fn(good)
        out[name] = _write(bad, str(d / f"{name}.safetensors"))
        if name in GROSS:
            out[name + "_f16"] = _write(bad, str(d / f"{name}_f16.safetensors"), "f16")
    return out


def test_lossless_conversion_validates_bit_equal(files: dict[str, str], tmp_path) -> None:  # noqa: ANN001
    hf = str(tmp_path / "hf") + "/"
    r = cli("translate", files["good"], hf, "--to", "safetensors")
    assert r.rc == 0, r.err
    r = cli("validate", files["good"], hf)
    assert r.rc == 0, r.out + r.err
    assert "overall: max |Δlogit| 0 (0 of max |logit|" in r.out
    assert "tolerance lossless: bit-equal logits (max |Δ| = 0)" in r.out
    assert r.out.rstrip().endswith("ok: within tolerance")
    assert "top-1 agreement 32/32" in r.out
    assert len([ln for ln in r.out.splitlines() if ln[:5].strip().isdigit()]) == 32   # per-position lines


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_validate_catches_corruption(files: dict[str, str], corruption: str) -> None:
    r = cli("validate", files["good"], files[corruption], "--brief")
    assert r.rc == 1, r.out + r.err
    assert "DIFFER: logits are not bit-equal" in r.out


def test_f16_conversion_is_within_its_tolerance(files: dict[str, str]) -> None:
    r = cli("validate", files["good"], files["good_f16"], "--brief")
    assert r.rc == 0, r.out + r.err
    assert "tolerance f16: max |Δ| <= 0.01 x max |logit|, cosine >= 0.9999, top-1 agreement >= 75%" in r.out


@pytest.mark.parametrize("corruption", GROSS)
def test_validate_catches_corruption_under_f16_tolerance(files: dict[str, str], corruption: str) -> None:
    r = cli("validate", files["good"], files[corruption + "_f16"], "--brief")
    assert r.rc == 1, r.out + r.err
    assert "tolerance f16:" in r.out and "DIFFER: " in r.out


def test_validate_prompt_tokens_and_tolerance_options(tmp_path) -> None:  # noqa: ANN001
    from testlib import sp_tokenizer

    m = random_model(dict(HP, n_vocab=384), seed=3, tokenizer=sp_tokenizer())
    a = _write(m, str(tmp_path / "a.safetensors"))
    b = _write(m, str(tmp_path / "b.safetensors"), "bf16")
    r = cli("validate", a, b, "--prompt", "Return the value of x.")
    assert r.rc == 0, r.out + r.err
    assert "tokens: 19 (BOS + --prompt, sentencepiece)" in r.out
    assert "tolerance bf16:" in r.out
    r = cli("validate", a, b, "--tokens", "5", "--tolerance", "lossless", "--brief")
    assert r.rc == 1 and "tokens: 5 (BOS + ids" in r.out and "tolerance lossless" in r.out
    r = cli("validate", a, b, "--prompt", "x", "--tokens", "4")
    assert (r.rc, r.err.strip()) == (2, "mconv: error: give --prompt or --tokens, not both")
    r = cli("validate", "--tolerances")
    assert r.rc == 0 and r.out.splitlines()[1].startswith("lossless") and "q4_0 q4_1 q4_k" in r.out


def test_validate_refuses_different_vocabularies(files: dict[str, str], tmp_path) -> None:  # noqa: ANN001
    other = _write(random_model(dict(HP, n_vocab=96)), str(tmp_path / "other.safetensors"))
    r = cli("validate", files["good"], other)
    assert (r.rc, r.err.strip()) == (2, "mconv: error: the models have different vocabulary sizes (128 and 96)")
    r = cli("validate", files["good"])
    assert (r.rc, r.err.strip()) == (2, "mconv: error: validate needs two models: mconv validate A B")


def test_tolerance_row_is_the_loosest_dtype() -> None:
    f32, f16, bf16 = (random_model(HP, dtype=d) for d in ("f32", "f16", "bf16"))
    assert tolerance_for_models(f32, f32).name == "lossless"
    assert tolerance_for_models(f16, f16).name == "lossless"
    # validate cannot tell which side was converted: f16 against f32 is the f16 row either way
    assert tolerance_for_models(f16, f32).name == "f16"
    assert tolerance_for_models(f32, f16).name == "f16"
    assert tolerance_for_models(f16, bf16).name == "bf16"
    mixed = f32.derive({**f32.tensors, "blk.0.ffn_up.weight": bf16.tensors["blk.0.ffn_up.weight"]})
    assert tolerance_for_models(f16, mixed).name == "bf16"


def test_report_bounds() -> None:
    a = np.array([[1.0, 2.0, 4.0], [4.0, 0.0, -2.0]], np.float32)
    tol = Tolerance("t", 0.1, 0.99, 1.0)
    near = a.copy()
    near[:, 1] += np.float32(0.375)
    assert compare_logits(a, near, [1, 2], tol).ok
    near[0, 1] += np.float32(0.125)
    assert compare_logits(a, near, [1, 2], tol).failures() == ["max |Δ| 0.5 > 0.4"]
    r = compare_logits(a, a[:, ::-1].copy(), [1, 2], tol)
    assert not r.ok and r.top1_agree == 0 and r.min_cosine < 0
    exact = compare_logits(a, a.copy(), [1, 2], TOLERANCES["lossless"])
    assert exact.ok and exact.max_abs == 0.0
    nan = a.copy()
    nan[0, 0] = np.nan
    assert not compare_logits(a, nan, [1, 2], TOLERANCES["f16"]).ok


# -- translate --validate and roundtrip ------------------------------------------------------------------

def _broken_format_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A format that writes safetensors with ffn_gate and ffn_up swapped in layer 1 (a writer bug that
    no plan can see)."""
    from mconv.formats.safetensors import SafetensorsFormat

    class Broken(SafetensorsFormat):
        name = "broken"
        aliases = ()
        extensions = (".broken",)

        def sniff(self, path, head, size, is_dir):  # noqa: ANN001, ANN201
            return 0.0

        def write(self, model, path, ctx):  # noqa: ANN001, ANN201
            t = dict(model.tensors)
            g, u = t["blk.1.ffn_gate.weight"], t["blk.1.ffn_up.weight"]
            t[g.name], t[u.name] = u.with_name(g.name), g.with_name(u.name)
            super().write(model.derive(t), path, ctx)

    def register_formats(register):  # noqa: ANN001, ANN202
        register(Broken)

    mod = types.ModuleType("mconv_test_broken_format")
    mod.register_formats = hookimpl(register_formats)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(registry, "DEFAULT_PLUGINS", (*registry.DEFAULT_PLUGINS, mod.__name__))
    registry.reset_registry()


def test_translate_validate_commits_a_faithful_output(files: dict[str, str], tmp_path) -> None:  # noqa: ANN001
    out = str(tmp_path / "hf") + "/"
    r = cli("translate", files["good"], out, "--to", "safetensors", "--validate")
    assert r.rc == 0, r.err
    assert "validate: 32 tokens, max |Δlogit| 0 (0 of max |logit|" in r.out
    assert "validate: tolerance lossless: bit-equal logits (max |Δ| = 0)" in r.out and "validate: ok" in r.out
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    half = str(tmp_path / "half.safetensors")
    r = cli("translate", files["good"], half, "--dtype", "f16", "--validate")
    assert r.rc == 0, r.err
    assert "validate: tolerance f16:" in r.out and os.path.exists(half)


def test_translate_validate_refuses_to_commit_a_wrong_output(files: dict[str, str], tmp_path,  # noqa: ANN001
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_format_plugin(monkeypatch)
    out = tmp_path / "out.broken"
    r = cli("translate", files["good"], str(out), "--validate")
    assert r.rc == 1, r.err
    assert r.err.startswith(f"mconv: validation failed: {out}: the output does not compute the same model "
                            "(logits are not bit-equal (max |Δ| ")
    assert r.err.rstrip().endswith("); it was not written")
    assert "validate: tolerance lossless" in r.out
    assert os.listdir(tmp_path) == []                 # neither the output nor a temporary file
    r = cli("translate", files["good"], str(out))      # without --validate the bug goes unnoticed
    assert r.rc == 0 and out.exists()


def test_roundtrip(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("roundtrip", files["good"], "--via", "safetensors")
    assert r.rc == 0, r.out + r.err
    assert "tensors: 21/21 hold the same values" in r.out and "hparams: same" in r.out
    assert r.out.rstrip().endswith("ok: lossless round trip")
    r = cli("roundtrip", files["good"], "--via", "safetensors", "--dtype", "f16", "--tokens", "8")
    assert r.rc == 0, r.out + r.err
    assert "dtype: 21 tensor(s) f32 -> f16 (converted)" in r.out and "tolerance f16" in r.out
    assert "ok: lossy round trip within tolerance" in r.out
    _broken_format_plugin(monkeypatch)
    r = cli("roundtrip", files["good"], "--via", "broken")
    assert r.rc == 1, r.out + r.err
    assert "  blk.1.ffn_gate.weight: f32 -> f32, max |Δ|" in r.out
    assert "tensors: 19/21 hold the same values" in r.out
    assert "DIFFER (lossless round trip): 2 tensor(s) changed; logits are not bit-equal (max |Δ| " in r.out
