"""Plain-text tables for the doctor's reports (no third-party dependencies)."""

__all__ = []


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_table(headers, rows, max_width=60):
    """A fixed-width text table; cells longer than `max_width` are cut with '...'."""
    text_rows = []
    for row in rows:
        cells = []
        for value in row:
            cell = _cell(value).replace("\n", " ")
            if len(cell) > max_width:
                cell = cell[: max_width - 3] + "..."
            cells.append(cell)
        text_rows.append(cells)
    widths = [len(h) for h in headers]
    for cells in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in text_rows]
    return "\n".join(out)
