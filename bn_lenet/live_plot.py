"""The loss/accuracy figure redrawn in place after each epoch in a Jupyter notebook, as d2l's Animator does.

The figure is drawn off-screen (a bare matplotlib Figure, no pyplot window, so the notebook never shows it a
second time at the cell's end) and shown as a PNG through one IPython display handle that each epoch updates:
the picture stays where it first appeared, below the progress bars, instead of clearing the cell's output.
Outside a notebook nothing is shown (the run's curves.png has the same figure).
"""

import io
import sys


def in_notebook() -> bool:
    """True inside a Jupyter kernel (the test tqdm.auto uses); never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def notebook_display():
    """A function that shows PNG bytes in the running cell's output, replacing what it showed before; None
    outside a notebook."""
    if not in_notebook():
        return None
    from IPython.display import Image, display
    handle = None

    def show(png: bytes) -> None:
        nonlocal handle
        if handle is None:
            handle = display(Image(data=png), display_id=True)
        else:
            handle.update(Image(data=png))
    return show


class LivePlot:
    """``update(rows)`` redraws train loss, train acc and test acc (the metrics rows so far) and hands the
    picture to ``show`` (default: the notebook's display, or nothing outside one)."""

    def __init__(self, title: str = "", show=None):
        from matplotlib.figure import Figure
        from .training import plots
        self._draw = plots.draw_curves
        self.fig = Figure(figsize=(5, 3.5))
        self.ax = self.fig.subplots()
        self.title = title
        self.show = show if show is not None else notebook_display()

    def update(self, rows: list) -> None:
        self.ax.clear()
        self._draw(self.ax, rows, self.title)
        self.fig.tight_layout()
        if self.show is not None:
            png = io.BytesIO()
            self.fig.savefig(png, format="png", dpi=100)
            self.show(png.getvalue())
