"""The ``onnx2burst`` command line: one module per subcommand, imported only when it runs,
so ``--help`` is instant and a subcommand that fails to import does not break the others."""
from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click.Command; add a line here for a new subcommand.
COMMANDS = {
    "doctor": "onnx2burst.cli.doctor:doctor",
    "convert": "onnx2burst.cli.convert:convert",
    "inspect": "onnx2burst.cli.inspect:inspect",
    "portable": "onnx2burst.cli.portable:portable",
    "eval": "onnx2burst.cli.eval:command",
    "search": "onnx2burst.cli.search:command",
    "export-torch": "onnx2burst.cli.export_torch:export_torch",
    "export-nir": "onnx2burst.cli.export_nir:export_nir",
}


class _LazyGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # outputs are written atomically: nothing partial is left
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(130)  # 128 + SIGINT, as shells report it

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        mod, attr = target.split(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except Exception as e:  # noqa: BLE001 - show the broken subcommand, keep the others
            why = repr(e)  # `e` itself is unbound once the except block ends

            @click.command(name=name, help=f"(unavailable: {e})")
            def broken():
                raise click.ClickException(f"subcommand {name!r} failed to load: {why}")
            return broken


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx2burst")
def main():
    """onnx2burst: turn a trained ReLU network in ONNX into a burst-spiking SNN ONNX file.

    \b
    Example:
      onnx2burst doctor
      onnx2burst convert model.onnx --T 8 --psi 4 --calib data.npz -o model.snn.onnx
    """
