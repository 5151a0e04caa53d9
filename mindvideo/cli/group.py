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


def _set_weight_verification(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    from mindvideo.weights import set_verification

    set_verification(not value)  # set on every run, so one run's flag never outlives it in the same process
    return value


def add_weight_verification(root: click.Group) -> None:
    """Give every command that loads checkpoint weights (a ``checkpoint`` parameter, ``demo``, the training stages)
    the ``--no-verify-weights`` flag."""
    for name, command in root.commands.items():
        if isinstance(command, click.Group):
            add_weight_verification(command)
            continue
        names = {p.name for p in command.params}
        if "no_verify_weights" in names or not ({"checkpoint", "resume"} & names or name == "demo"):
            continue
        command.params.append(
            click.Option(
                ["--no-verify-weights"],
                is_flag=True,
                expose_value=False,
                callback=_set_weight_verification,
                help="Skip the sha256 check of weight files against their folder's weights.sha256 (saves time on "
                "huge files; non-finite weights are refused regardless).",
            )
        )
