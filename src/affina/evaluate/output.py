"""Report files of a comparison: report.json (everything), report.md (for people) and
predictions.jsonl (one line per example with every model's output side by side)."""

from __future__ import annotations

import json
from pathlib import Path

from .report import compare_rows

__all__ = ["write_report", "side_by_side", "REPORT_JSON", "REPORT_MD", "PREDICTIONS_JSONL"]

REPORT_JSON, REPORT_MD, PREDICTIONS_JSONL = "report.json", "report.md", "predictions.jsonl"
_MD_EXAMPLES = 5  # examples shown in report.md; predictions.jsonl has them all


def side_by_side(results: list[dict]) -> list[dict]:
    """One row per example: input, reference, and each model's output and scores under its label.
    Every result was computed on the same records in the same order."""
    rows: list[dict] = []
    for result in results:
        for i, p in enumerate(result.get("predictions", [])):
            if i == len(rows):
                rows.append({"source": p["source"], "line": p["line"], "input": p["prompt"],
                             "reference": p["reference"], "outputs": {}, "scores": {}})
            rows[i]["outputs"][result["label"]] = p["prediction"]
            rows[i]["scores"][result["label"]] = p.get("scores", {})
    return rows


def write_report(results: list[dict], out_dir: Path, *, data: dict, settings: dict) -> dict[str, Path]:
    """Write the three report files into `out_dir`; returns their paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    paths = {"json": out_dir / REPORT_JSON, "markdown": out_dir / REPORT_MD,
             "predictions": out_dir / PREDICTIONS_JSONL}
    paths["json"].write_text(json.dumps({"data": data, "settings": settings, "models": summary},
                                        indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    rows = side_by_side(results)
    with paths["predictions"].open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    paths["markdown"].write_text(_markdown(results, rows, data, settings), encoding="utf-8")
    return paths


def _markdown(results: list[dict], rows: list[dict], data: dict, settings: dict) -> str:
    header, table = compare_rows(results)
    lines = ["# Evaluation report", "",
             f"Data: `{', '.join(data.get('files', []))}` — {data.get('examples', 0)} examples scored"
             + (f", fingerprint `{data['fingerprint']}`" if data.get("fingerprint") else "") + ".",
             f"Generation: greedy, at most {settings.get('max_new_tokens')} new tokens.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table]
    lines += ["", "Models:", ""]
    lines += [f"- **{r['label']}**: `{r.get('ref', r['label'])}`"
              + (f" with {r['shots']} examples in the prompt" if r.get("shots") else "") for r in results]
    if rows:
        lines += ["", f"## First {min(_MD_EXAMPLES, len(rows))} examples (all in `{PREDICTIONS_JSONL}`)", ""]
        for row in rows[:_MD_EXAMPLES]:
            lines += [f"**{row['source']}:{row['line']}** — input: {_cell(row['input'])}", "",
                      f"- reference: `{_cell(row['reference'])}`"]
            lines += [f"- {label}: `{_cell(out)}`" for label, out in row["outputs"].items()]
            lines.append("")
    return "\n".join(lines) + "\n"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("`", "'")
