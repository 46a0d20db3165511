"""Rich consoles and progress bars shared by the commands."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["console", "err_console", "progress"]

console = Console()
err_console = Console(stderr=True)


def progress() -> Progress:
    """A progress display for long work, drawn on stderr so stdout stays parseable."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
