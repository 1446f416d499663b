"""What a CPU's missing instructions mean for a run's numbers is said: at the start of a run, in its manifest and
summary, in the model cards and the bench's tables; and bf16 is never asked of a CPU without it."""
from __future__ import annotations

import pytest

from tailorfit.pipeline import run_pipeline
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.host import has_native, lacks_native
from tailorfit.pipeline.models.model_card import model_card

AVX2 = {"cpu": "AMD EPYC", "isa": ["avx2"], "logical_cores": 2}
VNNI = {"cpu": "Intel Xeon", "isa": ["avx2", "avx512_vnni", "avx512f"], "logical_cores": 2}
AMX = {"cpu": "Intel Xeon", "isa": ["amx_bf16", "amx_int8", "avx2", "avx512f"], "logical_cores": 2}


def test_missing_int8_and_bf16_instructions_are_named():
    assert "no INT8 dot-product instructions (VNNI or AMX)" in lacks_native("int8", AVX2) and "AMD EPYC" in lacks_native("int8", AVX2)
    assert "no bf16 instructions" in lacks_native("bf16", VNNI)
    assert lacks_native("int8", VNNI) is None and lacks_native("int8", AMX) is None and lacks_native("bf16", AMX) is None
    assert lacks_native("f32", AVX2) is None and has_native("f32", AVX2) and not has_native("bf16", AVX2)


def _entry(host: dict, precision: str) -> dict:
    row = {"precision": precision, "inference_precision": "f32", "size_mb": 1.0, "runtime": "openvino"}
    return {"candidate": "c", "family": "bert", "task": "text-classification", "model": "m", "measured": "today", "host": host, "targets": {"openvino-cpu": row}}


@pytest.mark.parametrize("host, precision, warned", [
    (AVX2, "int8", True), (AVX2, "mixed", True), (VNNI, "int8", False), (AVX2, "fp32", False), (AVX2, "int8-weights", False),
])
def test_model_card_states_the_caveat_for_what_the_candidate_computes_in(host, precision, warned):
    card = model_card(_entry(host, precision), {"recipe_name": "r", "steps": {}, "order": []})
    assert ("**Caveat:**" in card and "VNNI" in card) == warned


def test_bf16_is_refused_before_anything_runs_on_a_cpu_without_it(tiny_bert, sentences_csv, tmp_path, monkeypatch):
    import tailorfit.passes.lower as lower
    import tailorfit.pipeline.host as host

    monkeypatch.setattr(host, "host_info", lambda: AVX2)
    monkeypatch.setattr(lower, "host_info", lambda: AVX2)
    recipe = {"name": "bf16", "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(tiny_bert), "task": "text-classification"}},
        {"id": "low", "pass": "lower", "config": {"target": "openvino-cpu", "inference_precision": "bf16"}},
    ]}
    with pytest.raises(TailorfitError, match=r"this CPU \(AMD EPYC\) has no bf16 instructions"):
        run_pipeline(recipe, out=tmp_path, quiet=True)
    assert not (tmp_path / "bf16").exists()  # refused while planning: no run folder, nothing cached
