"""The run report: one self-contained HTML page (the Kubeflow UI renders it; MLflow keeps it as an artifact).

Scores of the ensemble and each member, the per-class table, the confusion matrix as an embedded PNG, the data
version, the ensemble weights and the registry gate's decision, so a run can be judged without opening logs.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

HEADLINE = ("weighted_f1", "macro_f1", "accuracy")

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


def score_rows(title: str, scores: dict[str, Any]) -> list[list[Any]]:
    """One row for the ensemble, then one per member: title, model, weighted F1, macro F1, accuracy, rows."""
    rows = [[title, "ensemble", *(scores[k] for k in HEADLINE), scores["rows"]]]
    for name, member in scores.get("members", {}).items():
        rows.append([title, name, *(member[k] for k in HEADLINE), member["rows"]])
    return rows


def render_html(*, metrics: dict[str, Any], evaluation: dict[str, Any], gate: dict[str, Any],
                context: dict[str, str], confusion_png: bytes | None) -> str:
    """``metrics``: the bundle's ``metrics.json``; ``evaluation``: ``evaluate_rows`` on the test split of the
    published bundle; ``gate``: ``GateDecision.to_json()``; ``context``: label → value lines (data URI...)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Rakuten training run</title>"
             f"<style>{_STYLE}</style></head><body><h1>Rakuten product classifier: training run</h1>"]
    parts.append(_table(["", ""], [[k, v] for k, v in {**context, "data version": metrics.get("data_version")}
                                   .items()]))

    champion = gate.get("champion_score")
    css = "promoted" if gate["promoted"] else "kept"
    parts.append(f"<h2>Registry gate</h2><p class=\"{css}\">{html.escape(gate['reason'])}</p>")
    parts.append(_table(["registered model", "new version", "challenger val weighted F1",
                         "champion version (before)", "champion val weighted F1", "min improvement", "champion moved"],
                        [[gate["model_name"], gate["version"], gate["challenger_score"],
                          gate.get("champion_version") or "none", "none" if champion is None else float(champion),
                          float(gate["min_improvement"]), "yes" if gate["promoted"] else "no"]]))

    parts.append("<h2>Scores</h2>")
    parts.append(_table(["split", "model", "weighted F1", "macro F1", "accuracy", "rows"],
                        [*score_rows("validation", metrics["val"]), *score_rows("test", metrics["test"]),
                         *score_rows("test (published bundle)", evaluation)]))
    parts.append("<h2>Ensemble weights</h2>")
    parts.append(_table(["member", "weight"], [[k, float(v)] for k, v in metrics["weights"].items()]))

    parts.append("<h2>Per class (test split, published bundle)</h2>")
    parts.append(_table(["prdtypecode", "category", "precision", "recall", "F1", "support"],
                        [[int(code), c["category"], c["precision"], c["recall"], c["f1"], c["support"]]
                         for code, c in evaluation["per_class"].items()]))
    if confusion_png:
        encoded = base64.b64encode(confusion_png).decode("ascii")
        parts.append("<h2>Confusion matrix (test split)</h2>"
                     f'<img alt="confusion matrix" style="max-width: 100%" src="data:image/png;base64,{encoded}">')
    parts.append("</body></html>")
    return "\n".join(parts)
