"""Rows as a plain-text table, for `lakehouse sql` and the demo."""

from __future__ import annotations


def format_rows(columns: list[str], rows) -> str:
    """Columns and rows aligned, a rule under the header, and the row count."""
    def text(value) -> str:
        if value is None:
            return "NULL"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    table = [columns] + [[text(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)
