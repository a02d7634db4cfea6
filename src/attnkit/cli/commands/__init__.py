"""One Typer sub-app per command; :mod:`attnkit.cli._app` only assembles them.

Each module here holds a light Typer shell (flags, help, the call); the work is in the module of the
same name one level up (``attnkit.cli.compute``), imported only when the command runs, so
``attnkit --help`` imports neither NumPy nor the mechanisms. Flags shared by commands are defined once
in :mod:`attnkit.cli._flags`.
"""

COMMANDS = ("compute", "export", "benchmark", "convert", "serve", "repl", "info", "mechanisms", "demo", "config")
