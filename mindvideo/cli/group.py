"""The click group every ``mindvideo`` command group uses: user mistakes become one ``error: …`` line, exit code 2."""

from __future__ import annotations

import click

from mindvideo.errors import MindVideoError


class Group(click.Group):
    """A click group that reports :class:`MindVideoError` as ``error: …`` and exits with code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MindVideoError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
