"""``attnkit repl``: an interactive session over the same registry, I/O and mechanisms as the CLI.

On a terminal it uses prompt_toolkit (history across sessions in the user state dir, completion of
commands and mechanism names); with input from a pipe it reads one command a line, prints no
prompt, and exits with code 2 if any command failed (so scripts notice), 0 otherwise.
Arrays live in named variables; ``run`` stores its result in ``out`` and keeps the weights.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as aio
from .._array import to_numpy
from ..errors import AttentionError
from ..mechanisms import registry
from ._common import State, UsageError, array_stats, attention_weights, create_mechanism, fmt_shape, has_weights, parse_pairs

HELP: dict[str, tuple[str, str]] = {
    "help": ("help [COMMAND]", "list commands, or explain one"),
    "mechanisms": ("mechanisms", "list the registered mechanisms"),
    "create": ("create TYPE [KEY=VALUE ...]", "create a mechanism (e.g. create flash heads=2 dim=8 causal=true)"),
    "set": ("set KEY=VALUE ...", "re-create the current mechanism with changed options"),
    "options": ("options", "show the current mechanism and its options (and the ones it accepts)"),
    "random": ("random LENGTH [seed=S]", "generate q, k, v (what the mechanism's sample_inputs gives)"),
    "load": ("load NAME FILE[:KEY]  |  load FILE", "load an array (or every array of a file); shape=DIMS dtype=float64"),
    "run": ("run [Q [K [V]]] [mask=NAME] [out=NAME]", "run the mechanism (default q k v, and mask if defined); result in out"),
    "save": ("save NAME FILE  |  save FILE", "write one array, or every variable to an .npz/.safetensors/.json"),
    "show": ("show [NAME ...]", "shapes, dtypes and statistics of variables (all when no name)"),
    "print": ("print NAME", "print the values of a variable"),
    "weights": ("weights [FILE.png]", "attention weights of the last run: shape and row sums; draw them to a PNG"),
    "del": ("del NAME ...", "forget variables"),
    "history": ("history", "commands of this session"),
    "quit": ("quit | exit | Ctrl-D", "leave"),
}


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "attnkit"


class Session:
    """The REPL's state and commands; :meth:`execute` runs one line."""

    def __init__(self, state: State, out: Callable[[str], None] = print) -> None:
        self.state = state
        self.out = out
        self.vars: dict[str, np.ndarray] = {}
        self.mech: Any = None
        self.mech_name: str | None = None
        self.mech_opts: dict[str, Any] = {}
        self.last_inputs: tuple[Any, ...] | None = None
        self.history: list[str] = []
        self.failures = 0

    # ------------------------------------------------------------------ dispatch
    def execute(self, line: str) -> bool:
        """Run one command line; False when the session should end."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        self.history.append(line)
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self._error(f"cannot parse the line: {exc}")
            return True
        cmd, args = words[0].lower(), words[1:]
        cmd = {"exit": "quit", "q": "quit", "?": "help", "types": "mechanisms", "vars": "show", "ls": "show"}.get(cmd, cmd)
        if cmd == "quit":
            return False
        handler = getattr(self, f"do_{cmd}", None)
        if handler is None:
            self._error(f"unknown command {cmd!r}; type help")
            return True
        try:
            handler(args)
        except (AttentionError, UsageError) as exc:
            self._error(str(exc))
        except Exception as exc:  # noqa: BLE001 - the session survives a bug, and says so
            self._error(f"internal error: {type(exc).__name__}: {exc}")
        return True

    def _error(self, msg: str) -> None:
        self.failures += 1
        sys.stderr.write(f"error: {' '.join(msg.split())}\n")
        sys.stderr.flush()

    def _need_mech(self) -> Any:
        if self.mech is None:
            raise UsageError("no mechanism yet; create one first (e.g. create flash heads=2 dim=8)")
        return self.mech

    def _var(self, name: str) -> np.ndarray:
        if name not in self.vars:
            known = ", ".join(self.vars) or "none"
            raise UsageError(f"{name}: no such variable (defined: {known})")
        return self.vars[name]

    @staticmethod
    def _split_kv(args: list[str]) -> tuple[list[str], dict[str, str]]:
        pos = [a for a in args if "=" not in a]
        return pos, parse_pairs([a for a in args if "=" in a], "option")

    # ------------------------------------------------------------------ commands
    def do_help(self, args: list[str]) -> None:
        if args:
            key = args[0].lower()
            if key not in HELP:
                raise UsageError(f"help: unknown command {args[0]!r}")
            usage, text = HELP[key]
            self.out(f"{usage}\n    {text}")
            return
        self.out("commands:")
        for usage, text in HELP.values():
            self.out(f"  {usage:<40} {text}")

    def do_mechanisms(self, args: list[str]) -> None:
        for n in registry.names():
            self.out(f"  {n:<20} {getattr(registry.get(n), 'summary', '')}")

    def do_create(self, args: list[str]) -> None:
        if not args:
            raise UsageError("create: expected a mechanism name; see `mechanisms`")
        pos, opts = self._split_kv(args)
        if len(pos) != 1:
            raise UsageError(f"create: expected one mechanism name and KEY=VALUE options, got {' '.join(args)!r}")
        self._create(pos[0], opts)

    def _create(self, name: str, opts: dict[str, Any]) -> None:
        specs = {s.name for s in registry.option_specs(name)}
        explicit = dict(opts)
        if "seed" in specs and "seed" not in explicit:
            explicit["seed"] = "0"
        mech = create_mechanism(name, explicit, self.state.config, fill_required=True)
        if self.mech is not None:
            self.mech.dispose()
        self.mech, self.mech_name, self.mech_opts = mech, mech.name, dict(opts)
        self.last_inputs = None
        self.out(f"created {mech!r}")

    def do_set(self, args: list[str]) -> None:
        self._need_mech()
        pos, opts = self._split_kv(args)
        if pos or not opts:
            raise UsageError("set: expected KEY=VALUE options")
        assert self.mech_name is not None
        self._create(self.mech_name, {**self.mech_opts, **opts})

    def do_options(self, args: list[str]) -> None:
        mech = self._need_mech()
        self.out(repr(mech))
        specs = registry.option_specs(mech.name)
        self.out("accepts: " + ", ".join(f"{s.name}:{s.type}" for s in specs))

    def do_random(self, args: list[str]) -> None:
        mech = self._need_mech()
        pos, opts = self._split_kv(args)
        if len(pos) != 1:
            raise UsageError("random: expected LENGTH (and optionally seed=S)")
        try:
            length = int(pos[0])
            seed = int(opts.pop("seed", "0"))
        except ValueError:
            raise UsageError(f"random: expected integers, got {' '.join(args)!r}") from None
        if opts:
            raise UsageError(f"random: unknown option {next(iter(opts))!r}")
        if length < 1:
            raise UsageError(f"random: expected a positive length, got {length}")
        arrays = mech.sample_inputs(length, np.random.default_rng(seed))
        names = ("q", "k", "v", "mask")[: len(arrays)]
        for n in ("q", "k", "v"):
            self.vars.pop(n, None)
        for n, a in zip(names, arrays, strict=False):
            self.vars[n] = a
        self.out(" ".join(f"{n}{fmt_shape(a.shape)}" for n, a in zip(names, arrays, strict=False)))

    def do_load(self, args: list[str]) -> None:
        pos, opts = self._split_kv(args)
        shape, dtype = opts.pop("shape", None), opts.pop("dtype", None)
        if opts:
            raise UsageError(f"load: unknown option {next(iter(opts))!r} (shape=, dtype=)")
        if len(pos) == 1:
            path, key = aio.split_key(pos[0])
            if key is not None:
                arr = aio.read_array(pos[0], shape=shape, dtype=dtype, name="load")
                self.vars[key] = arr
                self.out(f"{key}{fmt_shape(arr.shape)} {arr.dtype}")
                return
            arrays = aio.read_arrays(path, shape=shape, dtype=dtype, name="load")
            if len(arrays) == 1 and aio.DEFAULT_KEY in arrays:
                arrays = {Path(path).stem: arrays[aio.DEFAULT_KEY]}
            for k, _a in arrays.items():
                if not k.isidentifier():
                    raise UsageError(f"load: array name {k!r} is not a usable variable name; use load NAME FILE:KEY")
            self.vars.update(arrays)
            self.out(" ".join(f"{k}{fmt_shape(a.shape)}" for k, a in arrays.items()))
        elif len(pos) == 2:
            name, spec = pos
            if not name.isidentifier():
                raise UsageError(f"load: {name!r} is not a variable name")
            arr = aio.read_array(spec, shape=shape, dtype=dtype, name="load")
            self.vars[name] = arr
            self.out(f"{name}{fmt_shape(arr.shape)} {arr.dtype}")
        else:
            raise UsageError("load: expected NAME FILE or FILE")

    def do_run(self, args: list[str]) -> None:
        mech = self._need_mech()
        pos, opts = self._split_kv(args)
        out_name = opts.pop("out", "out")
        mask_name = opts.pop("mask", None)
        if opts:
            raise UsageError(f"run: unknown option {next(iter(opts))!r} (mask=, out=)")
        if len(pos) > 3:
            raise UsageError("run: expected at most three variables (Q K V); give the mask as mask=NAME")
        if not pos:
            pos = [n for n in ("q", "k", "v") if n in self.vars]
            if not pos:
                raise UsageError("run: no q defined; use random LENGTH or load q FILE")
            if mask_name is None and "mask" in self.vars:
                mask_name = "mask"
        arrays = [self._var(n) for n in pos]
        mask = self._var(mask_name) if mask_name else None
        t0 = time.perf_counter()
        result = mech.forward(*arrays, mask=mask)
        dt = time.perf_counter() - t0
        self.vars[out_name] = np.asarray(to_numpy(result))
        self.last_inputs = (arrays[0], arrays[1] if len(arrays) > 1 else None, mask)
        self.out(f"{out_name}{fmt_shape(self.vars[out_name].shape)} {self.vars[out_name].dtype} in {dt * 1e3:.3f} ms")

    def do_save(self, args: list[str]) -> None:
        if len(args) == 2:
            fmt = aio.write_array(args[1], self._var(args[0]), name="save")
            self.out(f"wrote {args[0]} to {aio.split_key(args[1])[0]} ({fmt})")
        elif len(args) == 1:
            if not self.vars:
                raise UsageError("save: no variables to save")
            fmt = aio.write_arrays(args[0], self.vars, name="save")
            self.out(f"wrote {', '.join(self.vars)} to {args[0]} ({fmt})")
        else:
            raise UsageError("save: expected NAME FILE, or FILE for every variable")

    def do_show(self, args: list[str]) -> None:
        names = args or list(self.vars)
        if not names:
            self.out("no variables; use random LENGTH or load NAME FILE")
            return
        for n in names:
            s = array_stats(self._var(n))
            stats = f" min {s['min']:.4g} max {s['max']:.4g} mean {s['mean']:.4g} std {s['std']:.4g}" if "mean" in s else ""
            finite = "" if s.get("finite", True) else " (has NaN/inf)"
            self.out(f"  {n:<8} {fmt_shape(s['shape']):<16} {s['dtype']:<8}{stats}{finite}")

    def do_print(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError("print: expected one variable name")
        with np.printoptions(precision=5, suppress=True, threshold=200, edgeitems=3):
            self.out(repr(self._var(args[0])))

    def do_weights(self, args: list[str]) -> None:
        mech = self._need_mech()
        if self.last_inputs is None:
            raise UsageError("weights: run the mechanism first")
        if not has_weights(mech):
            raise UsageError(f"weights: mechanism {mech.name!r} exposes no attention weights")
        q, k, m = self.last_inputs
        w = np.asarray(to_numpy(attention_weights(mech, q, k, m)))
        self.vars["weights"] = w
        sums = w.sum(axis=-1)
        self.out(f"weights{fmt_shape(w.shape)}: rows sum to {sums.min():.6f}..{sums.max():.6f}; stored as `weights`")
        if args:
            from ._plot import heatmap

            self.out(f"wrote {heatmap(w, args[0], title=f'{mech.name} attention weights')}")

    def do_del(self, args: list[str]) -> None:
        if not args:
            raise UsageError("del: expected variable names")
        for n in args:
            self._var(n)
            del self.vars[n]

    def do_history(self, args: list[str]) -> None:
        for i, line in enumerate(self.history[:-1], start=1):
            self.out(f"{i:4d}  {line}")


def run_repl(state: State, *, type_: str | None, history: bool) -> int:
    session = Session(state)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if type_ is not None:
        session._create(type_, {})
    if interactive:
        return _interactive(session, history)
    for line in sys.stdin:
        if not session.execute(line):
            break
    return 2 if session.failures else 0


def _interactive(session: Session, history: bool) -> int:
    print("attnkit repl: type help for commands, quit (or Ctrl-D) to leave")
    try:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import FileHistory, InMemoryHistory
    except ImportError:  # pragma: no cover - prompt_toolkit is in the cli extra
        return _plain_loop(session)
    hist: Any = InMemoryHistory()
    if history:
        try:
            d = _state_dir()
            d.mkdir(parents=True, exist_ok=True)
            hist = FileHistory(str(d / "repl_history"))
        except OSError:
            pass
    words = [*HELP, "exit", *registry.names()]
    prompt: PromptSession[str] = PromptSession(history=hist, completer=WordCompleter(words, sentence=True))
    while True:
        try:
            line = prompt.prompt("attnkit> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        if not session.execute(line):
            break
    return 0


def _plain_loop(session: Session) -> int:  # pragma: no cover - fallback without prompt_toolkit
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            line = input("attnkit> ")
        except EOFError:
            break
        if not session.execute(line):
            break
    return 0
