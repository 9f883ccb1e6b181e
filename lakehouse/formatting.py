"""Text for people: rows as a plain-text table (`lakehouse sql`, the demo), durations and sizes."""

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


def duration_text(seconds: float | None) -> str:
    """1.2s, 3m05s, 2h04m, 3d04h; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size_text(n: int | None) -> str:
    """512 B, 3.4 KiB, 12.0 MiB, 1.50 GiB; "-" for None."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{n} B"
