"""Entrypoint for `ray job submit -- python jobs/train_gan.py TABLE [options]`.

The same function and options as `cxr-ray train-gan` (see `--help`).
"""

import sys

import typer

from cxr_ray.cli.train_gan_cmd import EPILOG, train_gan

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(name="train-gan", epilog=EPILOG)(train_gan)

if __name__ == "__main__":
    sys.exit(app(sys.argv[1:], prog_name="jobs/train_gan.py"))
