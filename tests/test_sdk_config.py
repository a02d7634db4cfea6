"""AttentionConfig: validation, dict and TOML round trips, the spec's config keys, tomli-w optional."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from attnkit import ConfigError
from attnkit.sdk import AttentionConfig, AttentionType, parse_bytes

FULL = AttentionConfig(
    type="linear",
    dim=32,
    heads=4,
    dropout=0.1,
    causal=True,
    block_size=64,
    curvature=-1.5,
    feature_map="FAVOR",
    options={"nb_features": 48, "seed": 3},
    max_len=4096,
    memory_budget="256MiB",
    batch=2,
    exact_max_len=2048,
    need_scores=False,
)


def test_defaults() -> None:
    c = AttentionConfig()
    assert c.type is AttentionType.AUTO
    assert all(getattr(c, f.name) is None for f in dataclasses.fields(c) if f.name not in ("type", "options"))
    assert c.options == {}
    assert c.to_dict() == {"type": "auto"}


def test_values_are_normalised() -> None:
    assert FULL.type is AttentionType.LINEAR
    assert FULL.feature_map == "favor"
    assert FULL.memory_budget == 256 * 1024**2
    assert FULL.curvature == -1.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "nope"),
        ("dim", 0),
        ("dim", 2.5),
        ("heads", -1),
        ("heads", True),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("causal", "yes"),
        ("block_size", 0),
        ("curvature", 0.0),
        ("curvature", float("nan")),
        ("feature_map", 3),
        ("feature_map", " "),
        ("max_len", 0),
        ("memory_budget", "lots"),
        ("memory_budget", 0),
        ("batch", 0),
        ("exact_max_len", -5),
        ("need_scores", 1),
        ("options", [1, 2]),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        AttentionConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(AttentionConfig(), **{field: value})


def test_bad_option_name() -> None:
    with pytest.raises(ConfigError, match="options"):
        AttentionConfig(options={"not an identifier": 1})


def test_dict_round_trip() -> None:
    d = FULL.to_dict()
    assert d["type"] == "linear" and d["options"] == {"nb_features": 48, "seed": 3}
    assert "need_scores" in d and d["need_scores"] is False
    assert AttentionConfig.from_dict(d) == FULL
    # the dict is a copy
    d["options"]["seed"] = 99
    assert FULL.options["seed"] == 3


def test_toml_round_trip(tmp_path) -> None:
    text = FULL.to_toml()
    assert text.startswith("[attention]")
    assert AttentionConfig.from_toml(text) == FULL
    assert AttentionConfig.from_toml(text.encode()) == FULL
    path = tmp_path / "attn.toml"
    FULL.save(path)
    assert AttentionConfig.load(path) == FULL
    assert AttentionConfig.from_toml(AttentionConfig().to_toml()) == AttentionConfig()


def test_reads_the_spec_config_file() -> None:
    text = textwrap.dedent(
        """
        [attention]
        default_type = "multi-head"
        num_heads = 8
        hidden_dim = 128
        dropout = 0.1

        [optimization]
        use_simd = true

        [server]
        port = 8080
        """
    )
    c = AttentionConfig.from_toml(text)
    assert (c.type, c.heads, c.dim, c.dropout) == (AttentionType.MULTI_HEAD, 8, 128, 0.1)
    mech = c.build()
    assert (type(mech).__name__, mech.model_dim, mech.heads, mech.dropout) == ("MultiHeadAttention", 128, 8, 0.1)


def test_top_level_document_without_attention_table() -> None:
    c = AttentionConfig.from_toml('type = "flash"\nheads = 2\n[options]\nscale = 0.5\n')
    assert c == AttentionConfig(type="flash", heads=2, options={"scale": 0.5})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[attention\n", "invalid TOML"),
        ('[attention]\ncolour = "red"\n', "colour"),
        ("[attention]\nheads = 2\nnum_heads = 3\n", "num_heads"),
        ("[attention]\nheads = 0\n", "heads"),
        ('[attention]\ntype = "unknown_thing"\n', "type"),
    ],
)
def test_bad_toml(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AttentionConfig.from_toml(text)


def test_from_dict_rejects_non_mappings() -> None:
    with pytest.raises(ConfigError, match="config"):
        AttentionConfig.from_dict([("type", "flash")])


def test_load_missing_file_names_the_path(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nothere.toml"):
        AttentionConfig.load(tmp_path / "nothere.toml")


def test_unwritable_option_value_is_a_config_error() -> None:
    c = AttentionConfig(type="flash", options={"scale": object()})
    with pytest.raises(ConfigError, match="options"):
        c.to_toml()


def test_sdk_imports_without_tomli_w_and_says_what_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["tomli_w"] = None  # as if tomli-w were not installed
        from attnkit.sdk import AttentionConfig
        c = AttentionConfig.from_toml('[attention]\\ntype = "flash"\\nheads = 2\\n')
        assert c.heads == 2 and c.build().heads == 2
        try:
            c.to_toml()
        except ImportError as exc:
            print("IMPORT-ERROR:", exc)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPORT-ERROR:" in r.stdout and "tomli-w" in r.stdout and "attnkit[cli]" in r.stdout


@pytest.mark.parametrize(
    ("text", "n"),
    [("512MiB", 512 * 2**20), ("1.5 GB", 1_500_000_000), ("2gib", 2 * 2**30), ("4096", 4096), ("10k", 10_000)],
)
def test_parse_bytes(text: str, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["", "12 parsecs", "-3MB", "0.1", 0, -1, 1.5])
def test_parse_bytes_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_bytes(bad)
