"""The run report: one self-contained HTML page (the Kubeflow UI renders it; MLflow keeps it as an artifact).

Scores of the ensemble and each member, the per-class table (codes in numeric order), the training curves (each
member's train loss and validation weighted F1 per epoch) and the confusion matrix as embedded PNGs, the data
version, the ensemble weights and the registry gate's decision with the challenger and the champion side by side on
the same rows (and the paired bootstrap's confidence), so a run can be judged without opening logs.

The register step writes the page at the path Kubeflow gives its HTML output artifact (a file named ``report``,
which the Kubeflow UI renders) and the same page as ``report.html`` next to it (:func:`html_path`), which a
browser opens as HTML; MLflow keeps it as the run's ``report/report.html``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HEADLINE = ("weighted_f1", "macro_f1", "accuracy")
HTML_NAME = "report.html"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.promoted { color: #0a7d28; font-weight: bold; }
.kept { color: #a15c00; font-weight: bold; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_path(report_path: str | Path) -> Path:
    """Where the browsable copy of the report written at ``report_path`` goes: ``report.html`` beside it."""
    return Path(report_path).with_name(HTML_NAME)


def write(report_path: str | Path, page: str) -> Path:
    """Write ``page`` at ``report_path`` (Kubeflow's HTML artifact) and at :func:`html_path`; return the latter."""
    report, copy = Path(report_path), html_path(report_path)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(page, encoding="utf-8")
    if copy != report:
        copy.write_text(page, encoding="utf-8")
    return copy


def curves_png(history: dict[str, list[dict[str, float]]]) -> bytes | None:
    """Each member's train loss and validation weighted F1 per epoch, side by side (None: no history)."""
    history = {name: records for name, records in history.items() if records}
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    loss, f1 = fig.subplots(1, 2)
    for name, records in history.items():
        epochs = [int(r["epoch"]) for r in records]
        loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label=name)
        f1.plot(epochs, [r["val_weighted_f1"] for r in records], marker="o", label=name)
    for ax, title in ((loss, "train loss"), (f1, "validation weighted F1")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _png(title: str, alt: str, png: bytes) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (f'<h2>{html.escape(title)}</h2>'
            f'<img alt="{alt}" style="max-width: 100%" src="data:image/png;base64,{encoded}">')


def score_rows(title: str, scores: dict[str, Any]) -> list[list[Any]]:
    """One row for the ensemble, then one per member: title, model, weighted F1, macro F1, accuracy, rows."""
    rows = [[title, "ensemble", *(scores[k] for k in HEADLINE), scores["rows"]]]
    for name, member in scores.get("members", {}).items():
        rows.append([title, name, *(member[k] for k in HEADLINE), member["rows"]])
    return rows


def gate_section(gate: dict[str, Any], compared: dict[str, Any]) -> str:
    """The decision, then the challenger and the champion on the same rows, then the paired bootstrap."""
    c = gate["comparison"]
    css = "promoted" if gate["promoted"] else "kept"
    champion = c.get("champion_version") or "none"
    parts = [f"<h2>Registry gate</h2><p class=\"{css}\">{html.escape(gate['reason'])}</p>",
             _table(["registered model", "new version", "outcome", "champion version (before)", "compared rows",
                     "rows left out (the champion trained on them)", "data version", "min improvement",
                     "champion moved"],
                    [[gate["model_name"], gate["version"], gate["outcome"], champion, c["rows"],
                      compared.get("excluded_rows", 0), c["data_version"], float(gate["min_improvement"]),
                      "yes" if gate["promoted"] else "no"]])]
    scores = compared.get("scores", {})
    if scores:
        versions = {"challenger": gate["version"], "champion": champion}
        parts.append("<h3>Both models on the same held-out test rows</h3>")
        parts.append(_table(["model", "version", "weighted F1", "macro F1", "accuracy", "rows"],
                            [[name, versions[name], *(s[k] for k in HEADLINE), s["rows"]]
                             for name, s in scores.items()]))
    boot = c.get("bootstrap")
    if boot:
        parts.append(_table(["weighted F1 difference (challenger − champion)", "95% interval", "confidence "
                             "(resamples won by more than the margin)", "resamples"],
                            [[float(boot["difference"]), f"[{boot['low']:+.4f}, {boot['high']:+.4f}]",
                              f"{boot['confidence']:.1%}", boot["resamples"]]]))
    return "".join(parts)


def render_html(*, metrics: dict[str, Any], evaluation: dict[str, Any], gate: dict[str, Any],
                context: dict[str, str], confusion_png: bytes | None) -> str:
    """``metrics``: the bundle's ``metrics.json`` (its ``history``: each member's epochs, drawn as curves);
    ``evaluation``: ``evaluate_rows`` on the test split of the
    published bundle, with the evaluate step's ``comparison`` (both models on the same rows); ``gate``:
    ``GateDecision.to_json()``; ``context``: label → value lines (data URI...)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Rakuten training run</title>"
             f"<style>{_STYLE}</style></head><body><h1>Rakuten product classifier: training run</h1>"]
    parts.append(_table(["", ""], [[k, v] for k, v in {**context, "data version": metrics.get("data_version")}
                                   .items()]))
    parts.append(gate_section(gate, evaluation.get("comparison", {})))
    parts.append("<h2>Scores</h2>")
    parts.append(_table(["split", "model", "weighted F1", "macro F1", "accuracy", "rows"],
                        [*score_rows("validation", metrics["val"]), *score_rows("test", metrics["test"]),
                         *score_rows("test (published bundle)", evaluation)]))
    parts.append("<h2>Ensemble weights</h2>")
    parts.append(_table(["member", "weight"], [[k, float(v)] for k, v in metrics["weights"].items()]))

    parts.append("<h2>Per class (test split, published bundle)</h2>")
    parts.append(_table(["prdtypecode", "category", "precision", "recall", "F1", "support"],
                        [[int(code), c["category"], c["precision"], c["recall"], c["f1"], c["support"]]
                         for code, c in sorted(evaluation["per_class"].items(), key=lambda item: int(item[0]))]))
    curves = curves_png(metrics.get("history", {}))
    if curves:
        parts.append(_png("Training curves (per member, per epoch)", "training curves", curves))
    if confusion_png:
        parts.append(_png("Confusion matrix (test split)", "confusion matrix", confusion_png))
    parts.append("</body></html>")
    return "\n".join(parts)
