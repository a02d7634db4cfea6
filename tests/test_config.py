"""The TOML config: where it is found, what it may hold, and that flags override it (through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_support import Runner, clean_env, ok, one_error_line

from attnkit import ConfigError
from attnkit.cli.config import SCHEMA, default_config_text, find_config, load_config, parse_config, user_config_path

# the platform spec's example config.toml, verbatim: it must load
SPEC_CONFIG = """
[attention]
default_type = "multi-head"
num_heads = 8
hidden_dim = 128
dropout = 0.1

[optimization]
use_simd = true
num_threads = 4
batch_size = 64

[server]
host = "0.0.0.0"
port = 8080
max_batch_size = 256
timeout_ms = 5000
max_connections = 1000

[logging]
level = "info"
format = "json"
"""


def test_spec_config_loads_and_maps_names():
    cfg = parse_config(SPEC_CONFIG, "spec.toml")
    assert cfg["attention"]["default_type"] == "multi_head"  # the spec's spelling, resolved by the registry
    assert cfg["optimization"]["num_threads"] == 4
    assert cfg["server"]["timeout_ms"] == 5000
    assert cfg["logging"]["format"] == "json"


def test_default_template_parses_to_the_defaults(tmp_path):
    text = default_config_text()
    parsed = parse_config(text, "template")
    for section, keys in parsed.items():
        for key, value in keys.items():
            assert SCHEMA[section][key].default == value, (section, key)
    # every key of the schema is documented in the template (set or commented)
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"{key} = " in text, key


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[atention]\nx = 1", "[atention]: unknown section"),
        ("[attention]\nnum_head = 8", "num_head: unknown key"),
        ("[server]\nprot = 80", "prot: unknown key"),
        ("[attention]\nnum_heads = 'eight'", "num_heads: expected an int"),
        ("[attention]\nnum_heads = 0", "num_heads: expected a value >= 1"),
        ("[attention]\ncausal = 1", "causal: expected a bool"),
        ("[server]\nport = 70000", "port: expected a value <= 65535"),
        ("[logging]\nlevel = 'loud'", "level: expected one of debug, info, warning, error"),
        ("[attention]\ndefault_type = 'nope'", "default_type: unknown mechanism 'nope'"),
        ("[attention.nope]\nheads = 2", "[attention.nope]: unknown mechanism 'nope'"),
        ("[attention.flash]\nhedas = 2", "[attention.flash] hedas: unknown option of 'flash'"),
        ("[attention.flash]\nheads = 'two'", "[attention.flash] heads: expected int"),
        ("attention = 3", "attention: expected a [attention] table"),
        ("[attention\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(text, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.toml")
    assert needle in str(info.value)
    assert str(info.value).startswith("c.toml")


def test_mechanism_tables_and_soft_defaults(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[attention]\nnum_heads = 2\nhidden_dim = 16\n[attention.linear]\nfeature_map = 'relu'\n[optimization]\nuse_simd = false\n")
    cfg = load_config(p)
    assert cfg.mechanisms == {"linear": {"feature_map": "relu"}}
    d = cfg.mechanism_defaults("linear")
    assert d["heads"] == 2 and d["dim"] == 16 and d["simd"] is False and d["feature_map"] == "relu"
    assert "feature_map" not in cfg.mechanism_defaults("flash")
    assert "[attention.linear]" in cfg.to_toml()


def test_find_config_precedence(tmp_path):
    explicit, env_file, local, user = (tmp_path / n for n in ("explicit.toml", "env.toml", "attnkit.toml", "user.toml"))
    for f in (explicit, env_file, local):
        f.write_text("")
    xdg = tmp_path / "xdg"
    (xdg / "attnkit").mkdir(parents=True)
    (xdg / "attnkit" / "config.toml").write_text("")
    env = {"ATTNKIT_CONFIG": str(env_file), "XDG_CONFIG_HOME": str(xdg)}
    assert find_config(explicit, env=env, cwd=tmp_path) == (explicit, "--config")
    assert find_config(None, env=env, cwd=tmp_path) == (env_file, "ATTNKIT_CONFIG")
    assert find_config(None, env={"XDG_CONFIG_HOME": str(xdg)}, cwd=tmp_path) == (local, "./attnkit.toml")
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    assert find_config(None, env={"XDG_CONFIG_HOME": str(xdg)}, cwd=elsewhere) == (xdg / "attnkit" / "config.toml", "user config dir")
    assert user_config_path({"XDG_CONFIG_HOME": str(xdg)}) == xdg / "attnkit" / "config.toml"
    assert find_config(None, env={"XDG_CONFIG_HOME": str(tmp_path / "none")}, cwd=elsewhere) == (None, "built-in defaults")
    with pytest.raises(ConfigError, match="--config: file not found"):
        find_config(tmp_path / "missing.toml", env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="ATTNKIT_CONFIG: file not found"):
        find_config(None, env={"ATTNKIT_CONFIG": str(user)}, cwd=tmp_path)


# ------------------------------------------------------------------------------------------ through the CLI
def _options(proc) -> dict:
    return json.loads(ok(proc).stdout)["options"]


def test_flags_override_config_which_overrides_defaults(tmp_path: Path):
    run = Runner(tmp_path)
    base = ["compute", "--type", "flash", "--random", "4", "--json"]
    assert _options(run(*base))["heads"] == 8  # the mechanism's default
    (tmp_path / "attnkit.toml").write_text("[attention]\nnum_heads = 2\nhidden_dim = 4\n[attention.flash]\nblock_size = 2\n")
    opts = _options(run(*base))
    assert (opts["heads"], opts["dim"], opts["block_size"]) == (2, 4, 2)
    opts = _options(run(*base, "--heads", "1", "--block-size", "3"))
    assert (opts["heads"], opts["dim"], opts["block_size"]) == (1, 4, 3)
    opts = _options(run(*base, "-O", "dim=5"))
    assert opts["dim"] == 5


def test_config_sources_in_order(tmp_path: Path):
    run = Runner(tmp_path)

    def source(*args, env=None):
        return json.loads(ok(run(*args, "config", "show", "--json", env=env)).stdout)

    assert source()["source"] == "built-in defaults"
    user = tmp_path / ".xdg-config" / "attnkit" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[server]\nport = 1001\n")
    got = source()
    assert got["source"] == "user config dir" and got["config"]["server"]["port"] == 1001
    (tmp_path / "attnkit.toml").write_text("[server]\nport = 1002\n")
    assert source()["config"]["server"]["port"] == 1002
    envfile = tmp_path / "env.toml"
    envfile.write_text("[server]\nport = 1003\n")
    got = source(env=clean_env(tmp_path, ATTNKIT_CONFIG=str(envfile)))
    assert got["source"] == "ATTNKIT_CONFIG" and got["config"]["server"]["port"] == 1003
    flag = tmp_path / "flag.toml"
    flag.write_text("[server]\nport = 1004\n")
    got = source("--config", str(flag), env=clean_env(tmp_path, ATTNKIT_CONFIG=str(envfile)))
    assert got["source"] == "--config" and got["config"]["server"]["port"] == 1004


def test_config_default_type_and_logging_from_file(tmp_path: Path):
    run = Runner(tmp_path)
    (tmp_path / "attnkit.toml").write_text(
        "[attention]\ndefault_type = 'scaled-dot-product'\nhidden_dim = 8\n[logging]\nlevel = 'info'\nformat = 'json'\n"
    )
    proc = ok(run("compute", "--random", "5", "--json"))
    assert json.loads(proc.stdout)["type"] == "scaled_dot_product"
    logs = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert logs and {"time", "level", "logger", "message"} <= set(logs[0]) and logs[0]["level"] == "info"


def test_bad_config_file_is_exit_2_naming_the_key(tmp_path: Path):
    run = Runner(tmp_path)
    (tmp_path / "attnkit.toml").write_text("[attention]\nnum_head = 8\n")
    line = one_error_line(run("compute", "--random", "4"))
    assert "num_head: unknown key" in line and "attnkit.toml" in line


def test_config_init_writes_a_loadable_file(tmp_path: Path):
    run = Runner(tmp_path)
    ok(run("config", "init"))
    text = (tmp_path / "attnkit.toml").read_text()
    assert "[attention]" in text and "[server]" in text
    line = one_error_line(run("config", "init"))
    assert "exists; use --force" in line
    ok(run("config", "init", "--force"))
    ok(run("config", "init", "--user"))
    assert (tmp_path / ".xdg-config" / "attnkit" / "config.toml").is_file()
    shown = ok(run("config", "show")).stdout
    assert "attnkit.toml (from ./attnkit.toml)" in shown and "[server]" in shown


def test_num_threads_caps_blas(tmp_path: Path):
    run = Runner(tmp_path)
    (tmp_path / "attnkit.toml").write_text("[optimization]\nnum_threads = 1\n")
    blas = json.loads(ok(run("info", "--json")).stdout)["blas"]
    if not blas or "num_threads" not in blas[0]:
        pytest.skip("threadpoolctl reports no BLAS here")
    assert all(lib["num_threads"] == 1 for lib in blas)
