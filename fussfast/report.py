"""An offline HTML report comparing runs: mIoU and Dice per round (global and per site; with the
dense CRF's figures when the runs have them, ``eval.crf``), the final table, pairwise
centroid-distance heatmaps (prototype collapse), sample predictions and communication. One
self-contained file: inline SVG charts and base64 PNG images, no scripts and nothing fetched."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from fussfast._files import read_json

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def write_report(runs: dict[str, str | Path], path: str | Path, title: str = "fussfast report") -> Path:
    """``runs``: label → run directory (as written by ``fussfast run``)."""
    loaded = {label: _load(Path(d)) for label, d in runs.items()}
    first = next(iter(loaded.values()))["metrics"]
    parts = [f"<h1>{html.escape(title)}</h1>", _setup(first), "<h2>Final results</h2>", _final_table(loaded),
             "<h2>mIoU and Dice per round</h2>", _round_charts(loaded)]
    if any("k_estimate" in rd for r in loaded.values() for rd in r["metrics"]["rounds"]):
        parts += ["<h2>Automatic class count</h2>", _k_table(loaded)]
    if any(r["samples"] is not None and "centroid_distance" in r["samples"] for r in loaded.values()):
        parts += ["<h2>Prototype collapse: pairwise centroid distances</h2>", _heatmaps(loaded)]
    if any("dp" in rd for r in loaded.values() for rd in r["metrics"]["rounds"]):
        parts += ["<h2>Differential privacy: epsilon spent per round</h2>", _privacy(loaded)]
    parts += ["<h2>Sample predictions</h2>", _samples(loaded), "<h2>Communication per round</h2>",
              _communication(loaded)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")  # renamed into place: never a half-written page
    tmp.write_text(page)
    tmp.replace(path)
    return path


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.row{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:.85em;text-align:center}img{image-rendering:pixelated}
.note{color:#555;font-size:.9em}"""


def _load(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    metrics = read_json(path)
    missing = [k for k in ("config", "rounds", "final", "baseline") if k not in metrics]
    if missing or not isinstance(metrics.get("config"), dict):
        raise ValueError(f"{path}: not the metrics of a fussfast run (missing {missing or ['config']})")
    if metrics["final"] is None:
        raise ValueError(f"{path}: the run has no scored round yet")
    out = {"metrics": metrics, "samples": None}
    if (run_dir / "samples.safetensors").is_file():
        out["samples"] = load_file(str(run_dir / "samples.safetensors"))
    return out


def _setup(m: dict) -> str:
    c = m["config"]
    d, f, t = c["data"], c["fed"], c["train"]
    supervised = c.get("task") == "supervised"
    if d["split"] == "class-erased":
        skew = f"class-erased (classes annotated per site: {d['classes_per_site']})"
    else:
        skew = f"label skew α={d['alpha']}"
    scoring = ("Scores are supervised (each predicted class is taken as it is)." if supervised
               else "Scores are unsupervised (clusters matched to classes by the Hungarian method).")
    return (f"<p class='note'>Data: {d['kind']}, {d['sites']} sites × {d['images_per_site']} images at "
            f"{d['image_size']}px, {d['num_classes']} classes, {skew}; shared evaluation set "
            f"of {d['eval_images']} images. Backbone {html.escape(c['model']['backbone'])} "
            f"({c['model']['weights']} weights, {c['model']['precision']}). {f['rounds']} rounds × "
            f"{t['local_steps']} local steps, backend {t['backend']}, device {m['device']}, seed {c['seed']}. "
            f"Majority-class baseline mIoU {m['baseline']['majority']['miou']:.1f}. {scoring}</p>")


def _figure(scores: dict, key: str, crf: bool = False) -> float:
    """``scores[key]`` (of the CRF-refined predictions when ``crf``); NaN when the run has no such figure
    (Dice in runs older than it, the CRF when ``eval.crf`` was off)."""
    scores = scores.get("crf", {}) if crf else scores
    return float(scores.get(key, float("nan")))


def _cell(value: float) -> str:
    return f"<td>{value:.1f}</td>" if np.isfinite(value) else "<td>-</td>"


def _with_crf(runs: dict) -> bool:
    return any("crf" in r["metrics"]["final"]["global"] for r in runs.values())


def _final_table(runs: dict) -> str:
    sites = list(next(iter(runs.values()))["metrics"]["final"]["clients"])
    crf = [False, True] if _with_crf(runs) else [False]
    kinds = [(k, c) for c in crf for k in ("miou", "dice")]  # mIoU, Dice; then the same with the CRF
    name = lambda k, c: ("mIoU" if k == "miou" else "Dice") + (" (CRF)" if c else "")  # noqa: E731
    head = "".join(f"<th>global {name(k, c)}</th>" for k, c in kinds) + "<th>global acc</th>"
    head += "".join(f"<th>{html.escape(s)} {name(k, c)}</th>" for s in sites for k, c in kinds)
    rows = [f"<tr><th>run</th><th>setup</th>{head}<th>MB sent</th><th>wall s</th></tr>"]
    for label, r in runs.items():
        m = r["metrics"]
        g, clients = m["final"]["global"], m["final"]["clients"]
        mb = sum(b["up"] + b["down"] for rd in m["rounds"] for b in rd.get("bytes", {}).values()) / 1e6
        cells = "".join(_cell(_figure(g, k, c)) for k, c in kinds) + _cell(g["acc"])
        cells += "".join(_cell(_figure(clients.get(s, {}), k, c)) for s in sites for k, c in kinds)
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(_variant(m['config']))}</td>{cells}"
                    f"<td>{mb:.2f}</td><td>{m['timings']['total_s']:.0f}</td></tr>")
    crf_note = (" (CRF): the predictions refined by a dense CRF on the images (eval.crf), matched and scored on "
                "their own." if len(crf) > 1 else "")
    return ("<table>" + "".join(rows) + "</table><p class='note'>Global: the global model on the shared set "
            "(for local and personalized runs, the mean over the sites' own models). Per site: the same model on "
            f"that site's training images. Dice = 2TP / (2TP + FP + FN), averaged over classes as mIoU is."
            f"{crf_note}</p>")


def _k_table(runs: dict) -> str:
    """Auto-K (``fed.k_auto``): each run's estimated cluster count per round against the true one."""
    rounds = max(len(r["metrics"]["rounds"]) for r in runs.values())
    rows = ["<tr><th>run</th><th>true K</th>" + "".join(f"<th>round {i + 1}</th>" for i in range(rounds)) + "</tr>"]
    for label, r in runs.items():
        m = r["metrics"]
        if not any("k_estimate" in rd for rd in m["rounds"]):
            continue
        cells = "".join(f"<td>{rd.get('k_estimate', '-')}</td>" for rd in m["rounds"])
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{m['config']['data']['num_classes']}</td>{cells}</tr>")
    return ("<table>" + "".join(rows) + "</table><p class='note'>K̂: the clusters the server kept after each "
            "round (near-duplicate slot centroids merged by silhouette, fed.k_min to fed.k_max); the true K is "
            "data.num_classes.</p>")


def _variant(config: dict) -> str:
    """What sets a run apart: its strategy and, when on, LoRA, the local MoE, the two-phase round,
    distillation and the local groups (keys absent from older runs count as off)."""
    f, m = config["fed"], config["model"]
    parts = [f["strategy"]]
    if f.get("k_auto"):
        parts.append(f"auto-K in [{f['k_min']}, {f['k_max'] or 2 * config['data']['num_classes']}]")
    if m.get("lora_rank", 0):
        parts.append(f"LoRA r{m['lora_rank']} on {m['lora_blocks']} blocks")
    if m.get("moe_experts", 0):
        parts.append(f"MoE {m['moe_experts']} experts ({m['moe_router']})")
    if f.get("personal_steps", 0):
        parts.append(f"two-phase, {f['personal_steps']} personal steps")
    if f.get("distill_weight", 0):
        parts.append(f"distill {f['distill_weight']:g} ({f['distill']})")
    if f.get("local_params"):
        parts.append("local: " + ", ".join(f["local_params"]))
    if f.get("dp_epsilon", 0):
        parts.append(f"DP ε={f['dp_epsilon']:g} δ={f['dp_delta']:g} clip {f['dp_clip']:g} ({f['dp_accountant']})")
    return "; ".join(parts)


def _privacy(runs: dict) -> str:
    """Per DP run: the epsilon spent after each round (fed/privacy.py) and the noise's sigma."""
    private = {label: r["metrics"]["rounds"] for label, r in runs.items()
               if any("dp" in rd for rd in r["metrics"]["rounds"])}
    n = max(len(rounds) for rounds in private.values())
    rows = [f"<tr><th>run (σ per coordinate)</th>{''.join(f'<th>round {i + 1}</th>' for i in range(n))}</tr>"]
    for label, rounds in private.items():
        sigma = next(rd["dp"]["sigma"] for rd in rounds if "dp" in rd)
        cells = "".join(f"<td>{rd['dp']['epsilon']:.3g}</td>" if "dp" in rd else "<td></td>" for rd in rounds)
        rows.append(f"<tr><td>{html.escape(label)} (σ {sigma:.3g})</td>{cells}</tr>")
    chart = line_chart({label: [rd["dp"]["epsilon"] if "dp" in rd else float("nan") for rd in rounds]
                        for label, rounds in private.items()}, "epsilon spent", ymax=None)
    return ("<table>" + "".join(rows) + f"</table>{chart}<p class='note'>Each site clips its centroids to "
            "fed.dp_clip and adds Gaussian noise before the upload; epsilon (at the run's delta) protects any change "
            "of one site's images, composed over the rounds by dp-accounting. The heads travel unnoised.</p>")


def _round_charts(runs: dict) -> str:
    def series(key, site=None, crf=False):
        out = {}
        for label, r in runs.items():
            rounds = r["metrics"]["rounds"]
            out[label] = [_figure(rd["clients"][site] if site else rd["global"], key, crf) if "global" in rd and
                          (site is None or site in rd["clients"]) else float("nan") for rd in rounds]
        return out  # NaN: a round that was not scored (fed.eval_every), left out of the line

    sites = list(next(iter(runs.values()))["metrics"]["final"]["clients"])
    kinds = [(k, c) for c in ([False, True] if _with_crf(runs) else [False]) for k in ("miou", "dice")]
    name = lambda k, c: ("mIoU" if k == "miou" else "Dice") + (" with CRF" if c else "")  # noqa: E731
    charts = [line_chart(series(k, crf=c), f"global {name(k, c)}") for k, c in kinds]
    charts += [line_chart(series(k, s, c), f"{s} {name(k, c)}") for s in sites for k, c in kinds]
    return f"<div class='row'>{''.join(charts)}</div>"


def line_chart(series: dict[str, list[float]], title: str, ymax: float | None = 100.0,
               width: int = 340, height: int = 230) -> str:
    """An SVG line chart of values per round, one line per series."""
    left, right, top, bottom = 40, 10, 24, 30
    n = max((len(v) for v in series.values()), default=1)
    top_value = ymax or max((max(v) for v in series.values() if v), default=1.0) or 1.0
    px = lambda i: left + (width - left - right) * (i / max(n - 1, 1))  # noqa: E731
    py = lambda v: top + (height - top - bottom) * (1 - v / top_value)  # noqa: E731
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 18 * len(series)}' "
           f"font-size='11'><text x='{width / 2}' y='14' text-anchor='middle' font-weight='bold'>"
           f"{html.escape(title)}</text>"]
    for k in range(5):
        v = top_value * k / 4
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{py(v):.1f}' y2='{py(v):.1f}' stroke='#eee'/>"
                   f"<text x='{left - 4}' y='{py(v) + 4:.1f}' text-anchor='end'>{v:.0f}</text>")
    for i in range(n):
        out.append(f"<text x='{px(i):.1f}' y='{height - bottom + 14}' text-anchor='middle'>{i + 1}</text>")
    out.append(f"<text x='{(left + width) / 2}' y='{height - 4}' text-anchor='middle'>round</text>")
    for j, (label, values) in enumerate(series.items()):
        color = COLORS[j % len(COLORS)]
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(values) if np.isfinite(v))
        out.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{points}'/>")
        out += [f"<circle cx='{px(i):.1f}' cy='{py(v):.1f}' r='2.5' fill='{color}'/>"
                for i, v in enumerate(values) if np.isfinite(v)]
        y = height + 14 * j + 6
        out.append(f"<rect x='{left}' y='{y}' width='12' height='4' fill='{color}'/>"
                   f"<text x='{left + 16}' y='{y + 5}'>{html.escape(label)}</text>")
    return "".join(out) + "</svg>"


def _heatmaps(runs: dict) -> str:
    figures = []
    for label, r in runs.items():
        samples = r["samples"]
        if samples is None or "centroid_distance" not in samples:
            continue
        assignment = samples["assignment"].tolist()
        # rows by the class each centroid is matched to, unmatched last
        order = sorted(range(len(assignment)), key=lambda k: (assignment[k] < 0, assignment[k]))
        dist = samples["centroid_distance"][order][:, order].double()
        off = dist[~torch.eye(len(dist), dtype=torch.bool)]
        idle = int((samples["usage"] == 0).sum())
        caption = f"{html.escape(label)}: closest pair {off.min():.2f}, {idle} of {len(dist)} centroids win no pixel"
        figures.append(f"<figure>{heatmap(dist.numpy(), vmax=2.0)}<figcaption>{caption}</figcaption></figure>")
    return (f"<div class='row'>{''.join(figures)}</div><p class='note'>Distance between every pair of the scored "
            "model's centroids as the shared set sees them: 1 − the correlation of their cosine responses over the "
            "pixels (white 0: the two respond alike, dark 2: opposite). Rows follow the class each centroid is "
            "matched to. Collapsed prototypes show as light off-diagonal cells, a small closest-pair distance and "
            "centroids that win no pixel: FedAvg's index-wise average can merge centroids that mean different "
            "classes on different sites; FedCC re-clusters the pooled centroids instead.</p>")


def heatmap(matrix: np.ndarray, vmax: float, cell: int = 16) -> str:
    k = matrix.shape[0]
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{k * cell}' height='{k * cell}'>"]
    for i in range(k):
        for j in range(k):
            shade = int(255 * (1 - min(float(matrix[i, j]) / vmax, 1.0)))
            out.append(f"<rect x='{j * cell}' y='{i * cell}' width='{cell}' height='{cell}' "
                       f"fill='rgb({shade},{shade},{min(255, shade + 40)})'><title>{matrix[i, j]:.3f}</title></rect>")
    return "".join(out) + "</svg>"


def _palette(num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    colors = rng.integers(40, 256, (max(num_classes, 1), 3)).astype(np.uint8)
    return np.concatenate([colors, np.zeros((1, 3), np.uint8)])  # last: ignore / unmatched (black)


def _png(array: np.ndarray, scale: int = 2) -> str:
    from PIL import Image

    image = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'/>"


def _samples(runs: dict) -> str:
    with_samples = {label: r["samples"] for label, r in runs.items() if r["samples"] is not None}
    if not with_samples:
        return "<p>No samples saved.</p>"
    first = next(iter(with_samples.values()))
    K = next(iter(runs.values()))["metrics"]["config"]["data"]["num_classes"]
    palette = _palette(K)
    colorize = lambda m: palette[np.where((m >= 0) & (m < K), m, K)]  # noqa: E731
    header = "<tr><th>image</th><th>ground truth</th>" + "".join(
        f"<th>{html.escape(label)}</th>" for label in with_samples) + "</tr>"
    rows = []
    for i in range(first["image"].shape[0]):
        cells = [_png(first["image"][i].permute(1, 2, 0).numpy()), _png(colorize(first["mask"][i].numpy()))]
        cells += [_png(colorize(s["pred"][i].numpy())) for s in with_samples.values()]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table>" + header + "".join(rows) + "</table><p class='note'>Predicted clusters are coloured by the "
            "class the Hungarian matching assigns them on the shared set; black: unlabelled or unmatched.</p>")


def _communication(runs: dict) -> str:
    n = max(len(r["metrics"]["rounds"]) for r in runs.values())
    head = "".join(f"<th>round {i + 1}</th>" for i in range(n))
    rows = [f"<tr><th>strategy (MB up / down, all clients)</th>{head}</tr>"]
    for label, r in runs.items():
        cells = []
        for rd in r["metrics"]["rounds"]:
            b = rd.get("bytes", {}).values()
            cells.append(f"<td>{sum(x['up'] for x in b) / 1e6:.2f} / {sum(x['down'] for x in b) / 1e6:.2f}</td>")
        rows.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    return ("<table>" + "".join(rows) + "</table><p class='note'>What travels: the head, the centroids, LoRA's "
            "factors when on and SCAFFOLD's control variates, minus the local groups (fed.local_params, the "
            "mixture of experts); the backbone never does. Local training sends nothing.</p>")
