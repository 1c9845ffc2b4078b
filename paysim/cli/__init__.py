"""The `paysim` command: parse, call the core, render. No logic lives here."""

from __future__ import annotations

import os
import sys
import traceback

import click
import redis
from confluent_kafka import KafkaException

from paysim import __version__
from paysim.cli.audit import audit
from paysim.cli.bench import bench
from paysim.cli.conformance import conformance
from paysim.cli.dashboard import dashboard
from paysim.cli.payments import send, status
from paysim.cli.pipeline import ps, run_all_command, service, stop
from paysim.cli.render import printable
from paysim.cli.report import report as report_group
from paysim.cli.schema import schema
from paysim.cli.settlement import settle, settlement
from paysim.cli.stack import stack
from paysim.cli.topics import topics
from paysim.cli.worker import worker
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import error_text

# Click 8.2+ raises this for a group called with no arguments; older ones print help.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="paysim")
def cli() -> None:
    """paysim: a card-payment pipeline on Kafka and Redis, and a load tool to drive it."""


for command in (run_all_command, send, status, audit, settlement, settle, ps, stop,
                report_group, stack, topics, schema, service, bench, conformance, worker,
                dashboard):
    cli.add_command(command)


# 128 + SIGPIPE: what a shell reports for a writer whose reader closed the pipe.
CLOSED_PIPE_EXIT = 141


def _fail(message: str, code: int, details: list[str] | None = None) -> None:
    # Messages quote input (a path, an id, a field's value): its control characters are shown.
    print(f"paysim: error: {printable(message)}", file=sys.stderr)
    for line in details or []:
        print(f"  {printable(line)}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends as one line on stderr and a non-zero exit code."""
    stdout = sys.stdout
    try:
        code = cli.main(args=argv, prog_name="paysim", standalone_mode=False)
    except SystemExit:
        # Click ends a command whose reader went away (`paysim audit | head`) with exit 1 and
        # swaps stdout for a wrapper that hides the failed flush; 1 is also what `audit` says
        # when it finds a payment lost. Exit as a tool killed by SIGPIPE does instead.
        if sys.stdout is not stdout:
            sys.exit(CLOSED_PIPE_EXIT)
        raise
    except NO_ARGS_IS_HELP as exc:  # a bare `paysim` or `paysim stack`: help, not an error
        click.echo(exc.ctx.get_help())
        code = 0
    except click.UsageError as exc:
        hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _fail(exc.format_message() + hint, exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except PaysimError as exc:
        _fail(str(exc), exc.exit_code, exc.details)
    except redis.RedisError as exc:  # Redis went away under a command that had reached it
        _fail(f"Redis: {exc}", 1)
    except KafkaException as exc:
        _fail(f"Kafka: {error_text(exc)}", 1)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("PAYSIM_DEBUG"):
            traceback.print_exc()
        _fail(f"internal error: {type(exc).__name__}: {exc} (PAYSIM_DEBUG=1 shows the "
              "traceback)", 70)
    sys.exit(code if isinstance(code, int) else 0)
