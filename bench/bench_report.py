"""bench/report.py and the results names, on a made-up pytest-benchmark JSON (no timing)."""

import json

import pytest

import report
from _common import results_name

MACHINE = {"cpu": "Intel(R) Xeon(R) Processor", "isa_flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile"],
           "fussfast_cpu_isa": "avx512", "torch_cpu_capability": "AVX512", "threads": 2, "torch": "2.x",
           "env": {"FUSSFAST_CPU_ISA": "avx512"}}


def fake_run(times: dict, machine=MACHINE) -> dict:
    return {"datetime": "now", "benchmarks": [
        {"stats": {"median": t / 1e3, "min": t / 2e3, "rounds": 5},
         "extra_info": {"op": "op", "device": "cpu", "case": case, "dtype": "float32", "mode": "forward",
                        "method": method, "threads": 2, "machine": machine}}
        for (case, method), t in times.items()],
        "fussfast_skipped": [{"nodeid": "x", "reason": "torch_scatter is not installed"},
                             {"nodeid": "y", "reason": "needs a CUDA device and a CUDA build of fussfast"}]}


def test_report_ratios_and_summary(tmp_path):
    src = tmp_path / "raw.json"
    src.write_text(json.dumps(fake_run({("a", "fused"): 2.0, ("a", "compile"): 1.0, ("a", "eager"): 6.0,
                                        ("b", "fused"): 3.0, ("b", "compile"): 4.5})))
    report.main(str(src), str(tmp_path / "out"))
    out = json.loads((tmp_path / "out.json").read_text())
    ratios = {r["case"]: r["ratio"] for r in out["rows"]}
    assert ratios == {"a": {"compile": 0.5, "eager": 3.0}, "b": {"compile": 1.5}}
    assert out["machine"] == MACHINE and out["skipped"] == ["torch_scatter is not installed"]
    md = (tmp_path / "out.md").read_text()
    assert "behind (< 1.0x): 1 of 3 comparisons" in md and "- op a float32 forward: compile 0.50x" in md
    assert "fussfast CPU path: avx512" in md and "amx_tile" in md and "| b | float32 | forward | 3.000 |" in md


def test_report_refuses_mixed_machines(tmp_path):
    raw = fake_run({("a", "fused"): 1.0})
    raw["benchmarks"] += fake_run({("a", "eager"): 1.0}, dict(MACHINE, fussfast_cpu_isa="avx2"))["benchmarks"]
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    with pytest.raises(SystemExit, match="different machines"):
        report.main(str(tmp_path / "raw.json"), str(tmp_path / "out"))


def test_results_names():
    assert results_name(MACHINE) == "cpu_intel_xeon_avx512bf16_amx_2t_avx512"
    epyc = dict(MACHINE, cpu="AMD EPYC 7763 64-Core Processor", isa_flags=["avx2"], fussfast_cpu_isa="n/a")
    assert results_name(epyc) == "cpu_amd_epyc_7763_avx2_2t"
