"""The report page: formatting of figures, the verdict sentences, the headroom table, and a page
of sections (paragraphs, tables, images) rendered as HTML and as Markdown.
"""

from __future__ import annotations

import html

def pct_cell(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * x:.1f}"


def round_cell(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def trace(selections: list[str]) -> str:
    """Consecutive equal selections run-length encoded: 'λ=0.9 ×6 → real ×2'."""
    parts: list[list] = []
    for s in selections:
        if parts and parts[-1][0] == s:
            parts[-1][1] += 1
        else:
            parts.append([s, 1])
    return " → ".join(f"{s} ×{n}" for s, n in parts)


QUALITY_COLUMNS = [("images", "images", "n"), ("train_fid", "FID (train)", "f"), ("test_fid", "FID (test)", "f"),
                   ("train_kid", "KID ×1000 (train)", "k"), ("train_precision", "precision", "r"),
                   ("train_recall", "recall", "r"), ("train_density", "density", "r"),
                   ("train_coverage", "coverage", "r"), ("copies", "copies", "r"),
                   ("closer_than_source", "closer than source gap", "r"), ("diversity", "diversity (syn/real)", "r"),
                   ("clip_text", "CLIP score", "r")]


def quality_cell(value, kind: str) -> str:
    if value is None or value == "":
        return "–"
    return {"n": f"{value}", "f": f"{value:.1f}", "k": f"{1000 * value:.1f}", "r": f"{value:.2f}"}[kind]


def headroom_blocks(h: dict) -> list:
    """The headroom paragraph and table: how much of what the generator's own training images would
    add (the reference) each variant recovers, over the best real-only classifier."""
    if "unavailable" in h:
        return [("p", f"Headroom recovery cannot be computed: {h['unavailable']}.")]
    best, ref = h["best_real_only"], h["reference"]
    room = h["headroom"]
    text = (f"The reference variant '{ref}' is real-only Balanced Softmax trained on train + the images the generator was "
            f"trained on. Its headroom over the best real-only classifier on validation, '{best}', is "
            f"{signed(room['acc']['mean'])} points overall and {signed(room['acc_few']['mean'])} on the few classes "
            "(mean over seeds). Recovery = (variant − best real-only) / (reference − best real-only), per seed: "
            "100% would mean the synthetic images pass on all the generator learned from its images, 0% nothing, "
            "below 0 they cost accuracy.")

    def cell(m: dict) -> str:
        if m["mean"] is None:
            return "–"
        return f"{100 * m['mean']:.0f}" + (f" ± {100 * m['std']:.0f}" if m["std"] is not None else "")

    rows = [[name, cell(r["acc"]), cell(r["acc_few"]), f"{r['acc_few']['seeds_at_half']}/{r['acc_few']['seeds']}"]
            for name, r in h["recovery"].items()]
    return [("p", text), ("table", ["variant", "overall recovered %", "few recovered %", "seeds >= 50% (few)"], rows)]


def verdicts(ev: dict) -> list[str]:
    """One plain sentence per variant against the baseline."""
    base = ev["baseline"]
    out = []
    for name, comp in ev["comparisons"].items():
        a, f = comp["acc"], comp["acc_few"]
        if a["mean_diff"] is None or f["mean_diff"] is None:
            out.append(f"{name}: no few-class accuracy to compare with {base}.")
        else:
            how = (f"{signed(a['mean_diff'])} points overall and {signed(f['mean_diff'])} points on the few "
                   f"classes (won {f['seeds_won']} of {f['seeds']} seeds on few)")
            out.append(f"{name} {'beats' if comp['verdict'] == 'beats' else 'does NOT beat'} {base}: {how}.")
        for split, c in comp.get("test_splits", {}).items():
            f1 = c["macro_f1"]
            if f1["mean_diff"] is not None:
                out.append(f"{name} on {split}: macro-F1 {signed(f1['mean_diff'])} points against {base} "
                           f"(won {f1['seeds_won']} of {f1['seeds']} seeds): {c['verdict'].replace('does not beat', 'does NOT beat')}.")
    return out


def to_html(title: str, sections) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;font-size:14px}th{background:#f3f3f3}figure{margin:1.5em 0}"
             "img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        for block in blocks:
            if block[0] == "p":
                parts.append(f"<p>{e(block[1])}</p>")
            elif block[0] == "table":
                parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in block[1]) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2]]
                parts.append("</table>")
            elif block[0] == "img":
                parts.append(f"<figure><img src='{e(block[1])}' alt='{e(block[2])}'>"
                             f"<figcaption>{e(block[2])}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def to_markdown(title: str, sections) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "table":
                lines.append("| " + " | ".join(block[1]) + " |")
                lines.append("|" + "---|" * len(block[1]))
                lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in block[2]]
                lines.append("")
            elif block[0] == "img":
                lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
    return "\n".join(lines)
