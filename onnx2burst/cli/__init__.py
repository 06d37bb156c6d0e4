"""The ``onnx2burst`` command line: one module per subcommand, imported only when it runs,
so ``--help`` is instant and a subcommand that fails to import does not break the others."""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

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
    "export-stream": "onnx2burst.cli.export_stream:export_stream",
}


class _Stopped(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, like KeyboardInterrupt for SIGINT, so that
    the temporary file of a write in progress is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise _Stopped(signum)


#: signals that stop a command cleanly (SIGINT is Python's KeyboardInterrupt already)
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _writes() -> int:
    io = sys.modules.get("onnx2burst.io")  # not imported: nothing was written
    return 0 if io is None else io.writes_count()


def _written(since: int) -> list[str]:
    io = sys.modules.get("onnx2burst.io")
    return [] if io is None else io.written_files(since)


def _stopped_message(what: str, files: list[str]) -> str:
    """One line: what stopped the command and what it had written (outputs are atomic: no
    file is ever left half-written)."""
    if not files:
        return f"{what}: nothing was written"
    shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    return f"{what}: wrote only {shown}; the other outputs were not written"


class _LazyGroup(click.Group):
    def invoke(self, ctx):
        since = _writes()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:  # not one that is ignored (nohup) or handled
                    handlers[sig] = signal.signal(sig, _stop)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # outputs are written atomically: nothing partial is left
            click.echo(_stopped_message("interrupted", _written(since)), err=True)
            ctx.exit(130)  # 128 + SIGINT, as shells report it
        except _Stopped as e:
            name = signal.Signals(e.signum).name
            click.echo(_stopped_message(f"stopped by {name}", _written(since)), err=True)
            ctx.exit(128 + e.signum)  # 143 for SIGTERM, as shells report it
        except BrokenPipeError:  # stdout closed early (| head): nothing more to say, and no traceback
            try:  # python's flush of stdout at exit must not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            ctx.exit(1)
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)

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
