"""``lensforge serve``: serve the deployments from one long-running process.

Declared here, once, for both ways to start it: ``lensforge serve`` and ``python -m
lensforge.flows.serve`` (no CLI, for a container whose entry point is Python). The deployments
themselves live in :mod:`lensforge.flows.deployments`, which imports nothing from the CLI.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lensforge.flows.cli_common import (
    ConfigOption,
    NameOption,
    OutOption,
    PresetOption,
    SetOption,
    exit_on_bad_input,
)


@exit_on_bad_input(signal_ends_normally=True)  # Ctrl-C is how serving ends: exit 0, as before
def serve(config: ConfigOption = None, set_: SetOption = None, out: OutOption = None, name: NameOption = None,
          preset: PresetOption = None,
          only: Annotated[list[str] | None, typer.Option(
              "--only", help="Serve only this deployment (repeatable): simulate, train, inpaint, "
              "build-training-set, reprocess-tiles.")] = None,
          schedules: Annotated[bool, typer.Option(
              "--schedules/--no-schedules", help="Run the cron schedules (off: triggered runs only).")] = True,
          limit: Annotated[int | None, typer.Option(min=1, help="Most flow runs at once.")] = None) -> None:
    """Serve the deployments (docs/operations.md) from this process: cron schedules and triggered runs, until Ctrl-C."""
    # Imported here: the deployments module loads Prefect (~2 s) that other commands do not need.
    from lensforge.flows.deployments import serve_deployments

    serve_deployments(config, set_, out, name, preset, only, schedules, limit)


def main() -> None:
    """``python -m lensforge.flows.serve [OPTIONS]``: ``lensforge serve`` without the rest of the CLI."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command("serve")(serve)
    app(prog_name="lensforge-serve")


if __name__ == "__main__":
    main()
